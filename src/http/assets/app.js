// The cohort dashboard: polls this coordinator's /api/ every second and redraws, without a
// reload. No framework and no build step; it runs under `default-src 'self'` (no inline script
// or style: every element is built with the DOM API, text is set with textContent, the charts
// are SVG elements with attributes only).
"use strict";

const POLL_MS = 1000;
const STORE_POLL_MS = 2000;
const CHART_ATTEMPTS = 300;
const ABORTS_SHOWN = 10;
const TOKEN_KEY = "cohort-token";
const SVG = "http://www.w3.org/2000/svg";

// What the page knows, merged from incremental reads of /api/history.
const state = {
  started: null, // the history's started_at_ms: a change means the coordinator restarted
  seq: 0,
  capacity: { attempts: 500, timeline: 200 },
  attempts: [],
  timeline: new Map(), // id -> entry
  pauses: {},
  status: null,
  store: null,
  lastOk: 0,
  openNodes: new Set(),
};

// ---------------------------------------------------------------------------------------------
// DOM helpers

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function setText(id, text) {
  const node = $(id);
  if (node && node.textContent !== text) node.textContent = text;
}

function fill(id, ...children) {
  const node = $(id);
  if (node) node.replaceChildren(...children.filter((c) => c));
}

function show(id, visible) {
  const node = $(id);
  if (node) node.hidden = !visible;
}

// ---------------------------------------------------------------------------------------------
// Formatting

