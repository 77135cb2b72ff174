// The console: a token in, the account's servers, snapshots and operations out, kept live
// by the event stream. State lives in the API; this page only shows it and asks for changes.

import { ApiError, Client } from "./client.js";
import { operationItem, serverItem, setBar, snapshotItem } from "./view.js";

const TOKEN_KEY = "snapshots.console.token";
// The seed's words (snapshots-api: restore's warning; delete).
const RESTORE_WARNING = "Restoring from a snapshot will overwrite all current data on the " +
  "server. This action cannot be undone. The server will be automatically stopped before " +
  "restoration begins.";
const DELETE_WARNING = "Delete the snapshot permanently. This action cannot be undone.";
const HISTORY = 20;

const $ = (id) => document.getElementById(id);
const state = { client: null, stop: null, servers: [], snapshots: [], selected: null };

// -- messages ----------------------------------------------------------------------------

// An error as the API worded it. `source` tells a failed reload (cleared by the next good
// one) from the answer to something the user did (kept until their next action).
function showError(where, err, source = "action") {
  const box = $(where);
  box.textContent = err ? err.message : "";
  box.dataset.source = source;
}

function notice(text) {
  $("notice").textContent = text || "";
}

// -- login -------------------------------------------------------------------------------

async function login(token) {
  const client = new Client(token);
  await client.request("GET", "servers/?limit=1"); // refuses a bad token with the API's 401
  sessionStorage.setItem(TOKEN_KEY, token);
  state.client = client;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  state.stop = client.events(onEvent, onStreamState);
  await refresh();
  const first = document.querySelector(".server-button");
  (first || $("main")).focus();
}

function logout(err) {
  if (state.stop) state.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { client: null, stop: null, servers: [], snapshots: [], selected: null });
  $("app").hidden = true;
  $("logout").hidden = true;
  $("stream-state").hidden = true;
  $("server").hidden = true;
  $("login").hidden = false;
  $("token").value = "";
  showError("login-alert", err || null);
  $("token").focus();
}

// -- loading -----------------------------------------------------------------------------

let loading = null;
let again = false;

// Reloads the servers and the selected server's snapshots and operations; calls that come
// while a reload runs are folded into one more reload after it.
async function refresh() {
  if (loading) {
    again = true;
    return loading;
  }
  loading = (async () => {
    do {
      again = false;
      try {
        await load();
        if ($("server-alert").dataset.source === "load") showError("server-alert", null);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return logout(err);
        showError("server-alert", err, "load");
      }
    } while (again && state.client);
  })();
  try {
    await loading;
  } finally {
    loading = null;
  }
}

async function load() {
  const client = state.client;
  if (!client) return;
  const servers = await client.all("servers/?limit=200", "servers");
  if (!servers.some((s) => s.id === state.selected)) {
    state.selected = servers.length ? servers[0].id : null;
  }
  let snapshots = [];
  let operations = [];
  if (state.selected !== null) {
    const id = state.selected;
    [snapshots, operations] = await Promise.all([
      client.all(`snapshots/?server_id=${id}&limit=200`, "snapshots"),
      client.request("GET", `operations/?server_id=${id}&limit=${HISTORY}`)
        .then((page) => page.operations),
    ]);
  }
  if (client !== state.client) return; // logged out meanwhile
  Object.assign(state, { servers, snapshots });
  render(operations);
}

// -- rendering ---------------------------------------------------------------------------

// Re-rendering replaces the buttons; the one that had focus gets it back (by its key).
function keepingFocus(fn) {
  const key = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.key : null;
  fn();
  if (key) {
    const target = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (target) target.focus();
  }
}

function render(operations) {
  keepingFocus(() => {
    $("server-list").replaceChildren(
      ...state.servers.map((s) => serverItem(s, s.id === state.selected)));
    $("no-servers").hidden = state.servers.length > 0;
    const server = state.servers.find((s) => s.id === state.selected);
    $("server").hidden = !server;
    if (!server) return;
    $("server-title").textContent = server.name;
    const status = $("server-status");
    status.textContent = server.status;
    status.className = `badge s-${server.status}`;
    $("snapshot-count").textContent = `(${state.snapshots.length})`;
    $("snapshots").replaceChildren(...state.snapshots.map(snapshotItem));
    if (!state.snapshots.length) {
      $("snapshots").append(Object.assign(document.createElement("li"),
        { className: "hint", textContent: "No snapshots yet." }));
    }
    const names = new Map(state.snapshots.map((s) => [s.id, s.name]));
    $("history").replaceChildren(...operations.map((op) => operationItem(op, names)));
  });
}

// -- live updates ------------------------------------------------------------------------

let timer = null;

