// corral's dashboard: plain ES module, no framework, no build step.
//
// Everything comes from the daemon's /v1 API, the same routes the CLI uses,
// authenticated by the session cookie that `corral ui`'s login set. Requests
// that change something carry `X-Corral-UI: 1` (the daemon refuses them
// without it when they come with the cookie alone).
//
// Rendering: one row element per agent or team, made once; changes (from the
// event stream and the periodic refresh of figures) mark agents dirty, and
// one animation frame applies every pending change to the rows that changed
// (a batch). Each batch's time, DOM writes and the layout they cause, is
// measured with performance.now() and kept on `window.corral.perf`.

const FIELDS = "agent_id,state,persistent_status,pid,progress,progress_message,restarts,ready,end_reason,cpu_percent,memory_mb,tree,run,exit_code,health";
const REFRESH_MS = 5000;
const DETAIL_MS = 3000;
const HOUR_S = 3600;
const TEAM_PLOT_MAX = 200;
const STATES = ["starting", "running", "stopping", "paused", "backoff", "ended"];

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

/** What the test reads: batch timings, counts. */
const perf = { batches: 0, lastMs: 0, maxMs: 0, totalMs: 0, recent: [], events: 0, updates: 0 };
window.corral = { perf, agents: 0, ready: false, plot: { cpu: 0, mem: 0 } };

// ---------------------------------------------------------------- the API

class Unauthorized extends Error {}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-Corral-UI"] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    loggedOut();
    throw new Unauthorized("not logged in");
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return { data, headers: r.headers };
}
const enc = encodeURIComponent;

function loggedOut() {
  $("#login").hidden = false;
  setLink("down", "logged out");
}

function setLink(state, text) {
  const l = $("#link");
  l.dataset.link = state;
  l.textContent = text;
}

let toastTimer = 0;
function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = ""; }, bad ? 6000 : 3000);
}

// ---------------------------------------------------------------- the model

/** Agents by id: the listing's fields of each. */
const agents = new Map();
/** Tree nodes by key (an agent's id, or a prefix of ids that is no agent). */
let nodes = new Map();
let roots = [];
const dirty = new Set();
let structureChanged = false;
let frame = 0;
const pendingEvents = [];
const collapsed = new Set();
const checked = new Set();
let selected = null; // a node key
let filterText = "";

/** Natural order of dotted ids: numbers as numbers. */
function cmpIds(a, b) {
  const pa = a.split("."), pb = b.split(".");
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] === pb[i]) continue;
    const na = /^\d+$/.test(pa[i]), nb = /^\d+$/.test(pb[i]);
    if (na && nb) return Number(pa[i]) - Number(pb[i]);
    return pa[i] < pb[i] ? -1 : 1;
  }
  return pa.length - pb.length;
}

function parentKey(key) {
  const i = key.lastIndexOf(".");
  return i < 0 ? null : key.slice(0, i);
}

/** Rebuilds the tree of nodes from the agents' ids. */
function buildTree() {
  const old = nodes;
  nodes = new Map();
  roots = [];
  const ids = [...agents.keys()].sort(cmpIds);
  const ensure = (key) => {
    let n = nodes.get(key);
    if (n) return n;
    n = { key, children: [], depth: key.split(".").length - 1, row: old.get(key)?.row || null, parent: null, descendants: 0 };
    nodes.set(key, n);
    const p = parentKey(key);
    if (p === null) roots.push(n);
    else {
      const pn = ensure(p);
      n.parent = pn;
      pn.children.push(n);
    }
    return n;
  };
  for (const id of ids) ensure(id);
  const sortRec = (list) => {
    list.sort((a, b) => cmpIds(a.key, b.key));
    for (const n of list) sortRec(n.children);
  };
  sortRec(roots);
  const count = (n) => { n.descendants = n.children.reduce((s, c) => s + 1 + count(c), 0); return n.descendants; };
  roots.forEach(count);
  // Rows of nodes that are gone.
  for (const [key, n] of old) if (!nodes.has(key) && n.row) n.row.el.remove();
}

function* walk(list = roots) {
  for (const n of list) {
    yield n;
    yield* walk(n.children);
  }
}

