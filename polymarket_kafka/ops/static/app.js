// The operator's dashboard: reads /api/markets, /api/events and /api/health, and re-reads
// them when /api/live (server-sent events) says something changed, or every 5 s when the
// live channel is unavailable. Every string from the server is rendered with textContent
// (market questions come from Polymarket: untrusted); nothing here uses innerHTML.
"use strict";

(function () {
  const POLL_MS = 5000;
  const LIVE_RETRY_MS = 60000; // in polling mode, try the live channel again after this
  const LIVE_MAX_ERRORS = 3; // consecutive errors without a successful open: fall back
  const EVENT_LIMIT = 50;
  const SVG = "http://www.w3.org/2000/svg";
  const KEY_PARAMS = [["move.abs", "move"], ["window", "window"], ["cooldown", "cooldown"],
    ["volatility.z", "z"]];

  const state = {
    markets: [], sort: { key: "question", dir: 1 }, open: new Set(),
    mode: "connecting", source: null, errors: 0, pollTimer: null, retryTimer: null,
    busy: false, again: false, skew: 0, categories: "",
  };
  const $ = (id) => document.getElementById(id);

  // --- small helpers ------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes: never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pct = (p) => (isNum(p) ? (p * 100).toFixed(1) + "%" : "—");
  const points = (d) => (isNum(d) ? (d >= 0 ? "+" : "−") + Math.abs(d * 100).toFixed(1) + " pt" : "—");

  function money(v) {
    if (!isNum(v)) return "—";
    for (const [div, unit] of [[1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
      if (Math.abs(v) >= div) return "$" + (v / div).toFixed(1) + unit;
    }
    return "$" + v.toFixed(0);
  }

  /** "2024-11-06 05:00:00Z" (UTC: the same on every operator's screen). */
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function ago(seconds) {
    if (!isNum(seconds)) return "";
    const s = Math.max(0, seconds);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  // Relative to the server's clock (`generated_at`): the demo's clock runs in 2024.
  const sinceNow = (iso) => (iso ? ago((Date.now() + state.skew - new Date(iso).getTime()) / 1000) : "");

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  // --- health ---------------------------------------------------------------------------

  function renderHealth(health) {
    const ready = $("ready");
    ready.textContent = health.ready ? "ready" : "not ready";
    ready.className = "badge " + (health.ready ? "ok" : "fail");
    const items = Object.entries(health.components || {}).map(([name, c]) => {
      const ok = c.status === "ok";
      const extra = Object.entries(c)
        .filter(([k, v]) => !["status", "detail", "since"].includes(k) && v !== null)
        .map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v));
      return el("li", { class: "component " + (ok ? "ok" : "fail"), "data-name": name,
        "data-status": c.status, title: extra.join("\n") || null },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("strong", {}, name), " ",
        el("span", { class: "status" }, ok ? "up" : "down"),
        c.since ? el("span", { class: "since" }, ` since ${when(c.since)} (${sinceNow(c.since)})`) : null,
        c.detail ? el("div", { class: "detail" }, c.detail) : null);
    });
    $("health").replaceChildren(...items);

    const feed = health.feed || {};
    const stream = feed.stream;
    const rows = [
      ["Rules", (feed.rules_version || "—") +
        (feed.rules_loaded_at ? ", loaded " + when(feed.rules_loaded_at) : "")],
      ["Last poll", feed.last_poll_at ? when(feed.last_poll_at) : "—"],
      ["Events published", feed.events_published],
      ["In flight", feed.events_in_flight],
      ["Dead-lettered", feed.events_dead_lettered],
      ["Stream", stream ? stream.connections_up + "/" + stream.connections + " connections up, " +
        stream.reconnects + " reconnects" : "off (REST polling only)"],
      ["REST fallback", stream ? stream.rest_fallback_markets + " markets" : "—"],
    ];
    const group = feed.group;
    if (group) {
      rows.push(
        ["Instance", group.instance + " in group " + group.group_id],
        ["Owns partitions", (group.owned.length ? group.owned.join(", ") : "none") +
          " of " + group.partitions +
          (group.restoring.length ? " (restoring " + group.restoring.join(", ") + ")" : "")],
      );
    }
    $("feed").replaceChildren(...rows.flatMap(([k, v]) => [
      el("dt", {}, k),
      el("dd", { class: k === "Dead-lettered" && v > 0 ? "fail" : null }, v === undefined || v === null ? "—" : v),
    ]));
  }

  // --- markets --------------------------------------------------------------------------

  function sparkline(spark, move) {
    const w = 120, h = 28, pad = 2;
    const box = svg("svg", { class: "spark " + (move > 0 ? "up" : move < 0 ? "down" : "flat"),
      width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
    const pts = (spark || []).filter((p) => isNum(p[0]) && isNum(p[1]));
    const label = pts.length
      ? `YES price, ${pts.length} points, ${pct(pts[0][1])} to ${pct(pts[pts.length - 1][1])}`
      : "no prices yet";
    box.setAttribute("aria-label", label);
    const title = svg("title", {});
    title.textContent = label;
    box.append(title);
    if (!pts.length) return box;
    const t0 = pts[0][0], t1 = pts[pts.length - 1][0];
    let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
    if (hi - lo < 0.02) { const mid = (hi + lo) / 2; lo = mid - 0.01; hi = mid + 0.01; }
    const x = (t) => (t1 > t0 ? pad + ((t - t0) / (t1 - t0)) * (w - 2 * pad) : w / 2);
    const y = (p) => pad + (1 - (p - lo) / (hi - lo)) * (h - 2 * pad);
    const coords = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    box.append(svg("polyline", { points: coords.join(" ") }));
    const last = pts[pts.length - 1];
    box.append(svg("circle", { cx: x(last[0]).toFixed(1), cy: y(last[1]).toFixed(1), r: 2 }));
    return box;
  }

  function thresholds(rules) {
    if (!rules) return el("td", { class: "muted" }, "—");
    const params = rules.params || {};
    const all = Object.entries(params).map(([k, v]) => k + " = " + v);
    const tip = `rule ${rules.rule_id}, rules ${rules.rules_version}\n` + all.join("\n");
    const shown = KEY_PARAMS.filter(([k]) => k in params)
      .map(([k, short]) => el("span", { class: "kv", title: k }, short + " ", el("b", {}, params[k])));
    const list = Object.entries(params).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]);
    const details = el("details", {}, el("summary", {}, "all"), el("dl", { class: "params" }, list));
    return el("td", { class: "thresholds", title: tip }, shown, details);
  }

  function marketRow(m) {
    const spread = isNum(m.spread) ? m.spread.toFixed(3) : "?";
    const marks = [
      m.stale && el("span", { class: "mark stale", title: "last price " + ago(m.age_seconds) }, "stale"),
      m.thin_book && el("span", { class: "mark thin", title: `spread ${spread} over watch.max_spread` },
        "thin book"),
      m.closed && el("span", { class: "mark closed" }, m.resolution ? "closed: " + m.resolution : "closed"),
    ];
    const tier = m.rules && m.rules.tier;
    const classes = ["market", m.stale && "is-stale", m.thin_book && "is-thin", m.closed && "is-closed"];
    const row = el("tr", { id: "market-" + m.market_id, class: classes.filter(Boolean).join(" "),
      "data-market-id": m.market_id, tabindex: "-1" },
      el("td", { class: "question" },
        el("div", { class: "q", title: m.market_id }, m.question || "(no question)"),
        el("div", { class: "id" }, m.market_id), marks),
      el("td", { title: (m.tags || []).join(", ") || null }, m.category || "—"),
      el("td", { title: "liquidity " + money(m.liquidity) + ", volume " + money(m.volume) },
        tier || "—", el("div", { class: "muted small" }, money(m.liquidity))),
      el("td", { class: "num price" }, pct(m.yes_price)),
      el("td", { class: "spark-cell" }, sparkline(m.spark, m.move)),
      el("td", { class: "num move " + (m.move > 0 ? "up" : m.move < 0 ? "down" : "") }, points(m.move)),
      thresholds(m.rules),
      el("td", { class: "updated", title: m.updated_at },
        el("span", { class: "badge src " + m.source, title: m.source === "ws" ? "market channel" : "REST poll" },
          m.source),
        " ", ago(m.age_seconds),
        el("div", { class: "muted small" }, when(m.updated_at)),
        m.events ? el("div", { class: "muted small" }, `${m.events} event${m.events > 1 ? "s" : ""}`) : null),
    );
    const details = row.querySelector("details");
    if (details) {
      details.open = state.open.has(m.market_id);
      details.addEventListener("toggle", () => {
        if (details.open) state.open.add(m.market_id); else state.open.delete(m.market_id);
      });
    }
    if (location.hash === "#" + row.id) row.classList.add("highlight");
    return row;
  }

  function sortValue(m, key) {
    if (key === "tier") return (m.rules && m.rules.tier) || "";
    if (key === "absmove") return Math.abs(m.move || 0);
    const v = m[key];
    return typeof v === "string" ? v.toLowerCase() : isNum(v) ? v : "";
  }

  function visibleMarkets() {
    const text = $("filter-text").value.trim().toLowerCase();
    const category = $("filter-category").value;
    const staleOnly = $("filter-stale").checked;
    const { key, dir } = state.sort;
    return state.markets
      .filter((m) => !staleOnly || m.stale)
      .filter((m) => !category || (m.category || "") === category)
      .filter((m) => !text || [m.question, m.market_id, m.category, ...(m.tags || [])]
        .some((s) => typeof s === "string" && s.toLowerCase().includes(text)))
      .sort((a, b) => {
        const va = sortValue(a, key), vb = sortValue(b, key);
        return (va < vb ? -1 : va > vb ? 1 : 0) * dir || (a.market_id < b.market_id ? -1 : 1);
      });
  }

  function renderMarkets() {
    const select = $("filter-category");
    const categories = [...new Set(state.markets.map((m) => m.category || ""))].filter(Boolean).sort();
    if (JSON.stringify(categories) !== state.categories) { // rebuilt only when they change
      state.categories = JSON.stringify(categories);
      const chosen = select.value;
      select.replaceChildren(el("option", { value: "" }, "all"),
        ...categories.map((c) => el("option", { value: c }, c)));
      select.value = categories.includes(chosen) ? chosen : "";
    }

    const rows = visibleMarkets().map(marketRow);
    document.querySelector("#markets tbody").replaceChildren(...rows);
    $("no-markets").hidden = rows.length > 0;
    $("market-count").textContent = `(${rows.length} of ${state.markets.length})`;
    for (const th of document.querySelectorAll("#markets th[data-sort]")) {
      const on = th.dataset.sort === state.sort.key;
      if (on) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    $("sort-moved").setAttribute("aria-pressed", String(state.sort.key === "absmove"));
  }

  // --- events ---------------------------------------------------------------------------

  function eventItem(e) {
    const up = e.direction === "toward_yes";
    const link = el("a", { href: "#market-" + e.market_id, title: e.market_id }, e.question || e.market_id);
    const gap = isNum(e.gap_seconds) ? "after a gap of " + ago(e.gap_seconds).replace(" ago", "") : null;
    return el("li", { class: "event " + (up ? "up" : "down"), "data-event-id": e.event_id,
      "data-market-id": e.market_id },
      el("span", { class: "arrow", role: "img", "aria-label": up ? "toward yes" : "toward no" }, up ? "▲" : "▼"),
      el("div", { class: "body" }, link,
        el("div", { class: "facts" },
          el("span", { class: "prices" }, pct(e.baseline_yes_price) + " → " + pct(e.yes_price)),
          " ", el("span", { class: "rule" }, e.rule),
          e.severity ? el("span", { class: "badge sev " + e.severity }, e.severity) : null,
          e.final ? el("span", { class: "badge final" }, "final" + (e.resolution ? ": " + e.resolution : "")) : null,
          e.catch_up ? el("span", { class: "badge catchup", title: gap }, "catch-up") : null,
          e.price_source ? el("span", { class: "badge src " + e.price_source }, e.price_source) : null,
          el("time", { datetime: e.timestamp, class: "muted" }, when(e.timestamp)))));
  }

  function renderEvents(events) {
    $("events").replaceChildren(...events.map(eventItem));
    $("no-events").hidden = events.length > 0;
  }

  /** Follow an event's link to its market row: show it (even if filtered out), flash it. */
  function showMarketFromHash() {
    const match = /^#market-(.+)$/.exec(location.hash);
    if (!match) return;
    const id = decodeURIComponent(match[1]);
    const hidden = !visibleMarkets().some((m) => m.market_id === id);
    if (hidden && state.markets.some((m) => m.market_id === id)) {
      $("filter-text").value = ""; $("filter-category").value = ""; $("filter-stale").checked = false;
      renderMarkets();
    }
    for (const old of document.querySelectorAll("tr.market.highlight")) old.classList.remove("highlight");
    const row = $("market-" + id);
    if (!row) return;
    row.classList.add("highlight");
    row.scrollIntoView({ block: "center" });
    row.focus({ preventScroll: true });
  }

  // --- data and the live channel --------------------------------------------------------

  async function refresh() {
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    try {
      const [markets, events, health] = await Promise.allSettled([
        getJSON("/api/markets"), getJSON("/api/events?limit=" + EVENT_LIMIT), getJSON("/api/health")]);
      if (markets.status === "fulfilled") {
        const serverNow = Date.parse(markets.value.generated_at);
        state.skew = Number.isNaN(serverNow) ? 0 : serverNow - Date.now();
        state.markets = markets.value.markets || [];
        renderMarkets();
      }
      if (events.status === "fulfilled") renderEvents(events.value.events || []);
      if (health.status === "fulfilled") renderHealth(health.value);
      const failed = [markets, events, health].filter((r) => r.status === "rejected");
      $("error").hidden = failed.length === 0;
      $("error").textContent = failed.length ? "Cannot read the server: " + failed[0].reason.message : "";
      $("refreshed").textContent = "updated " + new Date().toISOString().slice(11, 19) + "Z";
    } finally {
      state.busy = false;
      if (state.again) { state.again = false; refresh(); }
    }
  }

  function setMode(mode) {
    state.mode = mode;
    const live = $("live");
    live.textContent = mode;
    live.dataset.mode = mode;
    live.className = "badge " + (mode === "live" ? "ok" : "warn");
  }

  function startPolling() {
    if (state.source) { state.source.close(); state.source = null; }
    setMode("polling");
    clearInterval(state.pollTimer);
    state.pollTimer = setInterval(refresh, POLL_MS);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(startLive, LIVE_RETRY_MS);
  }

  function startLive() {
    if (typeof EventSource !== "function") { startPolling(); return; }
    state.errors = 0;
    const source = new EventSource("/api/live");
    state.source = source;
    source.addEventListener("open", () => {
      state.errors = 0;
      clearInterval(state.pollTimer); clearTimeout(state.retryTimer);
      setMode("live");
      refresh(); // anything missed while reconnecting
    });
    source.addEventListener("update", () => refresh());
    source.addEventListener("error", () => {
      // The server ends every stream after ~30 s and the browser reconnects: one error is
      // normal. A stream refused for good (CLOSED), or failing again and again, is not.
      state.errors += 1;
      if (source.readyState === EventSource.CLOSED || state.errors >= LIVE_MAX_ERRORS) startPolling();
      else if (state.errors > 1 && state.mode === "live") setMode("reconnecting");
    });
  }

  function init() {
    for (const th of document.querySelectorAll("#markets th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.sort;
        // A new column sorts text A→Z and the latest update first; numbers largest first.
        const ascending = ["question", "category", "tier", "age_seconds"].includes(key);
        state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: ascending ? 1 : -1 };
        renderMarkets();
      });
    }
    $("sort-moved").addEventListener("click", () => {
      state.sort = state.sort.key === "absmove" ? { key: "question", dir: 1 } : { key: "absmove", dir: -1 };
      renderMarkets();
    });
    for (const id of ["filter-text", "filter-category", "filter-stale"]) {
      $(id).addEventListener(id === "filter-text" ? "input" : "change", renderMarkets);
    }
    window.addEventListener("hashchange", showMarketFromHash);
    $("events").addEventListener("click", (event) => {
      const link = event.target.closest("a[href^='#market-']");
      if (link && link.getAttribute("href") === location.hash) showMarketFromHash(); // no hashchange
    });
    refresh().then(showMarketFromHash);
    startLive();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
