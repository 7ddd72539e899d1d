// iotbroker admin dashboard: plain JavaScript, no dependencies, no build step.
// Pages are hash routes (#/overview, #/clients, #/client/ID, #/topics, #/subscriptions,
// #/bans, #/publish). Data comes from /api/v1 (JSON); the overview's charts from the
// Server-Sent Events of /api/v1/stream. Text from the broker is only ever set as text
// (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const HEADERS = { "X-Requested-With": "iotbroker-dashboard" };
const view = document.getElementById("page");
const statusLine = document.getElementById("status");
let stream = null;
const series = { t: [], connections: [], msg_in: [], msg_out: [], dropped: [], inflight: [],
  queued: [] };
const HISTORY = 900;

// ----------------------------------------------------------------------- helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text) {
  statusLine.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { statusLine.textContent = ""; }, 6000);
}

class HttpError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { ...HEADERS }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, init);
  if (resp.status === 401) { showLogin(); throw new HttpError(401, await resp.json()); }
  if (resp.status === 204) return null;
  const data = await resp.json();
  if (!resp.ok) throw new HttpError(resp.status, data);
  return data;
}

function enc(s) { return encodeURIComponent(s); }

function table(caption, columns, rows, id) {
  return h("div", { class: "table-wrap" },
    h("table", { id },
      h("caption", { class: "legend", text: caption }),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c })))),
      h("tbody", {}, rows)));
}

function yesNo(v) { return h("span", { class: v ? "yes" : "no", text: v ? "yes" : "no" }); }

function pager(meta, go) {
  const pages = Math.max(1, Math.ceil(meta.count / meta.limit));
  return h("div", { class: "pager" },
    h("button", { type: "button", disabled: meta.page <= 1, onclick: () => go(meta.page - 1),
      text: "Previous" }),
    h("span", { text: `Page ${meta.page} of ${pages} (${meta.count})` }),
    h("button", { type: "button", disabled: !meta.hasnext, onclick: () => go(meta.page + 1),
      text: "Next" }));
}

// ------------------------------------------------------------------------- login
function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  view.replaceChildren();
  stopStream();
  document.getElementById("username").focus();
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await api("POST", "/login", { username: ev.target.username.value,
      password: ev.target.password.value });
    ev.target.password.value = "";
    start();
  } catch (e) {
    error.textContent = e.message;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  await api("POST", "/logout").catch(() => null);
  showLogin();
});