/** Counts by state of the agents at and below a node (the node itself included when it is one). */
function stateCounts(n, out = {}) {
  const a = agents.get(n.key);
  if (a) {
    const k = a.state === "ended" ? (a.persistent_status || "ended") : a.state;
    out[k] = (out[k] || 0) + 1;
  }
  for (const c of n.children) stateCounts(c, out);
  return out;
}

function memberIds(n, out = []) {
  if (agents.has(n.key)) out.push(n.key);
  for (const c of n.children) memberIds(c, out);
  return out;
}

// ---------------------------------------------------------------- rows

function makeRow(n) {
  const e = el("div", "row");
  e.setAttribute("role", "treeitem");
  const box = el("input");
  box.type = "checkbox";
  box.setAttribute("aria-label", `select ${n.key}`);
  const id = el("span", "id");
  const tog = el("span", "tog");
  const name = el("span", "name");
  id.append(tog, name);
  const state = el("span", "badge");
  const prog = el("span", "prog");
  const bar = el("span", "bar");
  const fill = el("i");
  bar.append(fill);
  const msg = el("span", "msg");
  prog.append(bar, msg);
  const restarts = el("span", "num");
  const ready = el("span", "ready");
  const cpu = el("span", "num wide");
  const mem = el("span", "num wide");
  const end = el("span", "end wide");
  e.append(box, id, state, prog, restarts, ready, cpu, mem, end);
  const row = { el: e, box, tog, name, state, prog, bar, fill, msg, restarts, ready, cpu, mem, end, sig: "" };
  e.addEventListener("click", (ev) => onRowClick(n.key, ev));
  return row;
}

const fmt1 = (x) => (x == null ? "" : (Math.round(x * 10) / 10).toFixed(1));

/** Writes a node's row; touches the DOM only for what changed (by signature). */
function renderRow(n) {
  if (!n.row) n.row = makeRow(n);
  const r = n.row;
  const a = agents.get(n.key);
  const team = n.children.length > 0;
  let counts = null;
  if (team) counts = stateCounts(n);
  const sig = JSON.stringify([a, counts, collapsed.has(n.key), checked.has(n.key), selected === n.key, n.depth]);
  if (sig === r.sig) return;
  r.sig = sig;
  const e = r.el;
  e.className = "row" + (team ? " team" : "") + (a ? "" : " group") + (selected === n.key ? " selected" : "");
  if (a) { e.dataset.agentId = n.key; delete e.dataset.team; } else { e.dataset.team = n.key; delete e.dataset.agentId; }
  if (team) e.dataset.team = n.key;
  e.setAttribute("aria-expanded", team ? String(!collapsed.has(n.key)) : "");
  r.box.checked = checked.has(n.key);
  r.tog.textContent = team ? (collapsed.has(n.key) ? "▸" : "▾") : "";
  r.tog.dataset.toggle = team ? n.key : "";
  r.name.textContent = n.key;
  e.children[1].style.setProperty("--depth", String(n.depth));
  if (a) {
    const ps = a.persistent_status || "";
    r.state.className = `badge st-${a.state} ps-${ps}`;
    r.state.textContent = a.state === "ended" ? ps || "ended" : a.state;
    const p = a.progress;
    r.bar.style.visibility = p == null ? "hidden" : "visible";
    r.fill.style.width = `${p || 0}%`;
    r.msg.textContent = p == null ? (a.progress_message || "") : `${p}% ${a.progress_message || ""}`;
    r.restarts.textContent = a.restarts ? `↻${a.restarts}` : "";
    r.ready.textContent = a.ready == null ? "–" : a.ready ? "✓" : "✗";
    r.ready.className = "ready " + (a.ready == null ? "" : a.ready ? "ready-yes" : "ready-no");
    const t = a.tree || {};
    r.cpu.textContent = a.state === "ended" ? "" : fmt1(t.cpu_percent ?? a.cpu_percent);
    r.mem.textContent = a.state === "ended" ? "" : fmt1(t.memory_mb ?? a.memory_mb);
    r.end.textContent = a.end_reason || "";
    r.end.title = a.end_reason || "";
  } else {
    r.state.className = "badge";
    r.state.textContent = "team";
    r.bar.style.visibility = "hidden";
    r.msg.textContent = "";
    r.restarts.textContent = r.ready.textContent = r.cpu.textContent = r.mem.textContent = r.end.textContent = "";
  }
  if (team) {
    // The team's counts by state, in place of the progress message.
    const pills = el("span", "tcounts");
    for (const [k, v] of Object.entries(counts)) pills.append(el("span", `pill ${pillClass(k)}`, `${v} ${k}`));
    r.msg.replaceChildren(pills);
    if (!a) r.bar.style.visibility = "hidden";
  }
}

