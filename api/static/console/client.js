// The API from the browser: JSON requests with the bearer token, and the event stream.
//
// The stream is read with fetch() and a ReadableStream reader, not EventSource: EventSource
// cannot send an Authorization header, and a token must never go into a URL (it would end
// up in logs, history and Referer headers).

export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The SPEC's error body {"error": {"code", "message"}} as an ApiError, message kept as is.
async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // not JSON (a proxy's page): fall back to the status line below
  }
  const err = body && typeof body === "object" ? body.error : null;
  if (err && typeof err.message === "string") {
    return new ApiError(resp.status, err.code || "", err.message);
  }
  return new ApiError(resp.status, "", `The service answered HTTP ${resp.status}.`);
}

function unreachable(cause) {
  return new ApiError(0, "network", `The service could not be reached (${cause.message}).`);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// One SSE message block ("id:", "event:", "data:", "retry:" lines; ":" starts a comment).
export function parseBlock(block) {
  const msg = { id: null, event: "message", data: null, retry: null };
  const data = [];
  for (const raw of block.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") msg.id = value;
    else if (field === "event") msg.event = value;
    else if (field === "data") data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) msg.retry = Number(value);
  }
  if (data.length) msg.data = data.join("\n");
  return msg;
}

export class Client {
  constructor(token) {
    this.token = token;
  }

  headers(extra) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  async request(method, path, body) {
    const init = { method, headers: this.headers({ Accept: "application/json" }), cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let resp;
    try {
      resp = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
    } catch (cause) {
      throw unreachable(cause);
    }
    if (!resp.ok) throw await errorOf(resp);
    return resp.status === 204 ? null : resp.json();
  }

  // Every item of a listing, following its links.next pages (paths under /api/v1/ only).
  async all(path, key) {
    const items = [];
    let next = path;
    while (next) {
      const page = await this.request("GET", next);
      items.push(...page[key]);
      next = page.links && typeof page.links.next === "string"
        && page.links.next.startsWith(`${API}/`) ? page.links.next : null;
    }
    return items;
  }

  // Reads GET /events/ until stop() is called: onEvent(type, event) for every message,
  // onState("live" | "reconnecting" | "closed", error?) as the connection comes and goes.
  // After a drop it reconnects after the server's retry: delay, resuming with
  // Last-Event-ID, so no event is missed. A 401 or 403 ends it (the token is no good).
  events(onEvent, onState) {
    const ctl = new AbortController();
    let lastId = null;
    let retry = 3000;
    const once = async () => {
      const headers = this.headers({ Accept: "text/event-stream" });
      if (lastId) headers["Last-Event-ID"] = lastId;
      let resp;
      try {
        resp = await fetch(`${API}/events/`, { headers, signal: ctl.signal, cache: "no-store" });
      } catch (cause) {
        throw unreachable(cause);
      }
      if (!resp.ok) throw await errorOf(resp);
      onState("live");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const msg = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (msg.retry !== null) retry = msg.retry;
          if (msg.id !== null) lastId = msg.id;
          if (msg.data === null) continue;
          let event;
          try {
            event = JSON.parse(msg.data);
          } catch {
            continue;
          }
          onEvent(msg.event, event);
        }
      }
    };
    (async () => {
      while (!ctl.signal.aborted) {
        try {
          await once();
        } catch (err) {
          if (ctl.signal.aborted) break;
          if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
            onState("closed", err);
            return;
          }
        }
        if (ctl.signal.aborted) break;
        onState("reconnecting");
        await sleep(retry, ctl.signal);
      }
    })();
    return () => ctl.abort();
  }
}
