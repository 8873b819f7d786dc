// The uniqlog dashboard: plain JavaScript, no build step. Everything it shows comes from the
// node's client API with the token the user signed in with (kept for this tab only).
"use strict";

const state = {
  token: sessionStorage.getItem("uniqlog-token") || "",
  view: "cluster",
  topic: null,
  from: 0,
  length: 0,
  pageSize: 50,
  tail: null,
  stream: null,
  metrics: [], // [{t, appends, latencySum, latencyCount}]
  lag: {}, // consumer -> [{t, lag}]
};

const $ = (sel) => document.querySelector(sel);
const HISTORY_MS = 5 * 60 * 1000;

function showError(message) {
  const e = $("#error");
  e.textContent = message || "";
  e.hidden = !message;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.authorization = "Bearer " + state.token;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    $("#login").hidden = false;
    throw new Error("sign in with a token to see this");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw Object.assign(new Error(body.message || resp.statusText), { status: resp.status, body });
  return body;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "-" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- cluster ---------------------------------------------------------------------------

async function refreshCluster() {
  const { nodes } = await api("/v1/cluster/nodes");
  const leader = nodes.map((n) => n.status).find((s) => s && s.role === "leader");
  const members = new Map(((leader || (nodes[0] || {}).status || {}).members || []).map((m) => [m.id, m]));
  fill($("#cluster-table tbody"), nodes.map((n) => {
    const s = n.status;
    const tr = document.createElement("tr");
    tr.dataset.nodeId = n.id;
    tr.dataset.role = s ? s.role : "down";
    const m = members.get(n.id);
    let lag = null;
    if (s && leader && leader.id !== n.id && leader.replication) {
      const matched = leader.replication[String(n.id)];
      if (matched !== undefined && matched !== null) lag = Math.max(0, leader.last_log_index - matched);
    }
    // As /ready has it; a node a few entries behind under writes is applying, not unwell.
    const health = !s ? (String(n.error || "").includes("answered 404") ? "no status (older build)" : "down")
      : s.leader === null || s.leader === undefined ? "no leader"
      : s.applied_index >= s.commit_index ? "ready" : "applying";
    tr.append(
      cell(n.id),
      cell(m ? m.addr : ""),
      cell(s ? s.role : "down", s && s.role === "leader" ? "role-leader" : ""),
      cell(m ? (m.voter ? "voter" : "learner") : "no"),
      cell(s && s.term, "num"),
      cell(s && s.leader, "num"),
      cell(s && s.commit_index, "num"),
      cell(s && s.applied_index, "num"),
      cell(s && leader && leader.id === n.id ? "-" : lag, "num"),
      cell(health, "health-" + health.replace(" ", "-")),
    );
    if (n.error) tr.title = n.error;
    return tr;
  }));
}

// Append rate and latency from this node's /metrics, kept for the last minutes. Appends are
// the writes that add events: appends to a topic and sign-ups.
const APPEND_ROUTES = ['route="/v1/topics/{topic}/events"', 'route="/v1/users"'];

function parseMetrics(text) {
  const out = { appends: 0, latencySum: 0, latencyCount: 0, conflicts: [] };
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line) continue;
    // Label values may hold braces (route templates): the labels end at the last "} ".
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/);
    if (!m) continue;
    const [, name, labels = "", value] = m;
    const v = Number(value);
    const appendRoute = labels.includes('method="POST"') && APPEND_ROUTES.some((r) => labels.includes(r));
    if (name === "uniqlog_http_requests_total" && appendRoute && labels.includes('status="201"')) out.appends += v;
    if (name === "uniqlog_http_request_duration_seconds_sum" && appendRoute) out.latencySum += v;
    if (name === "uniqlog_http_request_duration_seconds_count" && appendRoute) out.latencyCount += v;
    if (name === "uniqlog_http_requests_total" && labels.includes('status="409"')) {
      out.conflicts.push([labels.match(/route="([^"]*)"/)[1], v]);
    }
    if (name === "uniqlog_uniq_conflicts_total") {
      out.conflicts.push(["uniq set " + labels.match(/set="([^"]*)"/)[1], v]);
    }
  }
  return out;
}

async function refreshMetrics() {
  const resp = await fetch("/metrics");
  if (!resp.ok) return;
  const now = Date.now();
  const m = parseMetrics(await resp.text());
  const last = state.metrics[state.metrics.length - 1];
  // Samples closer than a second would turn one append into a spike (and 0 s into NaN).
  if (!last || now - last.t >= 1000) state.metrics.push(Object.assign({ t: now }, m));
  state.metrics = state.metrics.filter((p) => now - p.t <= HISTORY_MS);
  const rate = [], latency = [];
  for (let i = 1; i < state.metrics.length; i++) {
    const a = state.metrics[i - 1], b = state.metrics[i];
    const dt = (b.t - a.t) / 1000;
    rate.push([b.t, Math.max(0, (b.appends - a.appends) / dt)]);
    const n = b.latencyCount - a.latencyCount;
    latency.push([b.t, n > 0 ? ((b.latencySum - a.latencySum) / n) * 1000 : 0]);
  }
  chart($("#chart-rate"), rate);
  chart($("#chart-latency"), latency);
  fill($("#conflicts-table tbody"), m.conflicts.map(([what, n]) => {
    const tr = document.createElement("tr");
    tr.append(cell(what), cell(n, "num"));
    return tr;
  }));
}