function fmtDuration(us) {
  if (us === null || us === undefined) return "–";
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : us < 1e5 ? 1 : 0)} ms`;
  if (us < 120e6) return `${(us / 1e6).toFixed(2)} s`;
  return `${Math.round(us / 60e6)} min`;
}

function fmtBytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function fmtAge(ms) {
  if (!ms || !state.status) return "";
  const age = Math.max(0, state.status.now_ms - ms);
  if (age < 1500) return "just now";
  if (age < 90e3) return `${Math.round(age / 1000)} s ago`;
  if (age < 90 * 60e3) return `${Math.round(age / 60e3)} min ago`;
  return `${Math.round(age / 3600e3)} h ago`;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

// ---------------------------------------------------------------------------------------------
// Fetching

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    const text = await response.text();
    throw new Error(`${path}: ${response.status} ${text.trim()}`);
  }
  return response.json();
}

function askForToken() {
  show("token-form", true);
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  show("token-form", false);
  pollNow();
});

// ---------------------------------------------------------------------------------------------
// Rendering: the header and the banners

function renderHeader(s) {
  const t = s.this;
  document.body.dataset.role = t.role;
  setText("this-coordinator", t.holder ? `coordinator ${t.holder} · nodes connect to ${t.address}` : "coordinator starting");
  const role = $("role-pill");
  if (t.role === "leader") {
    role.textContent = `leader · epoch ${t.epoch}`;
    role.className = "pill good";
  } else if (t.role === "standby") {
    role.textContent = "standby";
    role.className = "pill info";
  } else {
    role.textContent = t.role;
    role.className = "pill";
  }
  const store = $("store-pill");
  if (s.store.reachable === false) {
    store.textContent = "store unreachable";
    store.className = "pill bad";
  } else if (s.store.reachable === true) {
    store.textContent = "store ok";
    store.className = "pill good";
  } else {
    store.textContent = "store …";
    store.className = "pill";
  }

  // The store cannot be read: say so, and how old what is shown is.
  if (s.store.reachable === false) {
    const since = s.store.ok_at_ms ? ` What is shown from the store was read ${fmtAge(s.store.ok_at_ms)} (${fmtTime(s.store.ok_at_ms)}).` : " Nothing could be read from it yet.";
    fill("banner-store", el("strong", { text: "The store is unreachable. " }), `${s.store.error || "no answer"}.${since}`);
    show("banner-store", true);
  } else {
    show("banner-store", false);
  }

  // On a standby, who leads and where to look.
  const leader = s.cohort.leader;
  if (t.role === "standby") {
    const parts = [el("strong", { text: "This coordinator is a standby. " })];
    if (leader) {
      parts.push(`The leader is ${leader.holder || "a coordinator"}${leader.address ? ` at ${leader.address}` : ""}, epoch ${leader.epoch}. `);
      if (leader.dashboard) {
        parts.push(el("a", { href: leader.dashboard, id: "leader-link", text: "Open the leader's dashboard →" }));
      } else {
        parts.push("Its dashboard is not known (it serves none, or it did not answer).");
      }
    } else {
      parts.push("No coordinator leads yet.");
    }
    fill("banner-standby", ...parts);
    show("banner-standby", true);
  } else {
    show("banner-standby", false);
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering: the cards

function renderCards(s) {
  const c = s.cohort;
  const leader = c.leader;
  setText("leader-epoch", leader ? String(leader.epoch) : "none");
  fill("leader-holder", document.createTextNode(leader && leader.holder ? leader.holder : "–"),
    s.this.role === "leader" ? el("span", { class: "tag", text: "this coordinator" }) : null);
  const address = $("leader-address");
  address.replaceChildren();
  if (leader && leader.address) {
    address.append(leader.address);
    if (s.this.role !== "leader" && leader.dashboard) {
      address.append(" ", el("a", { href: leader.dashboard, text: "dashboard" }));
    }
  } else {
    address.append("–");
  }
  const lease = c.lease;
  const leaseLen = `${(s.this.settings.lease_ms / 1000).toFixed(s.this.settings.lease_ms % 1000 ? 1 : 0)} s`;
  setText("leader-lease", lease ? `${leaseLen}; renewal ${lease.renewal} at ${lease.renewed_at.replace("T", " ").replace("Z", " UTC")}` : leaseLen);

  const standbys = c.standbys || [];
  if (standbys.length === 0) {
    fill("standbys", el("li", { class: "dim", text: s.this.role === "leader" ? "none announced itself" : "–" }));
  } else {
    fill("standbys", ...standbys.map((sb) => el("li", { dataset: { standby: sb.holder } },
      el("strong", { text: sb.holder }), ` at ${sb.address} `,
      sb.holder === s.this.holder ? el("span", { class: "tag", text: "this coordinator" })
        : sb.dashboard ? el("a", { href: sb.dashboard, text: "dashboard" }) : null)));
  }

  setText("last-committed", c.last_committed ? String(c.last_committed.id) : c.coordinator && c.coordinator.last_committed ? String(c.coordinator.last_committed) : "none");
  setText("in-flight", c.in_flight ? `checkpoint ${c.in_flight.id} (round ${c.in_flight.round})` : "nothing");
  const k = s.counters;
  setText("counters", `${k.committed} committed · ${k.aborted} aborted · ${k.failed} failed · ${plural(k.recoveries, "recovery", "recoveries")}`);
  setText("interval", s.this.settings.interval_ms ? fmtDuration(s.this.settings.interval_ms * 1000) : "on demand only");
}

function renderLine(view) {
  const line = view.recovery_line;
  if (!line) {
    setText("recovery-line", view.reachable === false ? "unknown" : "…");
    setText("line-verified", "not verified yet");
  } else if (line.error) {
    setText("recovery-line", "unknown");
    setText("line-verified", line.error);
  } else {
    setText("recovery-line", line.id ? String(line.id) : "none verifies");
    const newest = view.retained.length ? view.retained[0].id : null;
    const behind = newest && line.newest_then && newest > line.newest_then ? `; ${newest - line.newest_then} newer not verified yet` : "";
    const skipped = line.skipped.length ? `; skipped damaged ${line.skipped.map((x) => x.id).join(", ")}` : "";
    setText("line-verified", `${fmtAge(line.verified_at_ms)}${skipped}${behind}`);
  }
  setText("retained-count", `${view.retained_total}${view.pins.length ? ` (${view.pins.length} pinned)` : ""}`);
  setText("store-url", view.url);
}

// ---------------------------------------------------------------------------------------------
// Rendering: the checkpoint history chart

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function renderHistory() {
  const attempts = state.attempts.slice(-CHART_ATTEMPTS);
  const counts = { committed: 0, aborted: 0, failed: 0 };
  for (const a of state.attempts) counts[a.outcome] += 1;
  setText("history-committed", String(counts.committed));
  setText("history-aborted", String(counts.aborted));
  setText("history-failed", String(counts.failed));
  setText("history-window", attempts.length ? `the last ${plural(attempts.length, "attempt", "attempts")} of this coordinator` : "");
  if (attempts.length === 0) {
    // A standby records no attempt: the leader does.
    const s = state.status;
    const leader = s && s.cohort.leader;
    if (s && s.this.role === "standby") {
      fill("chart", el("p", { class: "dim" }, "This coordinator stands by: the leader records the checkpoint history. ",
        leader && leader.dashboard ? el("a", { href: leader.dashboard, text: "Open the leader's dashboard →" }) : null));
    } else {
      fill("chart", el("p", { class: "dim", text: "No checkpoint attempt recorded by this coordinator yet." }));
    }
    return;
  }

  const W = 1000;
  const left = 70;
  const right = 10;
  const plotW = W - left - right;
  const panelH = 74;
  const gap = 22;
  const rows = [
    { key: "duration", label: "duration", value: (a) => a.duration_us, fmt: fmtDuration },
    { key: "size", label: "size", value: (a) => a.bytes, fmt: fmtBytes },
    { key: "pause", label: "longest pause", value: (a) => a.longest_pause_us, fmt: fmtDuration },
  ];
  const H = rows.length * (panelH + gap) + 16;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "history-chart", role: "img", "aria-label": "checkpoint duration, size and longest pause per attempt" });
  const slot = plotW / Math.max(attempts.length, 20);
  const barW = Math.max(1, slot * 0.8);
  rows.forEach((row, r) => {
    const top = r * (panelH + gap) + 14;
    const max = niceMax(Math.max(0, ...attempts.map((a) => row.value(a) || 0)));
    const g = svg("g", { class: `panel-${row.key}` });
    g.append(svg("text", { x: left + 2, y: top + 2, class: "axis-title", text: row.label }));
    g.append(svg("text", { x: left - 6, y: top + 12, class: "axis", "text-anchor": "end", text: row.fmt(max) }));
    g.append(svg("text", { x: left - 6, y: top + panelH, class: "axis", "text-anchor": "end", text: "0" }));
    g.append(svg("line", { x1: left, x2: W - right, y1: top + panelH + 0.5, y2: top + panelH + 0.5, class: "baseline" }));
    g.append(svg("line", { x1: left, x2: W - right, y1: top + 8.5, y2: top + 8.5, class: "gridline" }));
    attempts.forEach((a, i) => {
      const v = row.value(a);
      const x = left + i * slot + (slot - barW) / 2;
      let h = v ? Math.max(1, (v / max) * (panelH - 8)) : 0;
      // An attempt with no value still gets a mark, so that aborts show in every panel.
      if (!v) h = a.outcome === "committed" ? 0 : 2;
      if (h === 0) return;
      const bar = svg("rect", { x: x.toFixed(2), y: (top + panelH - h).toFixed(2), width: barW.toFixed(2), height: h.toFixed(2), class: `bar ${a.outcome}` });
      bar.append(svg("title", { text: `checkpoint ${a.id}: ${a.outcome}${a.reason ? ` (${a.reason})` : ""}\n${fmtTime(a.ended_at_ms)}\nduration ${fmtDuration(a.duration_us)}, ${fmtBytes(a.bytes)}, longest pause ${fmtDuration(a.longest_pause_us)}` }));
      g.append(bar);
    });
    chart.append(g);
  });
  const first = attempts[0];
  const last = attempts[attempts.length - 1];
  chart.append(svg("text", { x: left, y: H - 2, class: "axis", text: `${fmtTime(first.ended_at_ms)} · checkpoint ${first.id}` }));
  chart.append(svg("text", { x: W - right, y: H - 2, class: "axis", "text-anchor": "end", text: `checkpoint ${last.id} · ${fmtTime(last.ended_at_ms)}` }));
  fill("chart", chart);

  // Consecutive attempts that ended alike (a node away makes every retry abort the same way)
  // are one row.
  const groups = [];
  for (const a of state.attempts) {
    const last = groups[groups.length - 1];
    if (a.outcome === "committed") {
      if (last) last.closed = true;
    } else if (last && !last.closed && last.outcome === a.outcome && last.reason === a.reason) {
      last.to = a;
      last.count += 1;
    } else {
      groups.push({ outcome: a.outcome, reason: a.reason, from: a, to: a, count: 1, closed: false });
    }
  }
  const shown = groups.slice(-ABORTS_SHOWN).reverse();
  const body = $("aborts").tBodies[0];
  if (shown.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "dim", text: "none" })));
  } else {
    body.replaceChildren(...shown.map((g) => {
      const ids = g.from.id === g.to.id ? String(g.from.id) : `${g.from.id}–${g.to.id}`;
      const when = g.count === 1 ? fmtTime(g.from.ended_at_ms) : `${fmtTime(g.from.ended_at_ms)} – ${fmtTime(g.to.ended_at_ms)}`;
      return el("tr", { class: g.outcome, dataset: { attempt: g.to.seq } },
        el("td", { text: ids }),
        el("td", { text: when }),
        el("td", {}, el("span", { class: `tag ${g.outcome}`, text: g.count === 1 ? g.outcome : `${g.outcome} ×${g.count}` })),
        el("td", { text: fmtDuration(g.to.duration_us) }),
        el("td", { class: "reason", text: g.reason || "" }));
    }));
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering: nodes

async function toggleObjects(name, row) {
  if (state.openNodes.has(name)) {
    state.openNodes.delete(name);
    renderNodes();
    return;
  }
  state.openNodes.add(name);
  renderNodes();
  try {
    const answer = await api(`/api/nodes/${encodeURIComponent(name)}`);
    const cell = document.querySelector(`tr.objects-of[data-node="${CSS.escape(name)}"] td`);
    if (cell) {
      const more = answer.total > answer.objects.length ? ` … and ${answer.total - answer.objects.length} more` : "";
      cell.replaceChildren(el("span", { class: "objects-list", text: answer.objects.join("  ") + more }));
    }
  } catch (e) {
    if (row) row.title = String(e);
  }
}

function renderNodes() {
  const s = state.status;
  if (!s) return;
  const nodes = s.cohort.nodes || [];
  const live = nodes.filter((n) => n.live).length;
  const from = s.cohort.source === "store" ? " (as recorded with the newest checkpoint)" : "";
  setText("nodes-summary", nodes.length ? `${live} live of ${nodes.length} · ${plural(s.cohort.objects, "object", "objects")}${from}` : "no node known");
  const body = $("nodes").tBodies[0];
  if (nodes.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "dim", text: "no node known" })));
    return;
  }
  const rows = [];
  for (const n of nodes) {
    const p = state.pauses[n.name];
    const open = state.openNodes.has(n.name);
    const row = el("tr", { class: n.live ? "node live" : "node lost", dataset: { node: n.name } },
      el("td", { class: "name" }, el("strong", { text: n.name })),
      el("td", { class: "health" }, el("span", { class: `tag ${n.live ? "good" : "bad"}`, text: n.live ? "live" : "lost" })),
      el("td", { class: "addr", text: n.peer_addr }),
      el("td", { class: "num objects", text: String(n.objects) }),
      el("td", { class: "num", text: p ? fmtDuration(p.p50_us) : "–" }),
      el("td", { class: "num", text: p ? fmtDuration(p.p90_us) : "–" }),
      el("td", { class: "num", text: p ? fmtDuration(p.p99_us) : "–" }),
      el("td", { class: "num", text: p ? fmtDuration(p.max_us) : "–" }),
      el("td", { class: "num", text: p ? fmtDuration(p.last_us) : "–" }),
      el("td", {}, el("button", { type: "button", class: "link", text: open ? "hide objects" : "objects", onclick: (e) => toggleObjects(n.name, e.target.closest("tr")) })));
    rows.push(row);
    if (open) {
      const previous = document.querySelector(`tr.objects-of[data-node="${CSS.escape(n.name)}"] td`);
      const cell = el("td", { colspan: 10 }, previous ? previous.firstChild : el("span", { class: "dim", text: "loading…" }));
      rows.push(el("tr", { class: "objects-of", dataset: { node: n.name } }, cell));
    }
  }
  body.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// Rendering: the timeline of recoveries and leadership changes

function describe(e) {
  switch (e.kind) {
    case "recovery": {
      const why = e.cause;
      const line = e.line ? `back to checkpoint ${e.line}` : "no committed line";
      const who = e.restoring.length ? `; restoring ${e.restoring.join(", ")}` : "";
      const next = e.next_commit ? `; checkpoint ${e.next_commit.id} committed ${fmtDuration((e.next_commit.at_ms - e.at_ms) * 1000)} later` : "; no checkpoint committed since";
      return { cls: "recovery", title: "Recovery", text: `${why}, ${line}${who}${next}` };
    }
    case "leading":
      return { cls: "leading", title: `Leading, epoch ${e.epoch}`, text: e.fence ? `fenced the previous epochs with checkpoint ${e.fence}` : "no committed checkpoint to fence" };
    case "lead_failed":
      return { cls: "fenced", title: `Could not lead epoch ${e.epoch}`, text: e.reason };
    case "stepped_down":
      return { cls: "fenced", title: `Stepped down from epoch ${e.epoch}`, text: "" };
    case "following":
      return { cls: "leading", title: "Standing by", text: e.epoch ? `epoch ${e.epoch} is held by ${e.holder}${e.address ? ` at ${e.address}` : ""}` : "no coordinator holds an epoch yet" };
    case "fenced":
      return { cls: "fenced", title: "A commit was fenced", text: "a newer coordinator took over the store" };
    case "halted":
      return { cls: "fenced", title: `Halted: ${e.object} failed`, text: `${e.error}; beyond the restart policy (${e.policy})` };
    default:
      return { cls: "", title: e.kind, text: "" };
  }
}

function renderTimeline() {
  const entries = [...state.timeline.values()].sort((a, b) => a.at_ms - b.at_ms || a.id - b.id);
  if (entries.length === 0) {
    fill("timeline", el("li", { class: "dim", text: "nothing yet" }));
    fill("timeline-chart");
    return;
  }
  fill("timeline", ...entries.slice().reverse().map((e) => {
    const d = describe(e);
    return el("li", { class: d.cls, dataset: { kind: e.kind } },
      el("time", { text: fmtTime(e.at_ms) }),
      el("strong", { text: d.title }),
      d.text ? el("span", { text: ` ${d.text}` }) : null);
  }));

  // A strip: each entry at its time, recoveries as spans until their next commit.
  const W = 1000;
  const H = 46;
  const now = state.status ? state.status.now_ms : entries[entries.length - 1].at_ms;
  const from = Math.min(entries[0].at_ms, now - 60e3);
  const span = Math.max(1, now - from);
  const x = (ms) => 10 + ((ms - from) / span) * (W - 20);
  const strip = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline-chart", role: "img", "aria-label": "recoveries and takeovers over time" });
  strip.append(svg("line", { x1: 10, x2: W - 10, y1: 24.5, y2: 24.5, class: "baseline" }));
  for (const e of entries) {
    const d = describe(e);
    const at = x(e.at_ms);
    if (e.kind === "recovery") {
      const end = e.next_commit ? x(e.next_commit.at_ms) : x(now);
      const r = svg("rect", { x: at.toFixed(1), y: 14, width: Math.max(3, end - at).toFixed(1), height: 21, rx: 2, class: `span ${d.cls}${e.next_commit ? "" : " open"}` });
      r.append(svg("title", { text: `${fmtTime(e.at_ms)} ${d.title}: ${d.text}` }));
      strip.append(r);
    } else {
      const m = svg("circle", { cx: at.toFixed(1), cy: 24.5, r: 6, class: `mark ${d.cls}` });
      m.append(svg("title", { text: `${fmtTime(e.at_ms)} ${d.title}${d.text ? `: ${d.text}` : ""}` }));
      strip.append(m);
    }
  }
  strip.append(svg("text", { x: 10, y: H - 1, class: "axis", text: fmtTime(from) }));
  strip.append(svg("text", { x: W - 10, y: H - 1, class: "axis", "text-anchor": "end", text: `now ${fmtTime(now)}` }));
  fill("timeline-chart", strip);
}

// ---------------------------------------------------------------------------------------------
// Rendering: retained checkpoints

function renderRetained(view) {
  const line = view.recovery_line && view.recovery_line.id;
  setText("retained-summary", `${view.retained_total} in the store${view.retained_total > view.retained.length ? `, the newest ${view.retained.length} shown` : ""}${view.checked_at_ms ? ` · read ${fmtAge(view.checked_at_ms)}` : ""}`);
  const body = $("retained").tBodies[0];
  if (view.retained.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "dim", text: view.reachable === false ? "the store could not be read" : "none committed" })));
    return;
  }
  body.replaceChildren(...view.retained.map((r) => el("tr", { class: r.kind, dataset: { checkpoint: r.id } },
    el("td", { text: String(r.id) }),
    el("td", { text: r.kind }),
    el("td", { class: "num", text: r.epoch === null ? "–" : String(r.epoch) }),
    el("td", { text: r.created_at_ms ? `${fmtTime(r.created_at_ms)} (${fmtAge(r.created_at_ms)})` : "–" }),
    el("td", { class: "num", text: r.objects === null ? "–" : String(r.objects) }),
    el("td", { class: "num", text: r.in_transit === null ? "–" : String(r.in_transit) }),
    el("td", { class: "num", text: fmtBytes(r.bytes) }),
    el("td", {},
      r.id === line ? el("span", { class: "tag good", text: "recovery line" }) : null,
      r.pinned ? el("span", { class: "tag info", text: "pinned" }) : null,
      r.problem ? el("span", { class: "tag bad", title: r.problem, text: "unreadable" }) : null))));
}

// ---------------------------------------------------------------------------------------------
// Polling

function mergeHistory(page) {
  state.started = page.started_at_ms;
  state.seq = page.seq;
  state.capacity = page.capacity;
  state.attempts.push(...page.attempts);
  if (state.attempts.length > state.capacity.attempts) {
    state.attempts.splice(0, state.attempts.length - state.capacity.attempts);
  }
  for (const e of page.timeline) state.timeline.set(e.id, e);
  const ids = [...state.timeline.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, Math.max(0, ids.length - state.capacity.timeline))) state.timeline.delete(id);
  state.pauses = page.pauses;
}

let timer = null;
let storeTimer = null;

async function poll() {
  try {
    const after = state.started === null ? 0 : state.seq;
    const [status, history] = await Promise.all([
      api("/api/status"),
      api(`/api/history?after=${after}`),
    ]);
    state.status = status;
    if (after > 0 && history.started_at_ms !== state.started) {
      // The coordinator restarted between two reads: read everything again next time.
      state.started = null;
      state.attempts = [];
      state.timeline = new Map();
    } else {
      mergeHistory(history);
    }
    state.lastOk = Date.now();
    show("banner-offline", false);
    show("token-form", false);
    document.body.classList.remove("offline");
    renderHeader(status);
    renderCards(status);
    renderHistory();
    renderNodes();
    renderTimeline();
    document.body.dataset.ready = "true";
  } catch (e) {
    if (e instanceof Unauthorized) {
      askForToken();
    } else {
      document.body.classList.add("offline");
      fill("banner-offline", el("strong", { text: "This coordinator does not answer. " }), `${e.message || e}. Retrying every second; what is shown is from ${state.lastOk ? new Date(state.lastOk).toLocaleTimeString([], { hour12: false }) : "nothing yet"}.`);
      show("banner-offline", true);
    }
  }
  timer = setTimeout(poll, POLL_MS);
}

async function pollStore() {
  try {
    const view = await api("/api/checkpoints");
    state.store = view;
    renderLine(view);
    renderRetained(view);
  } catch (e) {
    if (e instanceof Unauthorized) askForToken();
  }
  storeTimer = setTimeout(pollStore, STORE_POLL_MS);
}

function pollNow() {
  clearTimeout(timer);
  clearTimeout(storeTimer);
  poll();
  pollStore();
}

pollNow();