// ------------------------------------------------------------------------ charts
function drawChart(canvas, lines) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  if (!w || !hgt) return;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, hgt);
  const n = series.t.length;
  let max = 1;
  for (const [key] of lines) for (const v of series[key]) max = Math.max(max, v);
  ctx.strokeStyle = "#d8dce3"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(0, hgt - 0.5); ctx.lineTo(w, hgt - 0.5); ctx.stroke();
  ctx.fillStyle = "#5b6474"; ctx.font = "11px system-ui";
  ctx.fillText(String(Math.round(max)), 2, 11);
  const minutes = Math.round(Math.min(HISTORY, Math.max(n, 60)) / 60);
  ctx.textAlign = "right";
  ctx.fillText(`last ${minutes} min`, w - 2, 11);
  ctx.textAlign = "left";
  for (const [key, colour] of lines) {
    ctx.strokeStyle = colour; ctx.lineWidth = 1.6; ctx.beginPath();
    // the x axis spans the history there is (at least a minute, at most 15)
    const span = Math.min(HISTORY, Math.max(n, 60)) - 1;
    series[key].forEach((v, i) => {
      const x = ((span - (n - 1 - i)) / span) * w;
      const y = hgt - 2 - (v / max) * (hgt - 16);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

const CHARTS = [
  ["connections", "Connections", [["connections", "#1f5fbf"]], "connected clients"],
  ["messages", "Messages per second", [["msg_in", "#1e7b34"], ["msg_out", "#1f5fbf"]],
    "green: in, blue: out"],
  ["dropped", "Dropped per second", [["dropped", "#b3261e"]], "queue full, offline QoS 0, slow consumers, too large"],
  ["inflight", "In flight and queued", [["inflight", "#7b3fb3"], ["queued", "#c77800"]],
    "purple: in flight, orange: queued"],
];

function addSample(s) {
  for (const key of Object.keys(series)) {
    series[key].push(s[key]);
    if (series[key].length > HISTORY) series[key].shift();
  }
}

function redraw() {
  for (const [id, , lines] of CHARTS) {
    const canvas = document.getElementById(`chart-${id}`);
    if (!canvas) continue;
    drawChart(canvas, lines);
    const last = lines.map(([k]) => series[k].length ? series[k][series[k].length - 1] : 0);
    document.getElementById(`stat-${id}`).textContent = last.join(" / ");
  }
  const n = document.getElementById("samples");
  if (n) n.textContent = String(series.t.length);
}

function startStream() {
  if (stream) return;
  stream = new EventSource(API + "/stream");
  stream.addEventListener("history", (ev) => {
    for (const key of Object.keys(series)) series[key].length = 0;
    JSON.parse(ev.data).forEach(addSample);
    redraw();
  });
  stream.addEventListener("sample", (ev) => { addSample(JSON.parse(ev.data)); redraw(); });
  stream.onerror = () => { if (stream && stream.readyState === EventSource.CLOSED) stopStream(); };
}

function stopStream() { if (stream) { stream.close(); stream = null; } }

// ------------------------------------------------------------------------- pages
function summary(info) {
  return `Version ${info.version} · up ${Math.round(info.uptime)} s · ${info.sessions} sessions · `
    + `${info.subscriptions} subscriptions · ${info.retained} retained · ${info.bans} bans · `;
}

let summaryTimer = null;

async function overview() {
  const info = await api("GET", "/broker");
  view.replaceChildren(
    h("h2", { text: "Overview" }),
    h("p", { class: "legend" }, h("span", { id: "summary", text: summary(info) }),
      h("span", { id: "samples", text: "0" }), " samples (last 15 minutes, one a second)"),
    h("div", { class: "cards" }, CHARTS.map(([id, title, , legend]) =>
      h("section", { class: "card", "aria-labelledby": `title-${id}` },
        h("h3", { id: `title-${id}`, text: title }),
        h("div", { class: "figure", id: `stat-${id}`, "aria-live": "off", text: "–" }),
        h("canvas", { id: `chart-${id}`, role: "img",
          "aria-label": `${title}, last 15 minutes (${legend})` }),
        h("div", { class: "legend", text: legend })))));
  startStream();
  redraw();
  clearInterval(summaryTimer);
  summaryTimer = setInterval(async () => {  // the counts, every 10 s while shown
    const el = document.getElementById("summary");
    if (!el) { clearInterval(summaryTimer); return; }
    try { el.textContent = summary(await api("GET", "/broker")); } catch (e) { /* next time */ }
  }, 10000);
}

async function kick(clientId, session) {
  if (session && !confirm(`Delete the session of ${clientId}?`)) return false;
  try {
    await api("DELETE", `/clients/${enc(clientId)}${session ? "?session=true" : ""}`);
    say(`${clientId}: ${session ? "session deleted" : "disconnected"}`);
    return true;
  } catch (e) { say(`${clientId}: ${e.message}`); return false; }
}

async function clients(params) {
  const search = params.get("q") || "";
  const page = Number(params.get("page") || 1);
  const query = new URLSearchParams({ page: String(page), limit: "50" });
  if (search) query.set("like_clientid", search);
  const body = await api("GET", `/clients?${query}`);
  const form = h("form", { class: "inline", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    location.hash = `#/clients?q=${enc(ev.target.q.value)}`;
  } },
  h("div", {}, h("label", { for: "clients-search", text: "Client id contains" }),
    h("input", { id: "clients-search", name: "q", value: search, type: "search" })),
  h("button", { type: "submit", text: "Search" }));
  const rows = body.data.map((c) => h("tr", { "data-clientid": c.clientid },
    h("td", {}, h("a", { href: `#/client/${enc(c.clientid)}`, text: c.clientid })),
    h("td", { text: c.username ?? "" }),
    h("td", {}, yesNo(c.connected)),
    h("td", { text: c.ip_address ?? "" }),
    h("td", { text: c.proto_ver === 5 ? "5.0" : "3.1.1" }),
    h("td", { text: c.inflight_cnt }), h("td", { text: c.mqueue_len }),
    h("td", { text: c.subscriptions_cnt }),
    h("td", {}, c.connected
      ? h("button", { type: "button", class: "danger kick", "aria-label": `Kick ${c.clientid}`,
        onclick: async (ev) => { if (await kick(c.clientid, false)) ev.target.closest("tr").remove(); },
        text: "Kick" })
      : h("button", { type: "button", class: "danger", "aria-label": `Delete session of ${c.clientid}`,
        onclick: async (ev) => { if (await kick(c.clientid, true)) ev.target.closest("tr").remove(); },
        text: "Delete" }))));
  view.replaceChildren(h("h2", { text: "Clients" }), form,
    table("Clients and offline sessions", ["Client id", "Username", "Connected", "Address",
      "MQTT", "In flight", "Queued", "Subscriptions", "Action"], rows, "clients-table"),
    pager(body.meta, (p) => { location.hash = `#/clients?q=${enc(search)}&page=${p}`; }));
}

async function clientPage(clientId) {
  const c = await api("GET", `/clients/${enc(clientId)}`);
  const fields = [["Client id", c.clientid], ["Username", c.username], ["Connected", c.connected ? "yes" : "no"],
    ["MQTT", c.proto_ver === 5 ? "5.0" : "3.1.1"], ["Keep alive", c.keepalive],
    ["Address", c.ip_address ? `${c.ip_address}:${c.port}` : null], ["Listener", c.listener],
    ["Certificate subject", c.cert_subject], ["Connected at", c.connected_at],
    ["Disconnected at", c.disconnected_at], ["Session expiry (s)", c.expiry_interval],
    ["In flight", c.inflight_cnt], ["Queued", c.mqueue_len]];
  view.replaceChildren(h("h2", { text: `Client ${c.clientid}` }),
    h("dl", {}, fields.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v ?? "–" })])),
    h("p", {},
      c.connected ? h("button", { type: "button", class: "danger", text: "Kick",
        onclick: async () => { if (await kick(c.clientid, false)) route(); } }) : null, " ",
      h("button", { type: "button", class: "danger", text: "Delete session",
        onclick: async () => { if (await kick(c.clientid, true)) location.hash = "#/clients"; } })),
    h("h3", { text: "Subscriptions" }),
    table(`Subscriptions of ${c.clientid}`, ["Topic filter", "QoS", "No local", "Retain as published"],
      c.subscriptions.map((s) => h("tr", {}, h("td", { class: "wrap", text: s.topic }),
        h("td", { text: s.qos }), h("td", {}, yesNo(s.nl)), h("td", {}, yesNo(s.rap))))));
}