function pillClass(k) {
  if (["completed", "failed", "cancelled"].includes(k)) return `st-ended ps-${k}`;
  return `st-${k}`;
}

/** Which rows show: collapsed teams hide their subtrees; the filter hides non-matching ids (keeping their ancestors). */
function applyVisibility() {
  const f = filterText;
  const matches = new Set();
  if (f) {
    for (const n of walk()) {
      if (n.key.toLowerCase().includes(f)) {
        for (let p = n; p; p = p.parent) matches.add(p.key);
        for (const d of walk(n.children)) matches.add(d.key);
      }
    }
  }
  const hide = (n, hiddenAbove) => {
    const hidden = hiddenAbove || (f && !matches.has(n.key));
    if (n.row) n.row.el.classList.toggle("hidden", !!hidden);
    const childrenHidden = hidden || collapsed.has(n.key);
    for (const c of n.children) hide(c, childrenHidden);
  };
  roots.forEach((n) => hide(n, false));
}

/** Puts every row in tree order (after a structural change). */
function layoutRows() {
  const tree = $("#tree");
  const frag = document.createDocumentFragment();
  for (const n of walk()) {
    renderRow(n);
    frag.append(n.row.el);
  }
  tree.replaceChildren(frag);
  applyVisibility();
  $("#empty").hidden = agents.size > 0;
}

function renderCounts() {
  const counts = {};
  for (const a of agents.values()) {
    const k = a.state === "ended" ? (a.persistent_status || "ended") : a.state;
    counts[k] = (counts[k] || 0) + 1;
  }
  const box = $("#counts");
  box.replaceChildren(...[el("span", "muted", `${agents.size} agents`)].concat(
    Object.entries(counts).map(([k, v]) => el("span", `pill ${pillClass(k)}`, `${v} ${k}`))));
}

// ---------------------------------------------------------------- batches

function schedule() {
  if (!frame) frame = requestAnimationFrame(flush);
}

/** Marks an agent's row for the next batch; with `counts`, its teams' rows too (their counts by state changed). */
function markDirty(id, counts = true) {
  dirty.add(id);
  if (counts) {
    countsChanged = true;
    for (let k = parentKey(id); k !== null; k = parentKey(k)) dirty.add(k);
  }
}
let countsChanged = true;

/** One animation frame: every pending event and refresh, applied to the rows that changed. */
function flush() {
  frame = 0;
  const t0 = performance.now();
  const events = pendingEvents.splice(0);
  for (const ev of events) applyEvent(ev);
  const changed = dirty.size;
  if (structureChanged) {
    structureChanged = false;
    buildTree();
    layoutRows();
    selectionChanged = countsChanged = true;
  } else {
    for (const key of dirty) {
      const n = nodes.get(key);
      if (n) renderRow(n);
    }
  }
  dirty.clear();
  if (countsChanged) {
    countsChanged = false;
    renderCounts();
  }
  if (selected && detailDirty) refreshDetailSoon();
  // The layout these writes cause belongs to the batch.
  void $("#tree").offsetHeight;
  const ms = performance.now() - t0;
  perf.batches += 1;
  perf.lastMs = ms;
  perf.maxMs = Math.max(perf.maxMs, ms);
  perf.totalMs += ms;
  perf.events += events.length;
  perf.updates += changed;
  perf.recent.push([Math.round(ms * 10) / 10, events.length, changed]);
  if (perf.recent.length > 200) perf.recent.shift();
  window.corral.agents = agents.size;
  if (selectionChanged) updateSelectionUi();
}
let selectionChanged = true;

