// The ballast web view: polls this agent's /api/v1 every 2 s and draws the hosts, the
// load history and the recent sessions. No library, nothing from elsewhere.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i === 0 ? 0 : 1) + " " + units[i];
}

function ago(ms) {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return s.toFixed(1) + "s ago";
  if (s < 600) return Math.floor(s) + "s ago";
  if (s < 7200) return Math.floor(s / 60) + "m ago";
  return Math.floor(s / 3600) + "h ago";
}

function drawHosts(status, vms) {
  const byNode = {};
  for (const v of vms.vms) (byNode[v.node] = byNode[v.node] || []).push(v);
  const scale = Math.max(1, status.max_load * 1.1);
  const hosts = document.getElementById("hosts");
  hosts.replaceChildren(...status.nodes.map((n) => {
    const mine = byNode[n.node] || [];
    const used = mine.reduce((a, v) => ({ cpu: a.cpu + v.factors.cpu, io: a.io + v.factors.io, mem: a.mem + v.factors.mem }), { cpu: 0, io: 0, mem: 0 });
    const pct = Math.min(100, (n.load / scale) * 100);
    const fill = el("div", { class: "fill" + (n.load > 0.9 ? " hot" : n.load > 0.7 ? " warm" : "") });
    fill.style.width = pct.toFixed(1) + "%";
    const full = el("div", { class: "full" });
    full.style.left = ((1 / scale) * 100).toFixed(1) + "%";
    const title = [
      n.node + " (" + n.addr + "), " + n.state + ", last seen " + n.last_seen,
      "load " + n.load.toFixed(3) + " of 1",
      "cpu " + used.cpu.toFixed(2) + " of " + n.cpu_capacity.toFixed(0) + " cores",
      "io " + bytes(used.io) + "/s",
      "memory " + bytes(used.mem) + " used by VMs, " + bytes(n.mem_free_bytes) + " free of " + bytes(n.mem_capacity_bytes),
      n.vms + " VMs, " + n.migrations_in_flight + " migrating",
    ].concat(n.error ? ["error: " + n.error] : []).join("\n");
    const map = el("div", { class: "vms" }, ...mine.map((v) => el("a", {
      class: "vm " + v.state + (v.pinned ? " pinned" : ""),
      id: "vm-" + v.vm,
      href: "#vm-" + v.vm,
      title: v.vm + " (" + v.state + (v.peer ? " " + v.peer : "") + ")\ncpu " + v.factors.cpu.toFixed(2) + ", io " + bytes(v.factors.io) + "/s, mem " + bytes(v.factors.mem),
    })));
    return el("div", { class: "host", "data-node": n.node, "data-state": n.state, "data-load": n.load.toFixed(3), "data-vms": n.vms, title },
      el("div", { class: "name" }, n.node, el("span", { class: "state" }, n.state)),
      el("div", { class: "bar" }, fill, full),
      el("div", { class: "load" }, n.load.toFixed(3)),
      map);
  }));
  document.getElementById("summary").textContent =
    status.active_nodes + " active of " + status.nodes.length + " hosts, " + status.total_vms +
    " VMs, load max " + status.max_load.toFixed(3) + " / mean " + status.mean_load.toFixed(3) +
    ", " + status.migrations_in_flight + " migrating" + (status.partial ? " (partial)" : "");
}

function drawChart(history) {
  const w = 800, h = 170, left = 34, bottom = 18, top = 8;
  const now = Date.now();
  // The last hour, or less while the agent has not been up that long (at least 5 min).
  const s = history.samples.filter((p) => p.at_unix_ms > now - 3600 * 1000);
  const oldest = s.length ? s[0].at_unix_ms : now;
  const span = Math.min(3600 * 1000, Math.max(5 * 60 * 1000, now - oldest));
  const root = svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": "max and mean load" });
  const ymax = Math.max(1, ...s.map((p) => p.max_load)) * 1.05;
  const x = (t) => left + ((t - (now - span)) / span) * (w - left - 8);
  const y = (v) => top + (1 - v / ymax) * (h - top - bottom);
  for (const v of [0, 0.5, 1, ymax > 1.5 ? Math.floor(ymax) : null].filter((v) => v !== null)) {
    root.append(svg("line", { class: "grid", x1: left, x2: w, y1: y(v), y2: y(v) }));
    const t = svg("text", { x: 2, y: y(v) + 3 }); t.textContent = v.toFixed(1); root.append(t);
  }
  const minutes = span / 60000;
  const step = [1, 5, 10, 15].find((st) => minutes / st <= 6) || 15;
  for (let m = Math.floor(minutes / step) * step; m >= 0; m -= step) {
    const t = svg("text", { x: x(now - m * 60000) - 10, y: h - 4 });
    t.textContent = m ? "-" + m + "m" : "now";
    root.append(t);
  }
  for (const key of ["max_load", "mean_load"]) {
    const cls = key === "max_load" ? "max" : "mean";
    const pts = s.map((p) => [x(p.at_unix_ms), y(p[key])]);
    root.append(svg("polyline", { class: cls, points: pts.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "), "data-points": pts.length }));
    if (pts.length) {
      const last = pts[pts.length - 1];
      root.append(svg("circle", { class: cls + " dot", cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 3 }));
    }
  }
  document.getElementById("chart").replaceChildren(root);
}

function drawSessions(sessions, vms) {
  const now = Date.now();
  const where = {};
  for (const v of vms.vms) where[v.vm] = v;
  const rows = sessions.sessions.map((s) => {
    const moves = s.moves.map((m) => {
      const v = where[m.vm];
      const took = v && v.node === m.to && v.last_moved_unix_ms && v.last_moved_unix_ms >= s.at_unix_ms
        ? el("span", { class: "took" }, " moved " + ((v.last_moved_unix_ms - s.at_unix_ms) / 1000).toFixed(1) + " s after the plan")
        : "";
      return el("div", {}, el("a", { href: "#vm-" + m.vm }, m.vm), " " + m.from + " → " + m.to +
        " (" + m.load_from.toFixed(3) + " → " + m.load_to.toFixed(3) + ")", took);
    });
    return el("tr", { class: "session", "data-session": s.session },
      el("td", {}, ago(now - s.at_unix_ms)),
      el("td", {}, s.initiator + " → " + s.peer),
      el("td", { class: "num" }, s.load_initiator.toFixed(3) + " / " + s.load_peer.toFixed(3)),
      el("td", {}, String(s.outcome)),
      el("td", {}, ...(moves.length ? moves : ["—"])));
  });
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren(...rows);
  if (sessions.unreachable.length) {
    body.append(el("tr", {}, el("td", { colSpan: 5 }, "missing: " + sessions.unreachable.map((u) => u[0] + " (" + u[1] + ")").join(", "))));
  }
}

async function refresh() {
  const movesOnly = document.getElementById("moves-only").checked;
  try {
    const [status, vms, sessions, history] = await Promise.all([
      getJson("/api/v1/status"),
      getJson("/api/v1/vms"),
      getJson("/api/v1/sessions?limit=30" + (movesOnly ? "&moves=true" : "")),
      getJson("/api/v1/history"),
    ]);
    drawHosts(status, vms);
    drawChart(history);
    drawSessions(sessions, vms);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.state = "live";
  } catch (e) {
    document.getElementById("updated").textContent = "update failed: " + e.message;
    document.body.dataset.state = "stale";
  }
}

let busy = false;
async function tick() {
  if (busy) return;
  busy = true;
  try { await refresh(); } finally { busy = false; }
}

document.getElementById("moves-only").addEventListener("change", tick);
tick();
setInterval(tick, POLL_MS);