async function topics(params) {
  const filter = params.get("filter") || "#";
  const page = Number(params.get("page") || 1);
  const body = await api("GET", `/retained?topic=${enc(filter)}&page=${page}&limit=50`);
  const detail = h("section", { id: "topic-detail", "aria-live": "polite" });
  const rows = body.data.map((m) => h("tr", {},
    h("td", { class: "wrap" }, h("button", { type: "button", class: "link topic", text: m.topic,
      onclick: () => showTopic(m.topic, detail) })),
    h("td", { text: m.qos }), h("td", { text: m.payload_size }), h("td", { text: m.publish_at ?? "" }),
    h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${m.topic}`,
      text: "Delete", onclick: async (ev) => {
        try { await api("DELETE", `/retained/${enc(m.topic)}`); ev.target.closest("tr").remove();
          say(`${m.topic}: retained message deleted`); } catch (e) { say(e.message); }
      } }))));
  view.replaceChildren(h("h2", { text: "Topics (retained messages)" }),
    h("form", { class: "inline", role: "search", onsubmit: (ev) => {
      ev.preventDefault(); location.hash = `#/topics?filter=${enc(ev.target.filter.value || "#")}`;
    } },
    h("div", {}, h("label", { for: "topic-filter", text: "Topic filter" }),
      h("input", { id: "topic-filter", name: "filter", value: filter })),
    h("button", { type: "submit", text: "Show" })),
    table("Retained messages", ["Topic", "QoS", "Bytes", "Published", "Action"], rows, "topics-table"),
    pager(body.meta, (p) => { location.hash = `#/topics?filter=${enc(filter)}&page=${p}`; }),
    detail);
}

async function showTopic(topic, into) {
  const m = await api("GET", `/retained/${enc(topic)}`);
  into.replaceChildren(h("h3", { text: m.topic }),
    h("p", { class: "legend", text: `QoS ${m.qos} · ${m.payload_size} bytes · ${m.payload_encoding}` }),
    h("pre", { text: m.payload }));
}