/** Applies one event to the model. */
function applyEvent(ev) {
  const a = agents.get(ev.agent_id);
  if (!a) {
    fetchAgent(ev.agent_id);
    return;
  }
  if (ev.run > (a.run || 0)) {
    a.run = ev.run;
    a.restarts = Math.max(a.restarts || 0, ev.run - 1);
    a.end_reason = null;
    a.exit_code = null;
  }
  switch (ev.kind) {
    case "state":
      if (ev.state) a.state = ev.state;
      if (ev.status) a.persistent_status = ev.status;
      if (ev.pid != null) a.pid = ev.pid;
      if (ev.exit_code != null) a.exit_code = ev.exit_code;
      if (ev.state === "ended" && ev.reason) a.end_reason = ev.reason;
      if (ev.state === "ended") a.ready = a.ready == null ? null : false;
      break;
    case "progress":
      a.progress = ev.progress;
      a.progress_message = ev.message ?? null;
      break;
    case "probe":
      if (ev.ready != null) a.ready = ev.ready;
      break;
    default:
      break;
  }
  markDirty(ev.agent_id, ev.kind === "state");
  if (selected === ev.agent_id || (selected && ev.agent_id.startsWith(selected + "."))) detailDirty = true;
}

const fetching = new Set();
async function fetchAgent(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  try {
    const { data } = await api("GET", `/v1/agents/${enc(id)}`);
    agents.set(id, pick(data));
    structureChanged = true;
    schedule();
  } catch (e) {
    if (!(e instanceof Unauthorized)) console.warn("agent", id, e.message);
  } finally {
    fetching.delete(id);
  }
}

function pick(s) {
  const out = {};
  for (const f of FIELDS.split(",")) out[f] = s[f] ?? null;
  return out;
}

/** The full listing: new and removed agents, and every changed figure. */
async function refresh() {
  const { data, headers } = await api("GET", `/v1/agents?fields=${FIELDS}`);
  const seen = new Set();
  for (const [id, s] of Object.entries(data)) {
    seen.add(id);
    const next = pick(s);
    const cur = agents.get(id);
    if (!cur) {
      agents.set(id, next);
      structureChanged = true;
    } else if (JSON.stringify(cur) !== JSON.stringify(next)) {
      const counted = cur.state !== next.state || cur.persistent_status !== next.persistent_status;
      agents.set(id, next);
      markDirty(id, counted);
    }
  }
  for (const id of [...agents.keys()]) {
    if (!seen.has(id)) {
      agents.delete(id);
      checked.delete(id);
      structureChanged = true;
    }
  }
  schedule();
  return Number(headers.get("x-corral-event-seq") || 0);
}

// ---------------------------------------------------------------- live events

let source = null;
let lastSeq = 0;
function follow(since) {
  lastSeq = since;
  if (source) source.close();
  source = new EventSource(`/v1/events?since=${since}`);
  source.onopen = () => setLink("live", "live");
  source.onerror = async () => {
    setLink("down", "reconnecting…");
    // EventSource retries by itself with Last-Event-ID; a lost session ends it.
    if (source.readyState === EventSource.CLOSED) {
      try { await api("GET", "/v1/health"); setTimeout(() => follow(lastSeq), 2000); } catch { /* logged out */ }
    }
  };
  const onEvent = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch { return; }
    lastSeq = Math.max(lastSeq, ev.seq || 0);
    pendingEvents.push(ev);
    schedule();
  };
  for (const kind of ["state", "progress", "stop_stage", "restart", "crash_loop", "restart_cancelled", "limit", "runtime_exceeded", "probe", "job", "log_dropped"]) {
    source.addEventListener(kind, onEvent);
  }
}

// ---------------------------------------------------------------- the daemon's figures

