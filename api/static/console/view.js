// Rendering: API objects to DOM nodes. Text always goes in as text nodes (never innerHTML):
// names and descriptions are the tenant's own strings.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const TYPE_LABELS = {
  "snapshot.create": "Create",
  "snapshot.restore": "Restore",
  "snapshot.delete": "Delete",
};

export function when(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  const text = Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  return h("time", { datetime: iso }, text);
}

export function size(mb) {
  if (mb === null || mb === undefined) return "—";
  if (mb >= 1024 * 1024) return `${(mb / (1024 * 1024)).toFixed(2)} TiB`;
  if (mb >= 1024) return `${(mb / 1024).toFixed(2)} GiB`;
  return `${mb.toFixed(2)} MiB`;
}

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, status.replace("_", " "));
}

// The highest progress an event reported, by bar key: a listing fetched just before an
// event must not move its bar back when it is rendered after it (progress only grows).
const reported = new Map();

// A progress bar (native <progress>, announced as a progressbar) and its figure; the key
// lets an event move it without a re-render.
export function bar(key, progress, label) {
  const value = Math.max(progress, reported.get(key) || 0);
  return h("div", { class: "progress", dataset: { progress: key } },
    h("progress", { max: 100, value, "aria-label": label }),
    h("span", { class: "pct" }, `${value} %`));
}

export function setBar(key, value) {
  reported.set(key, Math.max(value, reported.get(key) || 0));
  for (const box of document.querySelectorAll(`[data-progress="${key}"]`)) {
    const meter = box.querySelector("progress");
    if (value < Number(meter.value)) continue;
    meter.value = value;
    box.querySelector(".pct").textContent = `${value} %`;
  }
}

function button(text, action, id, hiddenText, extra = {}) {
  return h("button", { type: "button", dataset: { action, id: String(id), key: `${action}:${id}` }, ...extra },
    text, hiddenText ? h("span", { class: "vh" }, ` ${hiddenText}`) : null);
}

export function serverItem(server, selected) {
  return h("li", {},
    h("button", {
      type: "button", class: "server-button", "aria-current": selected ? "true" : null,
      dataset: { action: "select", id: String(server.id), key: `select:${server.id}` },
    }, h("span", { class: "name" }, server.name), badge(server.status)));
}

export function snapshotItem(snap) {
  const quoted = `“${snap.name}”`;
  const tags = [badge(snap.status)];
  if (snap.protected) tags.push(h("span", { class: "badge s-protected" }, "protected"));
  if (snap.origin && snap.origin !== "manual") tags.push(h("span", { class: "badge" }, snap.origin));
  const actions = [];
  if (snap.status === "available") {
    actions.push(button("Restore", "restore", snap.id, `from snapshot ${quoted}`));
  }
  actions.push(button(snap.protected ? "Unprotect" : "Protect", "protect", snap.id,
    `snapshot ${quoted}`, { "aria-pressed": snap.protected ? "true" : "false" }));
  actions.push(button("Delete", "delete", snap.id, `snapshot ${quoted}`, { class: "danger" }));
  return h("li", { class: "card snapshot", dataset: { snapshot: String(snap.id) } },
    h("div", { class: "snap-head" }, h("h4", {}, snap.name), h("span", { class: "tags" }, tags)),
    snap.description ? h("p", { class: "description" }, snap.description) : null,
    h("dl", { class: "meta" },
      h("div", {}, h("dt", {}, "Created"), h("dd", {}, when(snap.created_at))),
      h("div", {}, h("dt", {}, "Size"), h("dd", { class: "size" }, size(snap.size_mb))),
      snap.completed_at
        ? h("div", {}, h("dt", {}, "Completed"), h("dd", {}, when(snap.completed_at))) : null),
    bar(`snapshot:${snap.id}`, snap.progress, `Capture of ${quoted}`),
    snap.status === "in_progress" ? h("p", { class: "hint" }, snap.message) : null,
    snap.error ? h("p", { class: "error" }, snap.error.message) : null,
    h("div", { class: "actions" }, actions));
}

export function operationItem(op, names) {
  const name = op.snapshot_id ? names.get(op.snapshot_id) : null;
  const what = name ? `“${name}”` : op.snapshot_id ? `snapshot ${op.snapshot_id}` : "";
  const active = op.status === "queued" || op.status === "running";
  return h("li", { class: "operation", dataset: { operation: String(op.id) } },
    h("div", { class: "op-head" },
      h("span", { class: "op-what" }, `${TYPE_LABELS[op.type] || op.type} ${what}`),
      badge(op.status),
      h("span", { class: "hint" }, `#${op.id}`)),
    h("div", { class: "op-times hint" },
      when(op.created_at), op.finished_at ? " → " : null, when(op.finished_at)),
    active ? bar(`operation:${op.id}`, op.progress, `Operation ${op.id}`) : null,
    op.error ? h("p", { class: "error" }, op.error.message) : null);
}
