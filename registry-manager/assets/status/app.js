// The fleet-registry status page. Plain JavaScript, no build step, no external resources:
// the model comes from /api/events (server-sent events, one "status" event per change) and
// admin buttons post JSON to /api/admin/* (loopback only; see docs/status-page.md).
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let source = null;
let chosenType = new URLSearchParams(location.search).get("type") || "";
let failoverTo = "";

// Builds an element; children may be strings, nodes, arrays or null.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// Replaces the children of `node`, skipping null ones.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function badge(text) {
  return el("span", { class: "badge s-" + text }, text);
}

function toast(text, error) {
  const t = $("toast");
  t.textContent = text;
  t.className = "show" + (error ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 6000);
}

function connect() {
  if (source) source.close();
  const q = chosenType ? "?type=" + encodeURIComponent(chosenType) : "";
  source = new EventSource("/api/events" + q);
  source.addEventListener("status", (ev) => {
    const m = JSON.parse(ev.data);
    $("live").textContent = "live";
    $("live").className = "live on";
    if (m.error) { toast(m.error, true); return; }
    model = m;
    render();
  });
  source.onerror = () => {
    $("live").textContent = "reconnecting…";
    $("live").className = "live off";
  };
}

function render() {
  const m = model;
  document.body.dataset.revision = m.revision;
  document.body.dataset.admin = m.admin ? "yes" : "no";
  $("revision").textContent = m.revision;
  $("member").textContent = "answered by " + m.answered_by;
  $("admin-note").textContent = m.admin
    ? "admin buttons on (loopback)"
    : "read-only: admin buttons work only from the manager's own machine";
  renderTypes(m);
  fill($("tree"), m.tree ? domain(m.tree, m) : el("p", { class: "muted" }, "No topology applied yet."));
  fill($("unplaced"),
    m.unplaced.length
      ? el("div", { class: "domain" }, el("div", { class: "dname" }, "not in the topology"),
           el("div", { class: "hosts" }, m.unplaced.map((h) => host(h, m))))
      : null);
  renderGroup(m);
  renderCoverage(m);
}

function renderTypes(m) {
  const sel = $("type");
  const want = m.type || "";
  const have = Array.from(sel.options).map((o) => o.value).join("\n");
  if (have !== m.types.join("\n")) {
    sel.replaceChildren(...m.types.map((t) => el("option", { value: t }, t)));
  }
  sel.value = want;
  sel.disabled = m.types.length === 0;
}

function domain(d, m) {
  return el("div", { class: "domain", "data-domain": d.name },
    el("div", { class: "dname" }, d.name),
    d.hosts.length ? el("div", { class: "hosts" }, d.hosts.map((h) => host(h, m))) : null,
    d.subdomains.map((s) => domain(s, m)));
}

function host(h, m) {
  let route;
  if (!m.type) route = null;
  else if (h.routes_to) {
    route = el("div", { class: "route", "data-routes-to": h.routes_to },
      el("span", { class: "arrow" }, "→ "), el("b", {}, h.routes_to),
      h.next ? el("span", { class: "muted" }, " then " + h.next) : el("span", { class: "spof" }, " (no other)"));
  } else {
    route = el("div", { class: "route none", "data-routes-to": "" }, "→ no eligible " + m.type);
  }
  return el("div", { class: "host " + h.state, "data-host": h.name, "data-state": h.state },
    el("span", { class: "hname" }, h.name), badge(h.state),
    h.packages.map((p) => pkg(h, p, m)),
    route);
}

function pkg(h, p, m) {
  const buttons = [];
  if (m.admin) {
    if (p.operator !== "drain") buttons.push(actionButton("drain", h.name, p.type));
    if (p.operator !== "withdraw") buttons.push(actionButton("withdraw", h.name, p.type));
    if (p.operator) buttons.push(actionButton("restore", h.name, p.type));
  }
  return el("div", { class: "pkg", "data-host": h.name, "data-type": p.type, "data-status": p.status },
    el("span", { class: "ptype" }, p.type),
    el("span", { class: "status badge s-" + p.status }, p.status),
    p.operator ? el("span", { class: "muted" }, "(agent: " + p.reported + ")") : null,
    el("span", { class: "endpoint" }, p.endpoint),
    buttons);
}

function actionButton(action, hostName, type) {
  return el("button", {
    type: "button", "data-action": action, "data-host": hostName, "data-type": type,
    onclick: () => packageAction(action, hostName, type),
  }, action);
}