let lastCpu = null;
async function daemonFigures() {
  const [{ data: h }, metrics] = await Promise.all([
    api("GET", "/v1/health"),
    fetch("/metrics", { credentials: "same-origin" }).then((r) => (r.ok ? r.text() : "")),
  ]);
  const metric = (name) => {
    const m = metrics.match(new RegExp(`^${name} ([0-9.eE+-]+)$`, "m"));
    return m ? Number(m[1]) : null;
  };
  const cpuS = metric("process_cpu_seconds_total");
  const rss = metric("process_resident_memory_bytes");
  const now = performance.now() / 1000;
  let cpuPct = null;
  if (cpuS != null && lastCpu) cpuPct = ((cpuS - lastCpu.s) / Math.max(0.001, now - lastCpu.t)) * 100;
  if (cpuS != null) lastCpu = { s: cpuS, t: now };
  const box = $("#daemon");
  const item = (k, v) => { const s = el("span"); s.append(`${k} `, el("b", "", v)); return s; };
  box.replaceChildren(
    item("agents", String(h.agents)),
    item("daemon CPU", cpuPct == null ? "…" : `${fmt1(cpuPct)} %`),
    item("RSS", rss == null ? "?" : `${fmt1(rss / 1048576)} MiB`),
    item("pid", String(h.pid)),
    item("v", h.version),
  );
}

// ---------------------------------------------------------------- selection and actions

function onRowClick(key, ev) {
  const t = ev.target;
  if (t.dataset && t.dataset.toggle) {
    if (collapsed.has(key)) collapsed.delete(key); else collapsed.add(key);
    markDirty(key);
    applyVisibility();
    schedule();
    return;
  }
  if (t.type === "checkbox") {
    selectionChanged = true;
    if (t.checked) checked.add(key); else checked.delete(key);
    // A team's box picks its members too.
    const n = nodes.get(key);
    if (n) for (const d of walk(n.children)) { if (t.checked) checked.add(d.key); else checked.delete(d.key); markDirty(d.key); }
    markDirty(key);
    schedule();
    return;
  }
  select(key);
}

function selectedIds() {
  return [...checked].filter((k) => agents.has(k)).sort(cmpIds);
}

function updateSelectionUi() {
  selectionChanged = false;
  const ids = selectedIds();
  $("#selection-count").textContent = ids.length ? `${ids.length} selected` : "";
  for (const b of document.querySelectorAll("#bulk-actions button")) b.disabled = ids.length === 0;
}

const VERB = { stop: "Stop", kill: "Kill (SIGKILL at once)", restart: "Restart", pause: "Pause", resume: "Resume" };

/** One action on one agent, through the same routes as the CLI. */
function act(action, id) {
  switch (action) {
    case "stop": return api("POST", `/v1/agents/${enc(id)}/stop`, {});
    case "kill": return api("POST", `/v1/agents/${enc(id)}/kill`, { force: true });
    case "restart": return api("POST", `/v1/agents/${enc(id)}/restart`, {});
    case "pause": return api("POST", "/v1/pause", { agent_id: id });
    case "resume": return api("POST", "/v1/resume", { agent_id: id });
    default: return Promise.reject(new Error(`unknown action ${action}`));
  }
}

/** Runs `action` on `ids`, a few at a time; says how it went. */
async function runAction(action, ids) {
  let ok = 0;
  const errors = [];
  const queue = ids.slice();
  const worker = async () => {
    while (queue.length) {
      const id = queue.shift();
      try { await act(action, id); ok += 1; } catch (e) { errors.push(`${id}: ${e.message}`); }
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, ids.length) }, worker));
  if (errors.length) toast(`${action}: ${ok} done, ${errors.length} refused — ${errors[0]}`, true);
  else toast(`${action}: ${ok} done`);
  if (selected) refreshDetailSoon();
}

let confirming = null;
function askConfirm(action, ids) {
  if (!ids.length) return;
  confirming = { action, ids };
  const who = ids.length === 1 ? `agent ${ids[0]}` : `${ids.length} agents (${ids.slice(0, 3).join(", ")}${ids.length > 3 ? ", …" : ""})`;
  $("#confirm-text").textContent = `${VERB[action]} ${who}?`;
  const d = $("#confirm");
  d.dataset.pending = action;
  d.showModal();
}

function confirmed() {
  const d = $("#confirm");
  d.close();
  delete d.dataset.pending;
  const c = confirming;
  confirming = null;
  if (c) runAction(c.action, c.ids);
}

// ---------------------------------------------------------------- the detail pane

let detailDirty = false;
let detailTimer = 0;
let detailSeq = 0;
let logAbort = null;
let histories = new Map(); // id → points

