// cqrskit operations dashboard. Vanilla JS, no build step, no inline script (CSP: script-src 'self').
// It reads the JSON admin endpoints a script would read, polling them; every value is written
// with textContent, never as HTML, so event data and error messages cannot inject markup.
"use strict";

(function () {
  const POLL_MS = 1500;
  const REBUILD_POLL_MS = 700;
  const TREND_WINDOW_MS = 5 * 60 * 1000;
  const EVENTS_PAGE = 50;
  const STREAM_PAGE = 100;
  const KEY_STORAGE = "cqrskit.apiKey";
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // ---- state ------------------------------------------------------------------------------
  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let pollTimer = null;
  let authBlocked = false;
  let lastGood = null;
  const trends = new Map(); // projection -> [[time ms, lag events], ...] (last 5 minutes)
  const rows = new Map(); // projection -> {tr, cells...}
  const rebuilds = new Map(); // projection -> {state, applied, total, percent, eta_seconds, error}
  const rebuildTimers = new Map();
  const events = { after: null, back: [], next: null, head: null, loaded: false, request: 0, inflight: false };
  let deadShown = null; // the dead letters last rendered (JSON), so an unchanged list keeps its DOM
  const stream = { id: null, nextVersion: null };

  // ---- HTTP -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status; // 0: unreachable
    }
  }

  async function api(path, method) {
    const headers = { Accept: "application/json" };
    if (apiKey) headers["X-API-Key"] = apiKey;
    let response;
    try {
      response = await fetch(path, { method: method || "GET", headers, cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, "the API is unreachable");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const detail = (body && (body.detail || body.title)) || response.statusText;
      throw new ApiError(response.status, typeof detail === "string" ? detail : response.statusText);
    }
    return body;
  }

  function q(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== null && value !== undefined) search.set(name, String(value));
    }
    const text = search.toString();
    return text ? "?" + text : "";
  }

  const seg = encodeURIComponent;

  // ---- small DOM helpers ----------------------------------------------------------------
  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.className) node.className = o.className;
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.scope) node.scope = o.scope;
    if (o.attrs) for (const [k, v] of Object.entries(o.attrs)) node.setAttribute(k, v);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function button(label, onClick, className) {
    const node = el("button", { className, text: label, attrs: { type: "button" } });
    node.addEventListener("click", onClick);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function say(message) {
    $("status").textContent = message;
  }

  function fmt(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    return Number(n).toLocaleString("en-US", {
      maximumFractionDigits: digits === undefined ? 0 : digits,
      minimumFractionDigits: 0,
    });
  }

  function time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function sectionError(id, error) {
    const node = $(id);
    if (!error) {
      node.hidden = true;
      node.textContent = "";
      return;
    }
    node.textContent = "Could not load: " + (error.status ? error.status + " " : "") + error.message;
    node.hidden = false;
  }

  // ---- auth --------------------------------------------------------------------------------
  function needKey(error) {
    authBlocked = true;
    clearData();
    show($("dashboard"), false);
    show($("auth"), true);
    show($("forget-key"), Boolean(apiKey));
    let message;
    if (error.status === 403) {
      message = "This API key does not have the admin role: the dashboard needs an admin key.";
    } else if (apiKey) {
      message = "The API key was not accepted (" + error.message + "). Enter an admin API key.";
    } else {
      message = "Authentication is on: enter an API key with the admin role to see the dashboard.";
    }
    $("auth-message").textContent = message;
    say(error.status === 403 ? "Access denied (403)." : "An API key is needed (401).");
    $("api-key").focus();
  }

  function clearData() {
    for (const id of ["projections", "dead", "events", "stream-events"]) {
      $(id).tBodies[0].replaceChildren();
    }
    rows.clear();
    trends.clear();
    for (const id of ["c-rate", "c-total", "c-failed", "r-total", "r-5xx", "r-4xx", "head"]) {
      $(id).textContent = "–";
    }
    $("overall").textContent = "";
    show($("stream"), false);
    events.after = null;
    events.back = [];
    events.next = null;
    events.loaded = false;
    events.request += 1; // an answer still in flight is for the previous key: drop it
    deadShown = null;
  }

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    apiKey = value;
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    $("api-key").value = "";
    authBlocked = false;
    show($("auth"), false);
    say("Checking the key…");
    start();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    apiKey = "";
    show($("forget-key"), false);
    say("The API key was forgotten.");
    start();
  });

  // ---- polling ---------------------------------------------------------------------------
  function start() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
    tick();
  }

  async function tick() {
    pollTimer = null;
    const results = await Promise.allSettled([
      api("/admin/projections"),
      api("/admin/deadletters" + q({ status: "parked" })),
      api("/admin/stats"),
    ]);
    const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    const auth = errors.find((e) => e instanceof ApiError && (e.status === 401 || e.status === 403));
    if (auth) {
      needKey(auth);
      return; // no polling until a key is given
    }
    const unreachable = errors.length === results.length && errors.every((e) => e.status === 0 || e.status >= 500);
    if (unreachable) {
      const since = lastGood ? " since " + lastGood.toLocaleTimeString() : "";
      $("banner").textContent =
        "The API is unreachable" + since + " (" + errors[0].message + "); the values below may be stale. Retrying…";
      show($("banner"), true);
    } else {
      show($("banner"), false);
      lastGood = new Date();
      $("updated").textContent = lastGood.toLocaleTimeString();
      show($("dashboard"), true);
      show($("auth"), false);
      show($("forget-key"), Boolean(apiKey));
      if ($("status").textContent === "Loading…" || $("status").textContent === "Checking the key…") {
        say("Connected.");
      }
      const [projections, dead, stats] = results;
      if (projections.status === "fulfilled") renderProjections(projections.value);
      sectionError("projections-error", projections.status === "rejected" ? projections.reason : null);
      if (dead.status === "fulfilled") renderDead(dead.value);
      sectionError("dead-error", dead.status === "rejected" ? dead.reason : null);
      if (stats.status === "fulfilled") renderStats(stats.value);
      sectionError("counters-error", stats.status === "rejected" ? stats.reason : null);
      if (!events.loaded && !events.inflight) {
        loadEvents(null, false);
      } else if (tailing(projections)) {
        loadEvents(events.after, false); // on the last page and the log grew: show the new events
      }
    }
    pollTimer = setTimeout(tick, POLL_MS);
  }

  // Whether the event browser shows the log's last page and the head moved since: one page is
  // fetched again, never more (the log may hold millions of events).
  function tailing(projections) {
    if (!events.loaded || events.inflight || events.next || projections.status !== "fulfilled") return false;
    const head = projections.value && projections.value.head;
    return Boolean(head) && head !== events.head;
  }

  function refreshSoon() {
    if (authBlocked) return;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = setTimeout(tick, 50);
  }

  // ---- projections -----------------------------------------------------------------------
  function renderProjections(body) {
    $("head").textContent = body.head || "–";
    const items = Array.isArray(body.projections) ? body.projections : [];
    const overall = body.status || "ok";
    $("overall").replaceChildren(
      document.createTextNode("Overall: "),
      el("span", { className: "badge " + levelClass(overall), text: overall })
    );
    const tbody = $("projections").tBodies[0];
    const seen = new Set();
    const now = Date.now();
    for (const p of items) {
      seen.add(p.name);
      let row = rows.get(p.name);
      if (!row) {
        row = makeRow(p.name);
        rows.set(p.name, row);
      }
      tbody.append(row.tr); // keeps server order; moving an existing node keeps its focus state
      const trend = trends.get(p.name) || [];
      trend.push([now, Number(p.lag_events) || 0]);
      while (trend.length && trend[0][0] < now - TREND_WINDOW_MS) trend.shift();
      trends.set(p.name, trend);
      updateRow(row, p, trend, now);
      // A rebuild started elsewhere (CLI, another operator): follow it too.
      const known = rebuilds.get(p.name);
      if (p.rebuild && p.state === "rebuilding" && !rebuildTimers.has(p.name) && !(known && known.state === "running")) {
        rebuilds.set(p.name, Object.assign({ state: "running" }, p.rebuild));
        trackRebuild(p.name);
      }
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    show($("projections-empty"), items.length === 0);
  }

  function levelClass(level) {
    if (level === "fail" || level === "failing") return "fail";
    if (level === "warn") return "warn";
    return "ok";
  }

  function makeRow(name) {
    const tr = el("tr", { attrs: { "data-projection": name } });
    const cells = {
      name: el("th", { scope: "row", text: name }),
      state: el("td", { className: "state" }),
      position: el("td", { className: "mono position" }),
      lagEvents: el("td", { className: "num lag-events" }),
      lagSeconds: el("td", { className: "num lag-seconds" }),
      throughput: el("td", { className: "num throughput" }),
      trend: el("td", { className: "trend" }),
      parked: el("td", { className: "num parked" }),
      error: el("td", { className: "error-text last-error" }),
      rebuild: el("td"),
    };
    const rebuildButton = button("Rebuild", () => startRebuild(name), "secondary");
    rebuildButton.setAttribute("aria-label", "Rebuild " + name);
    const progress = el("progress", { attrs: { max: "100", "aria-label": "Rebuild progress of " + name } });
    progress.hidden = true;
    const rebuildText = el("span", { className: "rebuild-text", attrs: { "data-testid": "rebuild-text" } });
    cells.rebuild.append(el("div", { className: "rebuild" }, rebuildButton, progress, rebuildText));
    tr.append(
      cells.name, cells.state, cells.position, cells.lagEvents, cells.lagSeconds,
      cells.throughput, cells.trend, cells.parked, cells.error, cells.rebuild
    );
    return { tr, cells, rebuildButton, progress, rebuildText, spark: null };
  }

  function updateRow(row, p, trend, now) {
    const c = row.cells;
    const level = levelClass(p.level);
    const parked = Number(p.parked) || 0;
    const flagged = level !== "ok" || parked > 0 || p.state === "failed" || p.state === "stalled";
    row.tr.className = flagged ? (level === "fail" || p.state === "failed" ? "flag-fail" : "flag-warn") : "";
    row.tr.dataset.flagged = flagged ? "true" : "false";
    const badge = el("span", { className: "badge " + level, text: p.state || "unknown" });
    const parts = [badge];
    if (flagged) {
      const why = [];
      if (p.state === "failed") why.push("handler failing");
      if (p.state === "stalled") why.push("stalled");
      if (parked > 0) why.push(parked + " parked");
      if (level !== "ok" && !why.length) why.push("lag over threshold");
      parts.push(el("span", { className: "attention", text: "Needs attention: " + why.join(", ") }));
    }
    c.state.replaceChildren(...parts);
    c.position.textContent = p.position || "–";
    c.lagEvents.textContent = fmt(p.lag_events);
    c.lagSeconds.textContent = fmt(p.lag_seconds, 1);
    c.throughput.textContent = fmt(p.throughput, 1);
    c.parked.textContent = fmt(parked);
    let error = p.last_error || "";
    if (p.failing_position) error += (error ? " " : "") + "(at " + p.failing_position + ")";
    if (p.blocked_by) error += (error ? " " : "") + "Blocked by a long transaction: " + JSON.stringify(p.blocked_by);
    c.error.textContent = error || "–";
    drawTrend(row, p.name, trend, now);
    renderRebuild(p.name);
  }

  function drawTrend(row, name, trend, now) {
    const width = 120;
    const height = 28;
    if (!row.spark) {
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "spark");
      svg.setAttribute("width", String(width));
      svg.setAttribute("height", String(height));
      svg.setAttribute("viewBox", "0 0 " + width + " " + height);
      svg.setAttribute("role", "img");
      const title = document.createElementNS(SVG, "title");
      const base = document.createElementNS(SVG, "line");
      base.setAttribute("x1", "0");
      base.setAttribute("x2", String(width));
      base.setAttribute("y1", String(height - 1));
      base.setAttribute("y2", String(height - 1));
      const line = document.createElementNS(SVG, "polyline");
      svg.append(title, base, line);
      row.cells.trend.append(svg);
      row.spark = { svg, title, line };
    }
    const max = Math.max(1, ...trend.map((s) => s[1]));
    // The x axis spans what was sampled so far (at least 30 s), up to the 5-minute window.
    const span = Math.max(30000, Math.min(TREND_WINDOW_MS, trend.length ? now - trend[0][0] : 0));
    const points = trend.map(([t, lag]) => {
      const x = width - ((now - t) / span) * width;
      const y = height - 2 - (lag / max) * (height - 4);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    row.spark.line.setAttribute("points", points.join(" "));
    const latest = trend.length ? trend[trend.length - 1][1] : 0;
    const minutes = span / 60000;
    const over = minutes >= 1 ? fmt(minutes, 1) + " minutes" : fmt(span / 1000) + " seconds";
    const label = "Lag of " + name + " over the last " + over + ": now " + fmt(latest) + " events, peak " +
      fmt(Math.max(0, ...trend.map((s) => s[1]))) + " events";
    row.spark.title.textContent = label;
    row.spark.svg.setAttribute("aria-label", label);
  }

  // ---- rebuilds ----------------------------------------------------------------------------
  async function startRebuild(name) {
    const row = rows.get(name);
    if (row) row.rebuildButton.disabled = true;
    try {
      await api("/admin/projections/" + seg(name) + "/rebuild", "POST");
      say("Rebuild of " + name + " started.");
    } catch (error) {
      if (handleActionError(error)) return;
      if (error.status !== 409) {
        say("Could not start the rebuild of " + name + ": " + error.message);
        if (row) row.rebuildButton.disabled = false;
        return;
      }
      say("A rebuild of " + name + " is already running.");
    }
    rebuilds.set(name, { state: "running", percent: 0 });
    renderRebuild(name);
    trackRebuild(name);
  }

  function trackRebuild(name) {
    if (rebuildTimers.has(name)) return;
    const poll = async () => {
      let status;
      try {
        status = await api("/admin/projections/" + seg(name) + "/rebuild");
      } catch (error) {
        if (handleActionError(error)) {
          rebuildTimers.delete(name);
          return;
        }
        rebuildTimers.set(name, setTimeout(poll, REBUILD_POLL_MS * 2));
        return;
      }
      rebuilds.set(name, status);
      renderRebuild(name);
      if (status.state === "running") {
        rebuildTimers.set(name, setTimeout(poll, REBUILD_POLL_MS));
        return;
      }
      rebuildTimers.delete(name);
      if (status.state === "done") say("Rebuild of " + name + " done: " + fmt(status.applied) + " events replayed.");
      if (status.state === "failed") say("Rebuild of " + name + " failed: " + (status.error || "unknown error"));
      refreshSoon();
    };
    rebuildTimers.set(name, setTimeout(poll, 0));
  }

  function renderRebuild(name) {
    const row = rows.get(name);
    const status = rebuilds.get(name);
    if (!row) return;
    if (!status || status.state === "idle") {
      row.progress.hidden = true;
      row.rebuildText.textContent = "";
      row.rebuildButton.disabled = false;
      return;
    }
    const percent = status.state === "done" ? 100 : Math.max(0, Math.min(100, Number(status.percent) || 0));
    row.progress.hidden = false;
    row.progress.value = percent;
    row.progress.setAttribute("aria-valuetext", percent.toFixed(0) + "%");
    let text;
    if (status.state === "running") {
      text = "Running: " + percent.toFixed(0) + "%";
      if (status.total) text += " (" + fmt(status.applied) + " of " + fmt(status.total) + ")";
      if (status.eta_seconds !== null && status.eta_seconds !== undefined) text += ", about " + fmt(status.eta_seconds, 0) + " s left";
    } else if (status.state === "done") {
      text = "Rebuild done (" + fmt(status.applied) + " events)";
    } else {
      text = "Rebuild failed: " + (status.error || "unknown error");
    }
    row.rebuildText.textContent = text;
    row.rebuildText.dataset.state = status.state;
    row.rebuildButton.disabled = status.state === "running";
  }

  // ---- dead letters ------------------------------------------------------------------------
  function renderDead(body) {
    const items = Array.isArray(body.items) ? body.items : [];
    const signature = JSON.stringify(items);
    if (signature === deadShown) return; // unchanged: keep the rows (and a pending click) as they are
    deadShown = signature;
    const tbody = $("dead").tBodies[0];
    const focused = document.activeElement && tbody.contains(document.activeElement)
      ? document.activeElement.dataset.key : null;
    const fresh = items.map((d) => {
      const retry = button("Retry", () => settle(d, "retry"));
      retry.setAttribute("aria-label", "Retry stream " + d.stream_id + " in " + d.projection);
      retry.dataset.key = "retry:" + d.id;
      const skip = button("Skip", () => settle(d, "skip"), "secondary");
      skip.setAttribute("aria-label", "Skip event " + d.stream_id + " version " + d.version + " in " + d.projection);
      skip.dataset.key = "skip:" + d.id;
      return el("tr", { attrs: { "data-stream": d.stream_id, "data-projection": d.projection } },
        el("td", { text: d.projection }),
        el("td", {}, streamLink(d.stream_id)),
        el("td", { className: "num", text: d.version }),
        el("td", { className: "mono", text: d.event_type }),
        el("td", { className: "error-text", text: d.error || "–" }),
        el("td", { className: "num", text: d.attempts }),
        el("td", { text: time(d.parked_at) }),
        el("td", {}, el("div", { className: "actions" }, retry, skip))
      );
    });
    tbody.replaceChildren(...fresh);
    if (focused) {
      const again = tbody.querySelector('[data-key="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
    show($("dead"), items.length > 0);
    show($("dead-empty"), items.length === 0);
  }

  async function settle(d, action) {
    const path = "/admin/deadletters/" + seg(d.projection) + "/" + seg(d.stream_id) + "/" + action +
      (action === "skip" ? q({ id: d.id }) : "");
    try {
      const result = await api(path, "POST");
      if (action === "retry") {
        say(result.error
          ? "Retry of stream " + d.stream_id + " in " + d.projection + " still fails: " + result.error
          : "Retried stream " + d.stream_id + " in " + d.projection + ": " + result.applied + " applied.");
      } else {
        say("Skipped " + result.skipped + " event(s) of stream " + d.stream_id + " in " + d.projection + ".");
      }
    } catch (error) {
      if (handleActionError(error)) return;
      say("Could not " + action + " stream " + d.stream_id + ": " + error.message);
    }
    refreshSoon();
  }

  // Auth failures and an unreachable API in an action: say so; true when handled.
  function handleActionError(error) {
    if (error.status === 401 || error.status === 403) {
      needKey(error);
      return true;
    }
    if (error.status === 0) {
      say("The API is unreachable.");
      return true;
    }
    return false;
  }

  // ---- counters ----------------------------------------------------------------------------
  function renderStats(body) {
    const commands = body.commands || {};
    const requests = body.requests || {};
    $("c-rate").textContent = fmt(commands.per_second, 2);
    $("c-total").textContent = fmt(commands.total);
    $("c-failed").textContent = fmt(commands.failed);
    $("r-total").textContent = fmt(requests.total);
    $("r-5xx").textContent = fmt(requests.errors_5xx);
    $("r-4xx").textContent = fmt(requests.errors_4xx);
  }

  // ---- event browser -------------------------------------------------------------------
  async function loadEvents(after, remember) {
    const request = ++events.request; // only the latest request may draw the page
    let body;
    events.inflight = true;
    try {
      body = await api("/admin/events" + q({ after, limit: EVENTS_PAGE }));
    } catch (error) {
      events.inflight = false;
      if (request !== events.request) return;
      if (handleActionError(error)) return;
      sectionError("events-error", error);
      return;
    }
    events.inflight = false;
    if (request !== events.request) return;
    sectionError("events-error", null);
    events.loaded = true;
    if (remember) events.back.push(events.after);
    events.after = after;
    events.next = body.next || null;
    events.head = body.head || null;
    const items = Array.isArray(body.items) ? body.items : [];
    $("events").tBodies[0].replaceChildren(...items.map((e) =>
      el("tr", { attrs: { "data-position": e.position } },
        el("td", { className: "mono", text: e.position }),
        el("td", {}, streamLink(e.stream_id)),
        el("td", { className: "num", text: e.version }),
        el("td", { className: "mono", text: e.event_type }),
        el("td", { text: time(e.recorded_at) }),
        el("td", { text: (e.metadata && e.metadata.user_id) || "–" })
      )));
    show($("events"), items.length > 0);
    show($("events-empty"), items.length === 0 && !after);
    const page = events.back.length + 1;
    $("events-page").textContent = "Page " + page +
      (items.length ? ": positions " + items[0].position + " to " + items[items.length - 1].position : ": no events") +
      (body.head ? " (log head " + body.head + ")" : "");
    $("events-prev").disabled = events.back.length === 0;
    $("events-first").disabled = events.back.length === 0;
    $("events-next").disabled = !events.next;
  }

  $("events-next").addEventListener("click", () => {
    if (events.next) loadEvents(events.next, true);
  });
  $("events-prev").addEventListener("click", () => {
    if (!events.back.length) return;
    const previous = events.back.pop();
    loadEvents(previous, false);
  });
  $("events-first").addEventListener("click", () => {
    events.back = [];
    loadEvents(null, false);
  });
  $("events-refresh").addEventListener("click", () => loadEvents(events.after, false));

  // ---- one stream's history --------------------------------------------------------------
  function streamLink(id) {
    const link = button(id, () => openStream(id), "link");
    link.setAttribute("aria-label", "Show the history of stream " + id);
    return link;
  }

  async function openStream(id) {
    stream.id = id;
    stream.nextVersion = null;
    $("stream-id").textContent = id;
    $("stream-events").tBodies[0].replaceChildren();
    show($("stream"), true);
    await loadStream(0);
    $("stream-heading").focus();
  }

  async function loadStream(afterVersion) {
    const id = stream.id;
    let body;
    try {
      body = await api("/admin/streams/" + seg(id) + "/events" + q({ after_version: afterVersion, limit: STREAM_PAGE }));
    } catch (error) {
      if (handleActionError(error)) return;
      sectionError("stream-error", error.status === 404 ? new ApiError(404, "no stream " + id) : error);
      return;
    }
    if (stream.id !== id) return; // another stream was opened meanwhile
    sectionError("stream-error", null);
    const items = Array.isArray(body.items) ? body.items : [];
    $("stream-events").tBodies[0].append(...items.map((e) => {
      const m = e.metadata || {};
      const data = el("details", {},
        el("summary", { text: "data" }),
        el("pre", { text: JSON.stringify(e.data, null, 2) }));
      return el("tr", { attrs: { "data-version": e.version } },
        el("td", { className: "num", text: e.version }),
        el("td", { className: "mono", text: e.event_type }),
        el("td", { text: time(e.occurred_at) }),
        el("td", { className: "user", text: m.user_id || "–" }),
        el("td", { className: "mono causation", text: m.causation_id || "–" }),
        el("td", { className: "mono correlation", text: m.correlation_id || "–" }),
        el("td", {}, data));
    }));
    stream.nextVersion = body.next_version === undefined ? null : body.next_version;
    show($("stream-more"), stream.nextVersion !== null);
  }

  $("stream-more").addEventListener("click", () => {
    if (stream.nextVersion !== null) loadStream(stream.nextVersion);
  });
  $("stream-close").addEventListener("click", () => {
    show($("stream"), false);
    stream.id = null;
    $("events-heading").focus();
  });

  start();
})();