// A line chart of [time, value] points in an SVG of 300 x 100.
function chart(svg, points) {
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  // Nothing until there is something to show: no "max 0.00" over a flat line.
  if (points.length < 2 || points.every((p) => p[1] === 0)) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map(([t, v]) =>
    `${(((t - t0) / Math.max(1, t1 - t0)) * 290 + 5).toFixed(1)},${(95 - (v / max) * 85).toFixed(1)}`).join(" "));
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "5");
  label.setAttribute("y", "9");
  label.textContent = "max " + (max >= 10 ? max.toFixed(0) : max.toFixed(2));
  svg.append(line, label);
}

// ---- topics and streams ------------------------------------------------------------------

async function refreshTopics() {
  const { topics } = await api("/v1/topics");
  fill($("#topics-table tbody"), topics.map((t) => {
    const tr = document.createElement("tr");
    tr.className = "clickable";
    tr.dataset.topic = t.name;
    tr.append(cell(t.name), cell(t.length, "num"));
    tr.addEventListener("click", () => openTopic(t.name, t.length).catch((e) => showError(e.message)));
    if (t.name === state.topic) state.length = t.length;
    return tr;
  }));
}

function eventItem(e) {
  const li = document.createElement("li");
  const off = document.createElement("span");
  off.className = "off";
  off.textContent = e.offset;
  li.append(off, `${e.type} ${e.stream ? "[" + e.stream + "] " : ""}${JSON.stringify(e.data)}`);
  li.addEventListener("click", () => { $("#event-detail").textContent = JSON.stringify(e, null, 2); });
  return li;
}

async function openTopic(topic, length) {
  state.topic = topic;
  state.length = length;
  state.stream = null;
  state.from = Math.max(0, length - state.pageSize);
  $("#browser").hidden = false;
  $("#browser-topic").textContent = topic;
  $("#tail-list").replaceChildren();
  $("#tail-toggle").checked = false;
  stopTail();
  await showPage();
}

async function showPage() {
  const path = state.stream
    ? `/v1/streams/${encodeURIComponent(state.stream)}/events?from=${state.from}&limit=${state.pageSize}`
    : `/v1/topics/${encodeURIComponent(state.topic)}/events?from=${state.from}&limit=${state.pageSize}`;
  const page = await api(path);
  $("#events").replaceChildren(...page.events.map(eventItem));
  const last = page.events.length ? page.events[page.events.length - 1].offset : state.from;
  $("#page-range").textContent = !page.events.length ? "no events"
    : state.stream ? `stream ${state.stream}: its events ${state.from + 1} to ${state.from + page.events.length}`
    : `offsets ${state.from}..${last}`;
}

async function startTail(from = state.length) {
  stopTail();
  // EventSource sends no headers: with auth on, a short-lived token goes in the query.
  let query = `from=${from}`;
  if (state.token) {
    const { access_token } = await api("/v1/auth/stream-token", { method: "POST" });
    query += "&access_token=" + encodeURIComponent(access_token);
  }
  const source = new EventSource(`/v1/topics/${encodeURIComponent(state.topic)}/stream?${query}`);
  let next = from;
  source.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.offset === undefined) e.offset = Number(m.lastEventId);
    next = e.offset + 1;
    $("#tail-list").prepend(eventItem(e));
  };
  source.onerror = () => {
    showError("the live tail was interrupted; reconnecting");
    // The browser retries by itself, but not after an error status (an expired stream
    // token): then reopen with a fresh token from where the tail got to.
    if (source.readyState === EventSource.CLOSED && state.tail === source) {
      setTimeout(() => { if (state.tail === source) startTail(next).catch((err) => showError(err.message)); }, 1000);
    }
  };
  source.onopen = () => showError("");
  state.tail = source;
}

function stopTail() {
  if (state.tail) state.tail.close();
  state.tail = null;
}

// ---- uniq sets ------------------------------------------------------------------------------

async function refreshSets() {
  const { sets } = await api("/v1/uniq");
  fill($("#sets-table tbody"), sets.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.set = s.name;
    tr.append(cell(s.name), cell(s.topic), cell(s.normalize || "none"), cell(s.keys, "num keys"));
    return tr;
  }));
  const select = $("#uniq-set");
  const chosen = select.value;
  select.replaceChildren(...sets.map((s) => new Option(s.name, s.name)));
  if (chosen) select.value = chosen;
}

