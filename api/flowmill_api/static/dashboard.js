// flowmill dashboard: plain JavaScript, no build step, no external resources.
// It reads the same REST endpoints as any client and follows a table over Server-Sent
// Events. window.flowmillDashboard.snapshot() exposes what the charts show (for tests).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const apiKey = params.get("api_key");
  const SERIES_LENGTH = 30;
  const TOP_N = 10;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    tables: [],
    table: null,
    agg: null,
    current: null, // {start, end, rows: Map(key -> values)}
    seriesKey: params.get("key"),
    series: [], // [{start, end, values}], oldest first
    entries: new Map(), // key -> {updated, value}
    updates: 0,
    connected: false,
    source: null,
  };

  const $ = (id) => document.getElementById(id);

  async function api(path) {
    const headers = apiKey ? { "X-API-Key": apiKey } : {};
    const response = await fetch(path, { headers });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  const enc = encodeURIComponent;
  const tableBase = (t) => `/pipelines/${enc(t.pipeline)}/tables/${enc(t.name)}`;

  function setStatus(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${cls || ""}`;
  }

  function showMessage(text) {
    const el = $("message");
    el.textContent = text || "";
    el.hidden = !text;
  }

  const fmtTime = (ms) => new Date(ms).toISOString().slice(11, 19);
  const fmtNum = (v) =>
    v === null || v === undefined ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(2);

  // ---- setup ------------------------------------------------------------------------

  async function init() {
    let listing;
    try {
      listing = await api("/pipelines");
    } catch (err) {
      setStatus("API unreachable", "down");
      showMessage(String(err));
      return;
    }
    for (const p of listing.pipelines) for (const t of p.tables) state.tables.push(t);
    const select = $("table");
    for (const t of state.tables) {
      const option = document.createElement("option");
      option.value = `${t.pipeline}/${t.name}`;
      option.textContent = `${t.pipeline} / ${t.name} (${t.kind})`;
      select.appendChild(option);
    }
    if (!state.tables.length) {
      showMessage("No tables: the pipelines served here have no Redis sinks.");
      setStatus("idle");
      return;
    }
    const wanted = params.get("pipeline") && params.get("table")
      ? `${params.get("pipeline")}/${params.get("table")}` : select.value;
    select.value = wanted;
    select.addEventListener("change", () => selectTable(select.value, null));
    $("agg").addEventListener("change", () => {
      state.agg = $("agg").value;
      reloadWindows();
    });
    await selectTable(select.value, params.get("agg"));
  }

  async function selectTable(id, agg) {
    const t = state.tables.find((x) => `${x.pipeline}/${x.name}` === id) || state.tables[0];
    state.table = t;
    state.current = null;
    state.series = [];
    state.entries = new Map();
    state.connected = false;
    if (state.source) state.source.close();
    $("window-view").hidden = t.kind !== "window";
    $("latest-view").hidden = t.kind !== "latest";
    $("agg-label").hidden = t.kind !== "window";
    if (t.kind === "window") {
      const select = $("agg");
      select.innerHTML = "";
      for (const a of t.aggregates) {
        const option = document.createElement("option");
        option.value = a.name;
        option.textContent = `${a.name} (${a.op}${a.field ? " " + a.field : ""})`;
        select.appendChild(option);
      }
      state.agg = t.aggregates.some((a) => a.name === agg) ? agg : t.aggregates[0].name;
      select.value = state.agg;
      await reloadWindows();
    } else {
      await loadEntries();
    }
    connect();
  }

  // ---- window tables -----------------------------------------------------------------

  async function reloadWindows() {
    const t = state.table;
    const top = await api(`${tableBase(t)}/windows/current/top?by=${enc(state.agg)}&n=100`);
    state.current = top
      ? { start: top.start, end: top.end, rows: new Map(top.keys.map((k) => [k.key, k.values])) }
      : null;
    if (!state.seriesKey || (top && !top.keys.some((k) => k.key === state.seriesKey))) {
      state.seriesKey = top && top.keys.length ? top.keys[0].key : state.seriesKey;
    }
    await loadSeries();
    renderWindows();
  }

  async function loadSeries() {
    state.series = [];
    if (!state.seriesKey) return;
    const t = state.table;
    const found = await api(
      `${tableBase(t)}/keys/${enc(state.seriesKey)}/windows/latest?n=${SERIES_LENGTH}`);
    state.series = found ? found.windows : [];
  }

  function applyWindowUpdate(event) {
    const start = event.window.start;
    if (!state.current || start > state.current.start) {
      state.current = { start, end: event.window.end, rows: new Map() };
    }
    if (start === state.current.start) state.current.rows.set(event.key, event.values);
    if (event.key === state.seriesKey) {
      const i = state.series.findIndex((w) => w.start === start);
      const win = { key: event.key, start, end: event.window.end, values: event.values };
      if (i >= 0) state.series[i] = win;
      else {
        state.series.push(win);
        state.series.sort((a, b) => a.start - b.start);
        state.series = state.series.slice(-SERIES_LENGTH);
      }
    }
    if (!state.seriesKey) {
      state.seriesKey = event.key;
      loadSeries().then(renderWindows);
    }
  }

  function topRows() {
    if (!state.current) return [];
    const agg = state.agg;
    return [...state.current.rows.entries()]
      .map(([key, values]) => ({ key, values, score: values[agg] ?? 0 }))
      .sort((a, b) => b.score - a.score || (a.key < b.key ? 1 : -1));
  }

  function renderWindows() {
    const t = state.table;
    const rows = topRows().slice(0, TOP_N);
    $("window-range").textContent = state.current
      ? `${fmtTime(state.current.start)}–${fmtTime(state.current.end)} UTC` : "(no windows yet)";
    drawBars($("top-chart"), rows);
    const names = t.aggregates.map((a) => a.name);
    const table = $("top-table");
    table.innerHTML = "";
    const head = table.createTHead().insertRow();
    head.innerHTML = `<th>${t.key_field}</th>` + names.map((n) => `<th class="num"></th>`).join("");
    names.forEach((n, i) => { head.cells[i + 1].textContent = n; });
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      if (row.key === state.seriesKey) tr.className = "selected";
      tr.insertCell().textContent = row.key;
      for (const n of names) {
        const td = tr.insertCell();
        td.className = "num";
        td.textContent = fmtNum(row.values[n]);
      }
      tr.addEventListener("click", async () => {
        state.seriesKey = row.key;
        await loadSeries();
        renderWindows();
      });
    }
    $("series-key").textContent = state.seriesKey ? `${t.key_field} = ${state.seriesKey}, ${state.agg}` : "";
    drawSeries($("series-chart"), state.series, state.agg);
  }

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function drawBars(svg, rows) {
    const width = svg.clientWidth || 600;
    const height = svg.clientHeight || 260;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = "";
    if (!rows.length) {
      svg.appendChild(svgEl("text", { x: 10, y: 20, class: "label" }, "waiting for data…"));
      return;
    }
    const labelWidth = 120;
    const rowHeight = Math.min(24, height / rows.length);
    const max = Math.max(...rows.map((r) => Math.abs(r.score)), 1e-9);
    rows.forEach((r, i) => {
      const y = i * rowHeight;
      const w = Math.max(1, (Math.abs(r.score) / max) * (width - labelWidth - 70));
      svg.appendChild(svgEl("text", { x: 4, y: y + rowHeight * 0.7, class: "label" }, r.key));
      svg.appendChild(svgEl("rect", {
        x: labelWidth, y: y + 2, width: w, height: rowHeight - 4, class: "bar",
        "data-key": r.key, "data-value": r.score,
      }));
      svg.appendChild(svgEl("text", {
        x: labelWidth + w + 6, y: y + rowHeight * 0.7, class: "label",
      }, fmtNum(r.values[state.agg])));
    });
  }

  function drawSeries(canvas, series, agg) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width;
    const H = canvas.height;
    const pad = { l: 60, r: 16, t: 12, b: 36 };
    ctx.clearRect(0, 0, W, H);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#1d2430";
    if (!series.length) {
      ctx.fillText("waiting for data…", pad.l, H / 2);
      return;
    }
    const values = series.map((w) => w.values[agg] ?? 0);
    const max = Math.max(...values, 0);
    const min = Math.min(...values, 0);
    const span = max - min || 1;
    // Time on the x axis, so a gap between windows shows as a gap.
    const t0 = series[0].start;
    const t1 = series[series.length - 1].start;
    const x = (i) => pad.l + (t1 === t0 ? 0.5 : (series[i].start - t0) / (t1 - t0)) * (W - pad.l - pad.r);
    const y = (v) => H - pad.b - ((v - min) / span) * (H - pad.t - pad.b);
    ctx.strokeStyle = "#d9dee7";
    ctx.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const v = min + (span * k) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.l, y(v));
      ctx.lineTo(W - pad.r, y(v));
      ctx.stroke();
      ctx.fillText(fmtNum(v), 4, y(v) + 4);
    }
    const every = Math.max(1, Math.ceil(series.length / 8));
    series.forEach((w, i) => {
      if (i % every === 0) ctx.fillText(fmtTime(w.start).slice(0, 5), x(i) - 16, H - 12);
    });
    ctx.strokeStyle = "#2f6fde";
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    ctx.fillStyle = "#2f6fde";
    values.forEach((v, i) => {
      ctx.beginPath();
      ctx.arc(x(i), y(v), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  }

  // ---- latest-state tables -----------------------------------------------------------

  async function loadEntries() {
    const page = await api(`${tableBase(state.table)}/entries?limit=1000`);
    state.entries = new Map((page ? page.entries : []).map((e) => [e.key, e]));
    renderEntries();
  }

  function applyLatestUpdate(event) {
    if (event.deleted) state.entries.delete(event.key);
    else state.entries.set(event.key, { key: event.key, updated: Date.now(), value: event.values });
  }

  function position(entry) {
    const geo = state.table.geo;
    if (!geo || !entry.value) return null;
    const lat = Number(entry.value[geo.lat]);
    const lon = Number(entry.value[geo.lon]);
    return Number.isFinite(lat) && Number.isFinite(lon) ? { lat, lon } : null;
  }

  function renderEntries() {
    const entries = [...state.entries.values()].sort((a, b) => (b.updated || 0) - (a.updated || 0));
    $("entry-count").textContent = `${entries.length} keys`;
    const shown = entries.slice(0, 200);
    const keyField = state.table.key_field;
    const fields = [...new Set(shown.flatMap((e) => Object.keys(e.value || {})))]
      .filter((f) => f !== keyField).slice(0, 8);
    const table = $("entries");
    table.innerHTML = "";
    const head = table.createTHead().insertRow();
    for (const name of [state.table.key_field, ...fields]) {
      head.appendChild(document.createElement("th")).textContent = name;
    }
    const body = table.createTBody();
    for (const e of shown) {
      const tr = body.insertRow();
      tr.insertCell().textContent = e.key;
      for (const f of fields) {
        const v = e.value ? e.value[f] : undefined;
        tr.insertCell().textContent = typeof v === "object" ? JSON.stringify(v) : fmtCell(v);
      }
    }
    $("map-card").hidden = !state.table.geo;
    if (state.table.geo) drawMap($("map"), entries);
  }

  const fmtCell = (v) =>
    v === undefined || v === null ? "" : typeof v === "number" ? String(Math.round(v * 1e6) / 1e6) : String(v);

  function drawMap(svg, entries) {
    const width = svg.clientWidth || 600;
    const height = svg.clientHeight || 420;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = "";
    const points = entries.map((e) => ({ key: e.key, p: position(e) })).filter((x) => x.p);
    $("map-count").textContent = `${points.length} positions`;
    if (!points.length) {
      svg.appendChild(svgEl("text", { x: 10, y: 20, class: "label" }, "no positions yet"));
      return;
    }
    let [minLat, maxLat] = [Infinity, -Infinity];
    let [minLon, maxLon] = [Infinity, -Infinity];
    for (const { p } of points) {
      minLat = Math.min(minLat, p.lat); maxLat = Math.max(maxLat, p.lat);
      minLon = Math.min(minLon, p.lon); maxLon = Math.max(maxLon, p.lon);
    }
    const padDeg = Math.max(maxLat - minLat, maxLon - minLon, 0.01) * 0.08;
    minLat -= padDeg; maxLat += padDeg; minLon -= padDeg; maxLon += padDeg;
    // Equirectangular, with longitude shrunk by cos(latitude) so shapes are not stretched.
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const spanX = (maxLon - minLon) * k;
    const spanY = maxLat - minLat;
    const scale = Math.min((width - 20) / spanX, (height - 20) / spanY);
    const ox = (width - spanX * scale) / 2;
    const oy = (height - spanY * scale) / 2;
    const px = (lon) => ox + (lon - minLon) * k * scale;
    const py = (lat) => height - oy - (lat - minLat) * scale;
    for (let i = 0; i <= 4; i++) {
      const lat = minLat + (spanY * i) / 4;
      const lon = minLon + ((maxLon - minLon) * i) / 4;
      svg.appendChild(svgEl("line", { x1: 0, x2: width, y1: py(lat), y2: py(lat), class: "axis" }));
      svg.appendChild(svgEl("line", { y1: 0, y2: height, x1: px(lon), x2: px(lon), class: "axis" }));
      svg.appendChild(svgEl("text", { x: 4, y: py(lat) - 3, class: "label" }, lat.toFixed(3)));
      svg.appendChild(svgEl("text", { x: px(lon) + 3, y: height - 4, class: "label" }, lon.toFixed(3)));
    }
    for (const { key, p } of points) {
      const c = svgEl("circle", {
        cx: px(p.lon), cy: py(p.lat), r: 5, class: "point",
        "data-key": key, "data-lat": p.lat, "data-lon": p.lon,
      });
      c.appendChild(svgEl("title", {}, `${key} (${p.lat.toFixed(5)}, ${p.lon.toFixed(5)})`));
      svg.appendChild(c);
    }
  }

  // ---- live updates ------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (state.table.kind === "window") renderWindows();
      else renderEntries();
    });
  }

  function connect() {
    const t = state.table;
    if (!t.live) {
      setStatus("not live (publish: false)");
      return;
    }
    const url = `${tableBase(t)}/events` + (apiKey ? `?api_key=${enc(apiKey)}` : "");
    const source = new EventSource(url);
    state.source = source;
    source.addEventListener("ready", () => {
      state.connected = true;
      setStatus("live", "live");
    });
    source.addEventListener("update", (message) => {
      const event = JSON.parse(message.data);
      state.updates += 1;
      $("updates").textContent = `${state.updates} updates`;
      if (t.kind === "window" && event.window) applyWindowUpdate(event);
      else applyLatestUpdate(event);
      scheduleRender();
    });
    // EventSource reconnects by itself, sending Last-Event-ID so the API catches us up.
    source.onerror = () => {
      state.connected = false;
      setStatus("reconnecting…", "down");
    };
  }

  window.flowmillDashboard = {
    snapshot() {
      const t = state.table;
      return {
        table: t ? `${t.pipeline}/${t.name}` : null,
        kind: t ? t.kind : null,
        connected: state.connected,
        agg: state.agg,
        updates: state.updates,
        current: state.current
          ? { start: state.current.start, top: topRows().slice(0, TOP_N).map((r) => [r.key, r.score]) }
          : null,
        seriesKey: state.seriesKey,
        series: state.series.map((w) => [w.start, w.values[state.agg] ?? null]),
        points: t && t.geo
          ? [...state.entries.values()].map((e) => [e.key, position(e)]).filter((x) => x[1])
          : [],
        entries: state.entries.size,
      };
    },
  };

  init();
})();