function select(key) {
  const prev = selected;
  selected = key;
  if (prev) markDirty(prev);
  markDirty(key);
  schedule();
  $("#detail-pane").hidden = false;
  $("main").classList.remove("no-detail");
  $("#d-title").textContent = key;
  histories = new Map();
  drawPlots([], []);
  const n = nodes.get(key);
  const isAgent = agents.has(key);
  $("#d-agent").hidden = !isAgent;
  $("#d-team").hidden = !(n && n.children.length);
  startLog(isAgent ? key : null);
  detailSeq += 1;
  refreshDetail(detailSeq);
}

function closeDetail() {
  const prev = selected;
  selected = null;
  if (prev) markDirty(prev);
  schedule();
  $("#detail-pane").hidden = true;
  $("main").classList.add("no-detail");
  startLog(null);
  clearTimeout(detailTimer);
}

function refreshDetailSoon() {
  detailDirty = false;
  clearTimeout(detailTimer);
  const seq = detailSeq;
  detailTimer = setTimeout(() => refreshDetail(seq), 250);
}

async function refreshDetail(seq) {
  clearTimeout(detailTimer);
  const key = selected;
  if (!key || seq !== detailSeq) return;
  try {
    const n = nodes.get(key);
    const ids = n ? memberIds(n) : [key];
    const tasks = [plotHistory(key, ids)];
    if (agents.has(key)) {
      tasks.push(api("GET", `/v1/agents/${enc(key)}`).then(({ data }) => seq === detailSeq && renderStatus(data)));
      tasks.push(api("GET", `/v1/agents/${enc(key)}/runs`).then(({ data }) => seq === detailSeq && renderRuns(data)));
    }
    if (n && n.children.length) renderTeam(n);
    await Promise.all(tasks);
  } catch (e) {
    if (!(e instanceof Unauthorized)) toast(`${key}: ${e.message}`, true);
  }
  if (seq === detailSeq) detailTimer = setTimeout(() => refreshDetail(seq), DETAIL_MS);
}

function renderStatus(s) {
  const st = $("#d-state");
  st.className = `badge st-${s.state} ps-${s.persistent_status}`;
  st.textContent = s.state === "ended" ? s.persistent_status : s.state;
  const rows = Object.entries(s).map(([k, v]) => {
    const tr = el("tr");
    const val = v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : typeof v === "number" && !Number.isInteger(v) ? String(Math.round(v * 1000) / 1000) : String(v);
    tr.append(el("td", "", k), el("td", "", val));
    return tr;
  });
  $("#d-status").replaceChildren(...rows);
}

function renderRuns(runs) {
  const cols = ["run", "pid", "started_at", "ended_at", "persistent_status", "exit_code", "exit_signal", "end_reason"];
  const head = el("tr");
  for (const c of cols) head.append(el("th", "", c.replace("persistent_", "")));
  const body = runs.slice().reverse().map((r) => {
    const tr = el("tr");
    for (const c of cols) tr.append(el("td", "", r[c] == null ? "" : String(r[c])));
    return tr;
  });
  $("#d-runs").replaceChildren(head, ...body);
}

function renderTeam(n) {
  const counts = stateCounts(n);
  const box = $("#d-team");
  const p = el("p");
  p.append(`${memberIds(n).length} agents: `);
  for (const [k, v] of Object.entries(counts)) p.append(el("span", `pill ${pillClass(k)}`, `${v} ${k}`), " ");
  box.replaceChildren(p);
  const st = $("#d-state");
  if (!agents.has(n.key)) { st.className = "badge"; st.textContent = "team"; }
}

/** Fetches what is new of each member's history, and plots the sum. */
async function plotHistory(key, ids) {
  const now = Date.now() / 1000;
  const list = ids.slice(0, TEAM_PLOT_MAX);
  await Promise.all(list.map(async (id) => {
    const had = histories.get(id) || [];
    const since = had.length ? had[had.length - 1].t : now - HOUR_S;
    try {
      const { data } = await api("GET", `/v1/agents/${enc(id)}/history?since=${since}`);
      // A thinned point may stand before the newest recent one: keep order.
      const merged = had.concat(data.points.filter((p) => !had.length || p.t > had[had.length - 1].t));
      histories.set(id, merged.filter((p) => p.t >= now - HOUR_S));
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
    }
  }));
  if (selected !== key) return;
  let cpu, mem;
  if (list.length === 1 && list[0] === key) {
    const pts = histories.get(key) || [];
    cpu = pts.map((p) => [p.t, p.cpu_percent]);
    mem = pts.map((p) => [p.t, p.memory_mb]);
  } else {
    [cpu, mem] = sumSeries(list.map((id) => histories.get(id) || []));
  }
  const members = ids.length > 1 ? ` (sum of ${list.length}${ids.length > list.length ? ` of ${ids.length}` : ""})` : "";
  $("#cap-cpu").textContent = members;
  $("#cap-mem").textContent = members;
  drawPlots(cpu, mem);
}