async function subscriptions(params) {
  const query = new URLSearchParams({ limit: "100", page: params.get("page") || "1" });
  for (const k of ["clientid", "topic"]) if (params.get(k)) query.set(k, params.get(k));
  const body = await api("GET", `/subscriptions?${query}`);
  view.replaceChildren(h("h2", { text: "Subscriptions" }),
    h("form", { class: "inline", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (ev.target.clientid.value) q.set("clientid", ev.target.clientid.value);
      if (ev.target.topic.value) q.set("topic", ev.target.topic.value);
      location.hash = `#/subscriptions?${q}`;
    } },
    h("div", {}, h("label", { for: "subs-client", text: "Client id" }),
      h("input", { id: "subs-client", name: "clientid", value: params.get("clientid") || "" })),
    h("div", {}, h("label", { for: "subs-topic", text: "Topic filter (exact)" }),
      h("input", { id: "subs-topic", name: "topic", value: params.get("topic") || "" })),
    h("button", { type: "submit", text: "Filter" })),
    table("Subscriptions", ["Client id", "Topic filter", "QoS", "Share group"],
      body.data.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/client/${enc(s.clientid)}`, text: s.clientid })),
        h("td", { class: "wrap", text: s.topic }), h("td", { text: s.qos }),
        h("td", { text: s.share_group ?? "" })))),
    pager(body.meta, (p) => { query.set("page", p); location.hash = `#/subscriptions?${query}`; }));
}

async function bans() {
  const body = await api("GET", "/bans?limit=1000");
  view.replaceChildren(h("h2", { text: "Bans" }),
    h("form", { id: "ban-form", class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      const f = ev.target;
      const req = { kind: f.kind.value, value: f.value.value, reason: f.reason.value };
      if (f.duration.value) req.duration = Number(f.duration.value) * 60;
      try { const r = await api("POST", "/bans", req);
        say(`banned ${r.kind} ${r.value}; disconnected: ${r.disconnected.length}`); route();
      } catch (e) { say(e.message); }
    } },
    h("div", {}, h("label", { for: "ban-kind", text: "Kind" }),
      h("select", { id: "ban-kind", name: "kind" }, ["clientid", "username", "address"].map(
        (k) => h("option", { value: k, text: k })))),
    h("div", {}, h("label", { for: "ban-value", text: "Value (address: IP or CIDR)" }),
      h("input", { id: "ban-value", name: "value", required: true })),
    h("div", {}, h("label", { for: "ban-reason", text: "Reason" }),
      h("input", { id: "ban-reason", name: "reason" })),
    h("div", {}, h("label", { for: "ban-duration", text: "Minutes (empty: forever)" }),
      h("input", { id: "ban-duration", name: "duration", type: "number", min: "1" })),
    h("button", { type: "submit", text: "Ban" })),
    table("Bans in force", ["Kind", "Value", "Reason", "By", "Until", "Action"],
      body.data.map((b) => h("tr", {}, h("td", { text: b.kind }), h("td", { text: b.value }),
        h("td", { text: b.reason }), h("td", { text: b.by }), h("td", { text: b.until ?? "forever" }),
        h("td", {}, h("button", { type: "button", "aria-label": `Lift ban on ${b.value}`, text: "Lift",
          onclick: async () => { await api("DELETE", `/bans/${b.kind}/${enc(b.value)}`); route(); } }))))));
}

function publishPage() {
  const result = h("p", { id: "publish-result", role: "status" });
  view.replaceChildren(h("h2", { text: "Publish" }),
    h("form", { id: "publish-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const f = ev.target;
      try {
        const r = await api("POST", "/publish", { topic: f.topic.value, payload: f.payload.value,
          qos: Number(f.qos.value), retain: f.retain.checked });
        result.textContent = r.matched ? "Published: delivered to subscribers"
          : "Published: no matching subscribers";
      } catch (e) { result.textContent = `Not published: ${e.message}`; }
    } },
    h("label", { for: "pub-topic", text: "Topic" }), h("input", { id: "pub-topic", name: "topic", required: true }),
    h("label", { for: "pub-payload", text: "Payload (text)" }),
    h("textarea", { id: "pub-payload", name: "payload", rows: "4" }),
    h("label", { for: "pub-qos", text: "QoS" }),
    h("select", { id: "pub-qos", name: "qos" }, [0, 1, 2].map((q) => h("option", { value: q, text: q }))),
    h("div", {}, h("input", { id: "pub-retain", name: "retain", type: "checkbox" }),
      " ", h("label", { for: "pub-retain", text: "Retain" })),
    h("button", { type: "submit", text: "Publish" }), result));
}

// ------------------------------------------------------------------------ router
async function route() {
  const hash = location.hash || "#/overview";
  const [path, qs] = hash.slice(1).split("?");
  const params = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href").slice(1) === `/${parts[0] === "client" ? "clients" : parts[0]}`) {
      a.setAttribute("aria-current", "page");
    } else a.removeAttribute("aria-current");
  }
  if (parts[0] !== "overview") stopStream();
  try {
    switch (parts[0]) {
      case "clients": await clients(params); break;
      case "client": await clientPage(decodeURIComponent(parts.slice(1).join("/"))); break;
      case "topics": await topics(params); break;
      case "subscriptions": await subscriptions(params); break;
      case "bans": await bans(); break;
      case "publish": publishPage(); break;
      default: await overview();
    }
  } catch (e) {
    if (e.status !== 401) view.replaceChildren(h("p", { class: "error", role: "alert", text: e.message }));
  }
}

async function start() {
  const me = await api("GET", "/whoami");
  if (me.name === null) { showLogin(); return; }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  await route();
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", redraw);
start();