function onEvent(type, event) {
  const progress = event.data && Number.isInteger(event.data.progress) ? event.data.progress : null;
  if ((type === "snapshot.progress" || type === "restore.progress") && progress !== null) {
    if (type === "snapshot.progress") setBar(`snapshot:${event.snapshot_id}`, progress);
    setBar(`operation:${event.operation_id}`, progress);
    return;
  }
  // Anything else changed a status: reload (a burst of events makes one reload).
  clearTimeout(timer);
  timer = setTimeout(refresh, 100);
}

function onStreamState(what, err) {
  const el = $("stream-state");
  el.hidden = false;
  el.dataset.state = what;
  if (what === "live") {
    el.textContent = "Live";
    refresh(); // whatever happened while the stream was down
  } else if (what === "reconnecting") {
    el.textContent = "Reconnecting…";
  } else {
    el.textContent = "Not live";
    if (err && err.status === 401) logout(err);
    else if (err) showError("server-alert", err);
  }
}

// -- actions -----------------------------------------------------------------------------

async function act(fn) {
  showError("server-alert", null);
  notice("");
  try {
    const message = await fn();
    if (message) notice(message);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return logout(err);
    showError("server-alert", err);
  }
  await refresh();
}

const snapshotById = (id) => state.snapshots.find((s) => s.id === id);

function confirmAction({ title, text, warning, ok, safety }, invoker) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-warning").textContent = warning;
  $("confirm-ok").textContent = ok;
  $("confirm-safety").hidden = !safety;
  $("safety").checked = false;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus(); // the safe choice first
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = invoker.dataset.key;
      const target = invoker.isConnected ? invoker
        : document.querySelector(`[data-key="${CSS.escape(key)}"]`);
      if (target) target.focus();
      resolve(dialog.returnValue === "ok" ? { safety: $("safety").checked } : null);
    }, { once: true });
  });
}

async function onAction(button) {
  const id = Number(button.dataset.id);
  const action = button.dataset.action;
  if (action === "select") {
    state.selected = id;
    notice("");
    showError("server-alert", null);
    await refresh();
    return;
  }
  const snap = snapshotById(id);
  if (!snap) return;
  const client = state.client;
  const server = state.servers.find((s) => s.id === state.selected);
  if (action === "restore") {
    const answer = await confirmAction({
      title: `Restore “${server.name}” from “${snap.name}”?`,
      text: `The server goes back to the state captured in snapshot “${snap.name}” ` +
        `(${new Date(snap.created_at).toLocaleString()}).`,
      warning: RESTORE_WARNING, ok: "Restore server", safety: true,
    }, button);
    if (!answer) return;
    await act(async () => (await client.request("POST", `snapshots/${id}/restore/`,
      answer.safety ? { safety_snapshot: true } : {})).message);
  } else if (action === "delete") {
    const answer = await confirmAction({
      title: `Delete snapshot “${snap.name}”?`,
      text: snap.status === "in_progress" ? "Its creation is cancelled." : "",
      warning: DELETE_WARNING, ok: "Delete snapshot", safety: false,
    }, button);
    if (!answer) return;
    await act(async () => {
      await client.request("DELETE", `snapshots/${id}/`);
      return `Snapshot “${snap.name}” deleted.`;
    });
  } else if (action === "protect") {
    await act(async () => {
      const after = await client.request("PATCH", `snapshots/${id}/`, { protected: !snap.protected });
      return after.protected ? `Snapshot “${snap.name}” is protected.`
        : `Snapshot “${snap.name}” is no longer protected.`;
    });
  }
}

async function onCreate(event) {
  event.preventDefault();
  const form = event.currentTarget;
  if (form.getAttribute("aria-busy") === "true" || state.selected === null) return;
  const body = { server_id: state.selected, name: $("snap-name").value.trim() };
  const description = $("snap-description").value.trim();
  if (description) body.description = description;
  if ($("snap-stop").checked) body.stop_server = true;
  form.setAttribute("aria-busy", "true");
  try {
    await act(async () => {
      const created = await state.client.request("POST", "snapshots/", body);
      $("snap-name").value = "";
      $("snap-description").value = "";
      return created.message;
    });
  } finally {
    form.removeAttribute("aria-busy");
  }
}

// -- start -------------------------------------------------------------------------------

function start() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    showError("login-alert", null);
    try {
      await login(token);
    } catch (err) {
      showError("login-alert", err);
    }
  });
  $("logout").addEventListener("click", () => logout(null));
  $("create-form").addEventListener("submit", onCreate);
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) onAction(button);
  });
  $("confirm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("confirm").close("ok");
  });
  $("confirm-cancel").addEventListener("click", () => $("confirm").close(""));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved).catch((err) => logout(err));
  else $("token").focus();
}

start();