/** Sums members' series on a common time grid (each member's latest point at or before each tick). */
function sumSeries(series) {
  const ts = [...new Set(series.flatMap((s) => s.map((p) => Math.round(p.t))))].sort((a, b) => a - b);
  const cpu = [], mem = [];
  const idx = series.map(() => 0);
  for (const t of ts) {
    let c = 0, m = 0;
    series.forEach((s, i) => {
      while (idx[i] + 1 < s.length && s[idx[i] + 1].t <= t + 0.5) idx[i] += 1;
      const p = s[idx[i]];
      if (p && p.t <= t + 0.5 && t - p.t < 120) { c += p.cpu_percent; m += p.memory_mb; }
    });
    cpu.push([t, c]);
    mem.push([t, m]);
  }
  return [cpu, mem];
}

function drawPlots(cpu, mem) {
  drawPlot($("#plot-cpu"), cpu, "#2f6fde", "%");
  drawPlot($("#plot-mem"), mem, "#1f9d55", " MiB");
  window.corral.plot = { cpu: cpu.length, mem: mem.length };
}

/** A line plot on a canvas, by hand: grid, the series, its scale and span. */
function drawPlot(canvas, pts, color, unit) {
  canvas.dataset.points = String(pts.length);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 120;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 40, r: 8, t: 8, b: 18 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  g.strokeStyle = "#eceef2";
  g.lineWidth = 1;
  if (!pts.length) {
    g.fillText("no samples yet", pad.l + 8, pad.t + ph / 2);
    return;
  }
  const t1 = Date.now() / 1000;
  const t0 = Math.min(pts[0][0], t1 - 60);
  const vmax = Math.max(1, ...pts.map((p) => p[1])) * 1.15;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (ph * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
    const v = vmax * (1 - i / 4);
    g.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 2, y + 4);
  }
  const span = t1 - t0;
  g.fillText(span >= 120 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`, pad.l, h - 4);
  g.fillText("now", pad.l + pw - 22, h - 4);
  const x = (t) => pad.l + ((t - t0) / Math.max(1, span)) * pw;
  const y = (v) => pad.t + ph - (v / vmax) * ph;
  g.strokeStyle = color;
  g.lineWidth = 1.6;
  g.beginPath();
  pts.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.stroke();
  g.fillStyle = color;
  const [lt, lv] = pts[pts.length - 1];
  g.beginPath(); g.arc(x(lt), y(lv), 2.5, 0, 7); g.fill();
  g.fillText(`${fmt1(lv)}${unit}`, Math.min(x(lt) - 30, pad.l + pw - 60), Math.max(pad.t + 10, y(lv) - 6));
}

/** Follows the selected agent's output. */
async function startLog(id) {
  if (logAbort) logAbort.abort();
  logAbort = null;
  const pre = $("#d-log");
  pre.textContent = "";
  if (!id) return;
  const ctl = new AbortController();
  logAbort = ctl;
  try {
    const r = await fetch(`/v1/agents/${enc(id)}/logs?stream=both&tail=200&follow=true`, { signal: ctl.signal, credentials: "same-origin" });
    if (!r.ok) { pre.textContent = `(no log: ${r.status})`; return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      let text = pre.textContent + dec.decode(value, { stream: true });
      if (text.length > 200000) text = text.slice(-150000);
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    if (logAbort === ctl) pre.append("\n(the run has ended)");
  } catch (e) {
    if (e.name !== "AbortError") pre.append(`\n(log: ${e.message})`);
  }
}

// ---------------------------------------------------------------- spawning

/** Splits a command line as a shell would for plain words and quotes (no expansions). */
function splitCommand(line) {
  const out = [];
  let cur = "", quote = null, any = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === "\\" && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += ch;
    } else if (ch === "'" || ch === '"') { quote = ch; any = true; }
    else if (ch === "\\" && i + 1 < line.length) { cur += line[++i]; any = true; }
    else if (/\s/.test(ch)) { if (cur || any) out.push(cur); cur = ""; any = false; }
    else cur += ch;
  }
  if (quote) throw new Error("unclosed quote in the command");
  if (cur || any) out.push(cur);
  return out;
}

async function spawnSubmit(ev) {
  ev.preventDefault();
  const f = ev.target;
  const err = $("#spawn-error");
  err.hidden = true;
  try {
    const command = splitCommand(f.command.value);
    if (!command.length) throw new Error("give a command");
    const req = { agent_id: f.agent_id.value.trim(), command };
    if (f.cwd.value.trim()) req.cwd = f.cwd.value.trim();
    const labels = {};
    for (const kv of f.labels.value.split(",").map((s) => s.trim()).filter(Boolean)) {
      const i = kv.indexOf("=");
      if (i < 1) throw new Error(`a label is key=value: ${kv}`);
      labels[kv.slice(0, i)] = kv.slice(i + 1);
    }
    if (Object.keys(labels).length) req.labels = labels;
    if (f.restart.value !== "never") req.restart = { policy: f.restart.value };
    const submit = f.querySelector("[type=submit]");
    submit.disabled = true;
    try {
      const { data } = await api("POST", "/v1/agents", req);
      toast(`spawned ${req.agent_id} (pid ${data.pid ?? "—"})`);
      $("#spawn").close();
      f.reset();
      fetchAgent(req.agent_id);
    } finally {
      submit.disabled = false;
    }
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
}

// ---------------------------------------------------------------- start

function wire() {
  $("#filter").addEventListener("input", (e) => {
    filterText = e.target.value.trim().toLowerCase();
    applyVisibility();
  });
  $("#select-all").addEventListener("change", (e) => {
    selectionChanged = true;
    for (const n of walk()) {
      if (e.target.checked && !n.row.el.classList.contains("hidden")) checked.add(n.key);
      else if (!e.target.checked) checked.delete(n.key);
      markDirty(n.key);
    }
    schedule();
  });
  for (const b of document.querySelectorAll("#bulk-actions [data-action]")) {
    b.addEventListener("click", () => askConfirm(b.dataset.action, selectedIds()));
  }
  for (const b of document.querySelectorAll("#detail-actions [data-action]")) {
    b.addEventListener("click", () => {
      if (!selected) return;
      const n = nodes.get(selected);
      askConfirm(b.dataset.action, agents.has(selected) ? [selected] : memberIds(n));
    });
  }
  $("#confirm [data-action=confirm]").addEventListener("click", confirmed);
  $("#confirm-cancel").addEventListener("click", () => { confirming = null; $("#confirm").close(); });
  $("#d-close").addEventListener("click", closeDetail);
  $("#spawn-open").addEventListener("click", () => $("#spawn").showModal());
  $("#spawn-cancel").addEventListener("click", () => $("#spawn").close());
  $("#spawn-form").addEventListener("submit", spawnSubmit);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && selected && !document.querySelector("dialog[open]")) closeDetail(); });
  window.addEventListener("resize", () => { if (selected) refreshDetailSoon(); });
}

async function start() {
  wire();
  $("main").classList.add("no-detail");
  try {
    const seq = await refresh();
    follow(seq);
    window.corral.ready = true;
  } catch (e) {
    if (!(e instanceof Unauthorized)) { setLink("down", "error"); toast(e.message, true); }
    return;
  }
  const loop = async () => {
    try { await refresh(); } catch (e) { if (e instanceof Unauthorized) return; }
    setTimeout(loop, REFRESH_MS);
  };
  setTimeout(loop, REFRESH_MS);
  // The daemon's CPU is a difference: a second reading soon after the first.
  let first = true;
  const figures = async () => {
    try { await daemonFigures(); } catch (e) { if (e instanceof Unauthorized) return; }
    setTimeout(figures, first ? 1000 : REFRESH_MS);
    first = false;
  };
  figures();
}

start();
