// The operator's page: polls /api/state and draws tables and plain SVG (no libraries, no
// external requests unless the server was started with --tiles).
"use strict";

const NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }));
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
let selectedVin = null;
let refreshMs = 2000;

function svgEl(name, attrs, text) {
  const el = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function table(el, headers, rows) {
  const head = "<tr>" + headers.map((h) => `<th class="${h.num ? "num" : ""}">${esc(h.label)}</th>`).join("") + "</tr>";
  const body = rows.map((r) => "<tr>" + r.map((c, i) => `<td class="${headers[i].num ? "num" : ""}">${c}</td>`).join("") + "</tr>").join("");
  el.innerHTML = head + (body || `<tr><td colspan="${headers.length}" class="muted">nothing yet</td></tr>`);
}

function bars(svg, items, width, classOf) {
  // Horizontal bars: items = [{label, value}]
  svg.replaceChildren();
  const rowH = 22, left = 170, max = Math.max(1, ...items.map((i) => i.value));
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(rowH * items.length + 10, 40)}`);
  if (!items.length) svg.appendChild(svgEl("text", { x: 10, y: 24, class: "label-text" }, "no data yet"));
  items.forEach((item, i) => {
    const y = 5 + i * rowH, w = ((width - left - 70) * item.value) / max;
    svg.appendChild(svgEl("text", { x: left - 6, y: y + 14, "text-anchor": "end", class: "label-text" }, item.label));
    svg.appendChild(svgEl("rect", { x: left, y, width: Math.max(w, 1), height: rowH - 6, class: "bar " + (classOf ? classOf(item) : "") }));
    svg.appendChild(svgEl("text", { x: left + w + 4, y: y + 14, class: "label-text" }, fmt(item.value)));
  });
}

// --- the map: Web Mercator in [0, 1] squares, so optional tiles line up -------------------
function merc(lat, lon) {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

function drawMap(state) {
  const svg = $("map");
  svg.replaceChildren();
  const W = 1000, H = 560;
  const points = [];
  state.vehicles.forEach((v) => points.push(merc(v.lat, v.lon)));
  state.zones.forEach((z) => (z.polygon.length ? z.polygon.forEach((p) => points.push(merc(p[0], p[1]))) : points.push(merc(z.lat, z.lon))));
  (state.lake.cells || []).forEach((c) => {  // both corners, so whole cells are in view
    points.push(merc(c.lat + 0.02197, c.lon - 0.02197));
    points.push(merc(c.lat - 0.02197, c.lon + 0.02197));
  });
  if (!points.length) {
    svg.appendChild(svgEl("text", { x: 20, y: 40, class: "label-text" }, "no positions yet"));
    return;
  }
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  points.forEach(([x, y]) => { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); });
  const pad = Math.max(x1 - x0, y1 - y0, 0.0004) * 0.08;
  x0 -= pad; x1 += pad; y0 -= pad; y1 += pad;
  const scale = Math.min(W / (x1 - x0), H / (y1 - y0));
  const ox = (W - (x1 - x0) * scale) / 2, oy = (H - (y1 - y0) * scale) / 2;
  const px = ([x, y]) => [ox + (x - x0) * scale, oy + (y - y0) * scale];
  const tiles = state.config && state.config.tiles;
  if (tiles) {
    const z = Math.max(0, Math.min(18, Math.floor(Math.log2(scale / 256))));
    const n = 2 ** z;
    for (let tx = Math.floor(x0 * n); tx <= Math.floor(x1 * n); tx++) {
      for (let ty = Math.floor(y0 * n); ty <= Math.floor(y1 * n); ty++) {
        const [ax, ay] = px([tx / n, ty / n]);
        svg.appendChild(svgEl("image", { href: tiles.replace("{z}", z).replace("{x}", tx).replace("{y}", ty),
          x: ax, y: ay, width: scale / n + 0.5, height: scale / n + 0.5, opacity: 0.8 }));
      }
    }
  } else {
    for (let i = 1; i < 10; i++) {
      svg.appendChild(svgEl("line", { x1: (W * i) / 10, y1: 0, x2: (W * i) / 10, y2: H, stroke: "#dde5ee" }));
      svg.appendChild(svgEl("line", { x1: 0, y1: (H * i) / 10, x2: W, y2: (H * i) / 10, stroke: "#dde5ee" }));
    }
  }
  const maxKw = Math.max(1, ...(state.lake.cells || []).map((c) => c.kw));
  (state.lake.cells || []).forEach((c) => {
    // a precision-5 geohash cell is 0.0439 x 0.0439 degrees
    const [ax, ay] = px(merc(c.lat + 0.02197, c.lon - 0.02197)), [bx, by] = px(merc(c.lat - 0.02197, c.lon + 0.02197));
    const rect = svgEl("rect", { x: ax, y: ay, width: bx - ax, height: by - ay, class: "cell",
      fill: `rgba(221, 107, 32, ${0.1 + (0.5 * c.kw) / maxKw})` });
    rect.appendChild(svgEl("title", {}, `cell ${c.cell}: ${fmt(c.kw)} kW expected, ${c.sessions} sessions`));
    svg.appendChild(rect);
    svg.appendChild(svgEl("text", { x: ax + 3, y: ay + 12, class: "label-text" }, `${c.cell} ${fmt(c.kw)} kW`));
  });
  state.zones.forEach((z) => {
    let shape;
    if (z.polygon.length) {
      shape = svgEl("polygon", { points: z.polygon.map((p) => px(merc(p[0], p[1])).join(",")).join(" "), class: "zone" });
    } else {
      const [cx, cy] = px(merc(z.lat, z.lon));
      const r = ((z.radius_m / (40075016.7 * Math.cos((z.lat * Math.PI) / 180))) * scale);
      shape = svgEl("circle", { cx, cy, r: Math.max(r, 3), class: "zone" });
    }
    shape.appendChild(svgEl("title", {}, `geofence ${z.name}`));
    svg.appendChild(shape);
    const [lx, ly] = px(merc(z.polygon.length ? z.polygon[0][0] : z.lat, z.polygon.length ? z.polygon[0][1] : z.lon));
    svg.appendChild(svgEl("text", { x: lx + 4, y: ly - 4, class: "label-text" }, z.name));
  });
  state.vehicles.forEach((v) => {
    const [cx, cy] = px(merc(v.lat, v.lon));
    const dot = svgEl("circle", { cx, cy, r: 6, class: "vehicle" + (v.vin === selectedVin ? " selected" : ""), "data-vin": v.vin });
    dot.appendChild(svgEl("title", {}, `${v.vin} at ${new Date(v.t).toISOString()}`));
    dot.addEventListener("click", () => showVehicle(v.vin));
    svg.appendChild(dot);
  });
  $("map-legend").textContent = `${state.vehicles.length} vehicles, ${state.zones.length} geofences, ` +
    `${(state.lake.cells || []).length} grid cells with charging demand` + (tiles ? "" : " (offline: no tiles)");
}

async function showVehicle(vin) {
  selectedVin = vin;
  const panel = $("vehicle");
  panel.innerHTML = `<b>${esc(vin)}</b> <span class="muted">loading...</span>`;
  const resp = await fetch(`/api/vehicle/${encodeURIComponent(vin)}`);
  const v = await resp.json();
  const trips = v.trips.map((t) => `<tr><td>${esc(t.trip_id)}</td><td>${esc(t.ended)}</td><td class="num">${fmt(t.minutes)}</td><td class="num">${fmt(t.km)}</td><td class="num">${fmt(t.kwh)}</td></tr>`).join("");
  const events = v.events.map((e) => `<tr><td>${esc(e.time)}</td><td>${esc(e.type)}</td></tr>`).join("");
  panel.innerHTML = `<h3>${esc(vin)}</h3>` + (v.error ? `<div class="error">${esc(v.error)}</div>` : "") +
    `<div class="grid"><div><b>recent trips</b><table id="vehicle-trips"><tr><th>trip</th><th>ended</th><th class="num">min</th><th class="num">km</th><th class="num">kWh</th></tr>${trips || '<tr><td colspan="5" class="muted">none in the lake yet</td></tr>'}</table></div>` +
    `<div><b>recent events</b><table id="vehicle-events"><tr><th>time</th><th>type</th></tr>${events || '<tr><td colspan="2" class="muted">none in the lake yet</td></tr>'}</table></div></div>`;
}

function render(state) {
  $("group").textContent = `consumer group ${state.group}`;
  $("updated").textContent = `updated ${new Date(state.at * 1000).toLocaleTimeString()}`;
  $("frames-in").textContent = fmt(state.totals.frames_in);
  $("readings-in").textContent = fmt(state.totals.readings_in);
  $("frames-dead").textContent = fmt(state.totals.frames_dead_lettered);
  $("events-derived").textContent = fmt(state.totals.events_derived);
  $("replicas-up").textContent = `${state.replicas.filter((r) => r.up).length} / ${state.replicas.length}`;
  $("lag-total").textContent = fmt(state.lag.total);

  const items = [];
  state.stages.forEach((s) => state.replicas.forEach((r) => items.push({ label: `${s.stage} @ ${r.replica}`, value: r.rates[s.stage] || 0 })));
  bars($("throughput"), items, 480);
  table($("replicas"), [{ label: "replica" }, { label: "up" }, ...state.stages.map((s) => ({ label: `${s.stage} (${s.unit})`, num: true }))],
    state.replicas.map((r) => [esc(r.replica), r.up ? "yes" : `<span class="error">no</span>`, ...state.stages.map((s) => fmt(r.rates[s.stage]))]));

  const a = state.autoscaler;
  $("autoscaler").innerHTML = `<p>Autoscaler: <span class="decision ${esc(a.direction)}">${esc(a.direction)}</span> ` +
    `to <b>${a.desired}</b> replica(s) (now ${a.current}, rule says ${a.recommended}): ${esc(a.reason)}.<br>` +
    `<span class="muted">inputs: lag ${fmt(a.total_lag)} over ${a.partitions} partitions; policy min ${a.policy.min_replicas}, ` +
    `max ${a.policy.max_replicas}, ${fmt(a.policy.lag_threshold)} records per replica, window ${a.policy.window_s}s, cooldown ${a.policy.cooldown_s}s</span></p>` +
    (a.running ? (a.running.up
      ? `<p>Running autoscaler: desired <b>${fmt(a.running.desired_replicas)}</b>, current ${fmt(a.running.current_replicas)}, ` +
        `recommended ${fmt(a.running.recommended_replicas)}, lag ${fmt(a.running.total_lag)} over ${fmt(a.running.partitions)} partitions</p>`
      : `<p class="error">Running autoscaler at ${esc(a.running.url)} not reachable: ${esc(a.running.error)}</p>`) : "");
  const maxLag = Math.max(1, ...state.lag.by_partition.map((p) => p.lag));
  table($("lag"), [{ label: "topic" }, { label: "partition", num: true }, { label: "committed", num: true }, { label: "end", num: true }, { label: "lag", num: true }, { label: "" }],
    state.lag.by_partition.map((p) => [esc(p.topic), p.partition, fmt(p.committed), fmt(p.end), fmt(p.lag),
      `<svg viewBox="0 0 100 10" style="width:100px"><rect width="${(100 * p.lag) / maxLag}" height="10" class="bar dropped"></rect></svg>`]));

  bars($("readings"), state.readings.map((r) => ({ label: r.reason ? `${r.outcome}: ${r.reason}` : r.outcome, value: r.readings, outcome: r.outcome })), 480, (i) => i.outcome);
  table($("readings-table"), [{ label: "outcome" }, { label: "reason" }, { label: "readings", num: true }],
    state.readings.map((r) => [esc(r.outcome), esc(r.reason), fmt(r.readings)]));

  table($("dead-letters"), [{ label: "stage" }, { label: "reason" }, { label: "count", num: true }, { label: "latest example (redacted)" }],
    state.dead_letters.map((d) => [esc(d.stage), esc(d.reason), fmt(d.count), d.example
      ? `<div class="muted">${esc(d.example.from)}, ${esc(d.example.policy)}</div><pre>${esc(typeof d.example.value === "string" ? d.example.value : JSON.stringify(d.example.value, null, 1))}</pre>`
      : `<span class="muted">not in the topic's tail</span>`]));

  table($("routes"), [{ label: "route" }, { label: "topic" }, { label: "events", num: true }, { label: "latest CloudEvent" }],
    state.routes.map((r) => [esc(r.route), esc(r.topic), fmt(r.events), r.latest ? `<pre>${esc(JSON.stringify(r.latest, null, 1))}</pre>` : `<span class="muted">none read yet</span>`]));

  drawMap(state);
  $("error").textContent = state.lake.error ? `lake: ${state.lake.error}` : "";
}

async function refresh() {
  try {
    const resp = await fetch("/api/state");
    if (resp.ok) {
      const state = await resp.json();
      refreshMs = 1000 * ((state.config && state.config.refresh_s) || 2);
      render(state);
    } else {
      $("updated").textContent = (await resp.json()).error || `HTTP ${resp.status}`;
    }
  } catch (err) {
    $("updated").textContent = `cannot reach the server: ${err}`;
  }
  setTimeout(refresh, refreshMs);
}

refresh();