async function lookUp(event) {
  event.preventDefault();
  const set = encodeURIComponent($("#uniq-set").value);
  const key = encodeURIComponent($("#uniq-key").value.trim());
  const owner = $("#uniq-owner");
  try {
    const o = await api(`/v1/uniq/${set}/${key}`);
    // The key as the set normalized it: what the rule compares.
    owner.textContent = `${o.key}: ${o.owner} (since offset ${o.since_offset})`;
    owner.dataset.owner = o.owner;
  } catch (e) {
    // A free key's message names it normalized.
    owner.textContent = e.status === 404 ? `nobody (${e.message})` : e.message;
    owner.dataset.owner = "";
  }
  try {
    const h = await api(`/v1/uniq/${set}/${key}/history`);
    fill($("#uniq-history tbody"), h.history.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.owner), cell(r.claimed_offset, "num"), cell(r.released_offset, "num"));
      return tr;
    }));
  } catch (_) {
    fill($("#uniq-history tbody"), []);
  }
}

// ---- consumers ------------------------------------------------------------------------------

async function refreshConsumers() {
  const [{ consumers }, { topics }] = await Promise.all([api("/v1/consumers"), api("/v1/topics")]);
  const heads = new Map(topics.map((t) => [t.name, t.length]));
  const now = Date.now();
  fill($("#consumers-table tbody"), consumers.map((c) => {
    const head = c.topic ? heads.get(c.topic) || 0 : null;
    const lag = head === null ? null : Math.max(0, head - c.offset);
    const tr = document.createElement("tr");
    tr.dataset.consumer = c.consumer;
    const age = typeof c.reported_at === "number" ? Math.max(0, Math.round((now - c.reported_at) / 1000)) + " s ago" : null;
    tr.append(cell(c.consumer), cell(c.topic), cell(c.offset, "num"), cell(head, "num"), cell(lag, "num lag"),
      cell(c.breaker, "breaker-" + (c.breaker || "none")), cell(age, "num"));
    if (lag !== null) {
      const series = (state.lag[c.consumer] = (state.lag[c.consumer] || []).filter((p) => now - p[0] <= HISTORY_MS));
      series.push([now, lag]);
    }
    return tr;
  }));
  const [name, series] = Object.entries(state.lag)[0] || ["", []];
  $("#lag-caption").textContent = name ? `Lag of ${name} over time (events)` : "Lag over time (events)";
  chart($("#chart-lag"), series);
}

// ---- wiring ----------------------------------------------------------------------------------

async function refreshConflicts() {
  let conflicts;
  try {
    ({ conflicts } = await api("/v1/conflicts/recent"));
  } catch (e) {
    if (e.status !== 403) throw e;
    const tr = document.createElement("tr");
    tr.append(cell("the list of recent conflicts needs the admin role"));
    fill($("#recent-conflicts tbody"), [tr]);
    return;
  }
  fill($("#recent-conflicts tbody"), conflicts.slice(0, 10).map((c) => {
    const tr = document.createElement("tr");
    const on = c.set !== undefined ? `${c.set}: ${c.key}`
      : c.stream !== undefined ? `stream ${c.stream} (expected ${JSON.stringify(c.expected)}, at ${c.actual})`
      : c.message;
    tr.append(cell(new Date(c.at_ms).toLocaleTimeString()), cell(c.route), cell(c.error), cell(on));
    return tr;
  }));
}

const refreshers = {
  cluster: () => Promise.all([refreshCluster(), refreshMetrics(), refreshConflicts()]),
  topics: refreshTopics,
  uniq: refreshSets,
  consumers: refreshConsumers,
};

function show(view) {
  state.view = Object.hasOwn(refreshers, view) ? view : "cluster";
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + state.view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === state.view);
  tick();
}

// One refresh at a time: the next is scheduled when this one ends (a hung peer can make
// one take seconds).
async function tick() {
  try {
    await refreshers[state.view]();
    if (state.view !== "cluster") await refreshMetrics();
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

function init() {
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("uniqlog-token", state.token);
    $("#login").hidden = true;
    $("#logout").hidden = !state.token;
    tick();
  });
  $("#logout").hidden = !state.token;
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem("uniqlog-token");
    state.token = "";
    location.reload();
  });
  const page = (from) => { state.from = from; showPage().catch((err) => showError(err.message)); };
  $("#page-prev").addEventListener("click", () => page(Math.max(0, state.from - state.pageSize)));
  $("#page-next").addEventListener("click", () => page(state.from + state.pageSize));
  $("#tail-toggle").addEventListener("change", (e) => {
    if (e.target.checked) startTail().catch((err) => showError(err.message));
    else stopTail();
  });
  $("#stream-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.stream = $("#stream-name").value.trim() || null;
    state.from = 0;
    showPage().catch((err) => showError(err.message));
  });
  $("#uniq-form").addEventListener("submit", lookUp);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1) || "cluster");
  const loop = async () => {
    await tick();
    setTimeout(loop, 2000);
  };
  setTimeout(loop, 2000);
}

document.addEventListener("DOMContentLoaded", init);