function renderGroup(m) {
  const g = m.group;
  const rows = g.members.map((mem) => el("tr", {
      class: mem.role === "leader" ? "leader" : "", "data-member": mem.name, "data-role": mem.role },
    el("td", {}, mem.name), el("td", {}, mem.role), el("td", {}, mem.state),
    el("td", {}, mem.applied_revision), el("td", {}, mem.lag)));
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ["member", "role", "state", "revision", "lag"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  let move = null;
  const others = g.members.filter((mem) => mem.voter && mem.role !== "leader");
  if (m.admin && others.length) {
    const sel = el("select", { id: "failover-to", onchange: (e) => { failoverTo = e.target.value; } },
      el("option", { value: "" }, "most up-to-date voter"),
      others.map((mem) => el("option", { value: mem.name }, mem.name)));
    // A redraw keeps the person's choice while it is still a candidate.
    sel.value = others.some((mem) => mem.name === failoverTo) ? failoverTo : "";
    move = el("p", {}, "Move leadership to ", sel, " ",
      el("button", { type: "button", id: "failover", onclick: () => failover(sel.value) }, "move leadership"));
  }
  fill($("group"),
    el("p", {}, "leader ", el("b", { id: "leader" }, g.leader || "none known"), ", term " + g.term),
    table, move);
}

function renderCoverage(m) {
  const c = m.coverage;
  if (!c) { fill($("coverage"), el("p", { class: "muted" }, "No manager type is running.")); return; }
  const parts = [];
  parts.push(el("p", { class: c.no_manager.length ? "spof" : "muted" },
    c.no_manager.length ? "No eligible " + m.type + ": " + c.no_manager.join(", ") : "Every host has an eligible " + m.type + "."));
  if (c.single.length) {
    parts.push(el("p", { class: "spof" }, "Only one eligible manager (a single point of failure): ",
      c.single.map(([h, mgr]) => h + " → " + mgr).join(", ")));
  }
  // Pointing at a manager's list marks, in the tree, the hosts that would move.
  const mark = (load, on) => {
    for (const mv of load.moves) {
      const h = document.querySelector('.host[data-host="' + CSS.escape(mv.host) + '"]');
      if (h) h.classList.toggle("moving", on);
    }
  };
  for (const load of c.managers) {
    parts.push(el("details", { class: "loss", "data-manager": load.manager, open: true,
        onmouseenter: () => mark(load, true), onmouseleave: () => mark(load, false) },
      el("summary", {}, "If ", el("b", {}, load.manager), " were lost: ",
        load.moves.length + (load.moves.length === 1 ? " host moves" : " hosts move")),
      el("ul", {}, load.moves.map((mv) => el("li", { "data-moves": mv.host },
        mv.host + " → " + (mv.to || "nothing (no other eligible manager)"))))));
  }
  fill($("coverage"), ...parts);
}

// Asks for a confirmation showing `lines`; resolves true on Confirm.
function confirmDialog(title, lines) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    fill($("confirm-body"), lines);
    d.returnValue = "";
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
  });
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
  return data;
}

async function packageAction(action, hostName, type) {
  const body = { action, host: hostName, type };
  let preview;
  try { preview = await post("/api/admin/preview", body); }
  catch (e) { toast(action + " refused: " + e.message, true); return; }
  const lines = [el("p", {}, action + " " + type + " on " + hostName + " (registry revision " + preview.revision + ").")];
  if (preview.moves.length === 0) {
    lines.push(el("p", { id: "blast-radius", "data-moves": 0 }, "Blast radius: no host changes its manager."));
  } else {
    lines.push(el("p", { id: "blast-radius", "data-moves": preview.moves.length },
      "Blast radius: " + preview.moves.length + (preview.moves.length === 1 ? " host moves:" : " hosts move:")));
    lines.push(el("ul", {}, preview.moves.map((mv) =>
      el("li", {}, mv.host + ": " + (mv.from || "none") + " → " + (mv.to || "none (no eligible manager)")))));
  }
  if (!(await confirmDialog(action + " " + hostName + "?", lines))) return;
  try {
    const r = await post("/api/admin/package", body);
    toast(action + " " + type + " on " + hostName + ": done at revision " + r.revision);
  } catch (e) { toast(action + " failed: " + e.message, true); }
}

async function failover(to) {
  const leader = model && model.group.leader;
  const lines = [
    el("p", {}, "Move leadership from " + (leader || "?") + " to " + (to || "the most up-to-date other voter") + "."),
    el("p", { id: "blast-radius", "data-moves": 0 },
      "Blast radius: no host changes its manager (agents route to manager packages, not to the leader); writes pause for the election, agents keep their sessions."),
  ];
  if (!(await confirmDialog("Move leadership?", lines))) return;
  try {
    const r = await post("/api/admin/failover", { to });
    toast("leader is now " + r.leader + " (term " + r.term + ")");
  } catch (e) { toast("move leadership failed: " + e.message, true); }
}

$("type").addEventListener("change", (e) => {
  chosenType = e.target.value;
  const u = new URL(location.href);
  u.searchParams.set("type", chosenType);
  history.replaceState(null, "", u);
  connect();
});

connect();
