"use strict";
// geoconcept's page: a canvas world map (Web Mercator, so optional tiles line up; drag to pan,
// wheel to zoom, hover to read), the answers of /explain and /where, and the concept bars.
// Written for this project: no libraries, no build step, nothing fetched but this server.

const $ = (id) => document.getElementById(id);
const canvas = $("map");
const ctx = canvas.getContext("2d");
const MAX_LAT = 85.05112878;
const HEAT_RAMP = [[255, 236, 140], [248, 150, 40], [214, 60, 40], [120, 20, 90]];

const state = {
  world: [], tiles: null, tileCache: new Map(), answer: null, kind: "probability",
  key: sessionStorage.getItem("geoconcept-key") || "", file: null, album: null, previewable: false, hits: [],
  drag: null,
  view: { x0: 0, y0: 0, scale: 1 },
};

// ---------------------------------------------------------------- projection and view
function project(lat, lon) {
  const phi = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI / 180;
  return [(lon + 180) / 360, (1 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / Math.PI) / 2];
}

function toPx(lat, lon) {
  const [x, y] = project(lat, lon);
  const v = state.view;
  return [(x - v.x0) * v.scale, (y - v.y0) * v.scale];
}

function fitWorld() {
  // longitudes -180..180 across the width; latitudes from ~75N down
  state.view = { scale: canvas.width, x0: 0, y0: project(75, 0)[1] };
}

function zoomAt(px, py, factor) {
  const v = state.view;
  const scale = Math.max(canvas.width * 0.5, Math.min(canvas.width * 4096, v.scale * factor));
  const wx = v.x0 + px / v.scale, wy = v.y0 + py / v.scale;
  state.view = { scale, x0: wx - px / scale, y0: wy - py / scale };
  draw();
}

function eventPx(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width,
          (ev.clientY - r.top) * canvas.height / r.height];
}

// ---------------------------------------------------------------- drawing
function heatColour(t) {
  const x = Math.max(0, Math.min(1, t)) * (HEAT_RAMP.length - 1);
  const i = Math.min(HEAT_RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = HEAT_RAMP[i].map((a, j) => Math.round(a + f * (HEAT_RAMP[i + 1][j] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawTiles() {
  const v = state.view;
  const z = Math.max(0, Math.min(18, Math.round(Math.log2(v.scale / 256))));
  const n = 2 ** z, size = v.scale / n;
  const x0 = Math.max(0, Math.floor(v.x0 * n)), y0 = Math.max(0, Math.floor(v.y0 * n));
  const x1 = Math.min(n - 1, Math.floor((v.x0 + canvas.width / v.scale) * n));
  const y1 = Math.min(n - 1, Math.floor((v.y0 + canvas.height / v.scale) * n));
  for (let x = x0; x <= x1; x++) {
    for (let y = y0; y <= y1; y++) {
      const url = state.tiles.replace("{z}", z).replace("{x}", x).replace("{y}", y);
      let img = state.tileCache.get(url);
      if (!img) {
        img = new Image();
        img.onload = () => draw();
        img.src = url;
        state.tileCache.set(url, img);
      }
      if (img.complete && img.naturalWidth) {
        ctx.drawImage(img, (x / n - v.x0) * v.scale, (y / n - v.y0) * v.scale, size + 1, size + 1);
      }
    }
  }
}

function marker(lat, lon, r, fill, stroke, label, text) {
  const [x, y] = toPx(lat, lon);
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = stroke;
  ctx.stroke();
  if (text) {
    ctx.fillStyle = "#111";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(text, x + r + 3, y - r);
  }
  state.hits.push({ x, y, r: Math.max(r, 6), label, priority: 1 });
}

function draw() {
  const a = state.answer, map = a && a.map;
  state.hits = [];
  ctx.fillStyle = "#f3f6f9";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (state.tiles) drawTiles();
  ctx.fillStyle = "#c9ccd1";
  for (const [lat, lon] of state.world) {
    const [x, y] = toPx(lat, lon);
    if (x >= -2 && y >= -2 && x <= canvas.width + 2 && y <= canvas.height + 2) {
      ctx.fillRect(x - 1, y - 1, 2, 2);
    }
  }
  const drawn = { heat: 0, markers: 0, runnerUp: 0, truth: 0, region: 0 };
  if (a && a.region) {
    ctx.fillStyle = "rgba(31,119,180,0.35)";
    for (const [lat, lon] of a.region.points) {
      const [x, y] = toPx(lat, lon);
      ctx.fillRect(x - 2, y - 2, 4, 4);
      drawn.region++;
    }
  }
  if (map && map.heat.length) {
    const values = map.heat.map((h) => h[2]);
    const positive = values.filter((v) => v > 0);
    const hi = Math.max(...values);
    // probabilities on a log scale whose floor is the smallest positive one (some underflow)
    const log = state.kind === "probability" && positive.length > 0;
    const lo = log ? Math.min(...positive) : Math.min(...values);
    const scaleOf = (v) => log ? (Math.log(Math.max(v, lo)) - Math.log(lo)) / (Math.log(hi) - Math.log(lo) || 1)
                               : (v - lo) / (hi - lo || 1);
    for (let i = map.heat.length - 1; i >= 0; i--) {  // strongest drawn last, on top
      const [lat, lon, v] = map.heat[i];
      const [x, y] = toPx(lat, lon);
      ctx.fillStyle = heatColour(scaleOf(v));
      ctx.fillRect(x - 2.5, y - 2.5, 5, 5);
      const what = state.kind === "probability" ? `p = ${fmt(v)}` : `${state.kind} ${fmt(v)}`;
      state.hits.push({ x, y, r: 4, label: `${map.names[i]} · ${what}`, priority: 2 });
      drawn.heat++;
    }
  }
  if (a && a.rather_than) {
    const r = a.rather_than.runner_up;
    marker(r.lat, r.lon, 7, "#9ecae1", "#1f4e79", `runner-up: ${r.place} (logit gap ${fmt(r.logit_gap)})`, `rather than ${r.place}`);
    drawn.runnerUp++;
  }
  const places = a ? (a.predictions || a.places || []) : [];
  for (let i = places.length - 1; i >= 0; i--) {
    const c = places[i];
    const share = c.prob !== undefined ? c.prob / Math.max(places[0].prob, 1e-12) : 1 - i / places.length;
    const value = c.prob !== undefined ? `p = ${fmt(c.prob)}` : `${state.kind} ${fmt(c.score)}`;
    marker(c.lat, c.lon, 5 + 7 * Math.sqrt(share), "rgba(214,39,40,0.85)", "#000",
           `#${c.rank} ${c.place} · ${value}`, i === 0 ? c.place : "");  // others: on hover
    drawn.markers++;
  }
  if (map && map.truth) {
    const t = map.truth, top = places[0];
    const [x, y] = toPx(t.lat, t.lon);
    if (top) {
      const [tx, ty] = toPx(top.lat, top.lon);
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = "#2ca02c";
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(tx, ty); ctx.stroke();
      ctx.setLineDash([]);
    }
    star(x, y, 9);
    ctx.fillStyle = "#14501a";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(`true: ${t.place} (${Math.round(t.error_km)} km off)`, x + 11, y + 14);
    state.hits.push({ x, y, r: 9, label: `true location: ${t.place}; error ${fmt(t.error_km)} km`, priority: 0 });
    drawn.truth++;
  }
  for (const [k, v] of Object.entries(drawn)) canvas.dataset[k] = v;
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  legend();
}

function star(x, y, r) {
  ctx.beginPath();
  for (let i = 0; i < 10; i++) {
    const rr = i % 2 ? r / 2.3 : r, t = Math.PI / 2 + i * Math.PI / 5;
    ctx.lineTo(x + rr * Math.cos(t), y - rr * Math.sin(t));
  }
  ctx.closePath();
  ctx.fillStyle = "#2ca02c";
  ctx.fill();
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1;
  ctx.stroke();
}

function legend() {
  const a = state.answer;
  const parts = ["grey: GeoCLIP's gallery (the inhabited world)"];
  if (a && a.map && a.map.heat.length) {
    parts.push(`heat: the ${a.map.heat.length} highest ${state.kind === "probability" ? "probabilities" : "scores"} (dark = highest${state.kind === "probability" ? ", log scale" : ""})`);
  }
  if (a && a.region) parts.push(`blue: ${Math.round(a.region.coverage * 100)}% confidence region`);
  if (state.tiles) parts.push("tiles: " + new URL(state.tiles.replace(/[{}]/g, ""), location.href).host);
  $("legend").textContent = parts.join(" · ");
}

function fmt(v) {
  if (v === undefined || v === null) return "";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

// ---------------------------------------------------------------- map interaction
canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  const [x, y] = eventPx(ev);
  zoomAt(x, y, ev.deltaY < 0 ? 1.25 : 0.8);
}, { passive: false });
canvas.addEventListener("dblclick", (ev) => { const [x, y] = eventPx(ev); zoomAt(x, y, 2); });
canvas.addEventListener("pointerdown", (ev) => {
  state.drag = { px: eventPx(ev), view: { ...state.view } };
  canvas.setPointerCapture(ev.pointerId);
  canvas.classList.add("dragging");
});
canvas.addEventListener("pointerup", () => { state.drag = null; canvas.classList.remove("dragging"); });
canvas.addEventListener("pointermove", (ev) => {
  const [x, y] = eventPx(ev);
  if (state.drag) {
    const d = state.drag;
    state.view = { ...d.view, x0: d.view.x0 - (x - d.px[0]) / d.view.scale,
                   y0: d.view.y0 - (y - d.px[1]) / d.view.scale };
    draw();
    return;
  }
  hover(x, y, ev);
});
canvas.addEventListener("pointerleave", () => { $("tooltip").hidden = true; });

function hover(x, y, ev) {
  // of what lies under the cursor: truth, then markers, then heat; the one drawn on top
  let best = null;
  for (const h of state.hits) {
    if (Math.hypot(h.x - x, h.y - y) <= h.r + 2 && (!best || h.priority <= best.priority)) best = h;
  }
  const tip = $("tooltip");
  if (!best) { tip.hidden = true; return; }
  tip.textContent = best.label;
  const wrap = $("map-wrap").getBoundingClientRect();
  tip.style.left = `${ev.clientX - wrap.left + 12}px`;
  tip.style.top = `${ev.clientY - wrap.top + 12}px`;
  tip.hidden = false;
}

// ---------------------------------------------------------------- the API
async function api(path, options = {}) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const res = await fetch(path, { ...options, headers });
  let body;
  try { body = await res.json(); } catch { body = { error: `${res.status} ${res.statusText}` }; }
  if (res.status === 401) $("key-form").hidden = false;
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}

function status(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

async function start() {
  fitWorld();
  draw();
  try {
    const h = await api("/healthz");
    $("health").textContent = `${h.mode} · CLIP ${h.clip_model} (${h.clip_pretrained}) · ` +
      `${h.places.toLocaleString()} places · ${h.concepts} concepts · ` +
      (h.calibrated ? "calibrated" : "uncalibrated probabilities");
    // the deletion check tests a concept-aware run's own score terms; the server refuses it
    // for other models, so the page does not offer it
    if (h.clip_pretrained === "none") {  // the tests' and benchmarks' random backbone
      $("warning").textContent = `This server's CLIP (${h.clip_model}) has random weights ` +
        "(--clip-pretrained none): every answer is meaningless.";
      $("warning").hidden = false;
    }
    const aware = h.mode === "concept-aware checkpoint";
    $("check").disabled = !aware;
    $("check").parentElement.title = aware ? "" :
      "the deletion check needs a concept-aware run (serve --checkpoint RUN)";
    const w = await api("/world");
    state.world = w.points;
    state.tiles = w.tiles;
    draw();
    status("Choose or drop a photo, or ask where a concept is found.");
  } catch (e) {
    status(e.message, true);
  }
}

// the query of a question, with the limits the form gives: `within` split at ';', a circle
// where `near` or `radius` is filled, and (`hints: true`, a photo's question) the hints
function limited({ hints, ...fields }) {
  const q = new URLSearchParams(fields);
  const split = (id) => $(id).value.split(";").map((s) => s.trim()).filter(Boolean);
  for (const w of split("within")) q.append("within", w);
  if (hints) for (const h of split("hint")) q.append("hint", h);
  const near = $("near").value.trim(), radius = $("radius").value.trim();
  if (near || radius) {
    q.append("near", near);
    q.append("radius", radius);
  }
  return q;
}

async function explain() {
  if (state.album) return album();
  if (!state.file) return;
  const q = limited({ top_k: $("top-k").value, concepts_shown: $("concepts-shown").value,
                      check: $("check").checked, merge_km: $("merge-km").value, hints: true });
  const body = new FormData();
  body.append("image", state.file, state.file.name);
  status(`locating ${state.file.name}…`);
  $("explain-btn").disabled = true;
  clear();  // the previous photo's answer goes, whatever this one's fate
  $("preview").hidden = !state.previewable;  // shown again after a `where`
  try {
    show(await api(`/explain?${q}`, { method: "POST", body }), "probability");
    status(`${state.file.name}: ${state.answer.mode}`);
  } catch (e) {
    $("preview").hidden = true;  // a file that is no photo: nothing to show beside the error
    status(e.message, true);
  } finally {
    $("explain-btn").disabled = false;
  }
}

async function where(text) {
  if (!text.trim()) return;
  status(`where is “${text}”…`);
  clear();
  $("preview").hidden = true;  // a text's answer is about no photo
  try {
    const a = await api(`/where?${limited({ text, merge_km: $("merge-km").value })}`);
    show(a, a.score);
    status(`“${a.query}”: ${a.mode}`);
  } catch (e) {
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- the answer, in words
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function clear() {
  state.answer = null;
  for (const id of ["candidates", "summary", "reasons"]) $(id).replaceChildren();
  $("bar-legend").hidden = true;
  draw();
}

function show(answer, kind) {
  state.answer = answer;
  state.kind = kind;
  draw();
  const list = $("candidates");
  list.replaceChildren();
  for (const c of answer.predictions || answer.places || []) {
    const li = el("li", `${c.place} `);
    const v = c.prob !== undefined ? `p = ${fmt(c.prob)}` : `${kind} ${fmt(c.score)}`;
    const held = c.points > 1 ? ` · ${c.points} gallery points` : "";
    li.append(el("span", `${c.lat.toFixed(2)}, ${c.lon.toFixed(2)} · ${v}${held}`));
    list.append(li);
  }
  summary(answer);
  reasons(answer);
}

function summary(a) {
  const s = $("summary");
  s.replaceChildren();
  if (a.probabilities) s.append(el("p", a.probabilities.note, "note"));
  if (a.probabilities && a.probabilities.limited_to) s.append(el("p", `limited to ${a.probabilities.limited_to}`));
  const c = a.confidence;  // a calibrated model's; below its level, the list is a best guess
  if (c && !c.answered) {
    s.prepend(el("p", `Not localizable at this confidence: ${fmt(c.probability)} that the most probable gallery point lies ` +
                      `within ${c.radius_km} km, below ${c.level}. The candidates are the best guess.`, "odd"));
  } else if (c) {
    s.append(el("p", `confidence ${fmt(c.probability)} that the most probable gallery point lies within ${c.radius_km} km`));
  }
  for (const h of a.hints || []) {
    const onto = h.concepts && h.concepts.length ? ` (maps onto ${h.concepts.map((c) => c.concept).join(", ")})` : "";
    s.append(el("p", h.applied === false ? `hint “${h.hint}”${onto}: maps onto no concept clearly, not applied`
      : `hint “${h.hint}”${onto}: ${Math.round(100 * h.share)}% of the answer's lead over the hint's rival`));
  }
  if (a.probabilities && a.probabilities.album) s.append(el("p", a.probabilities.album, "note"));
  for (const ph of a.photos || []) {
    const odd = ph.disagrees ? ` — disagrees: its own answer is ${Math.round(ph.km_from_joint_region)} km from the album's` : "";
    const shows = ph.concepts && ph.concepts.length ? `; shows ${ph.concepts.join(", ")}` : "";
    s.append(el("p", `${ph.image}: ${Math.round(100 * ph.share)}% of the answer (alone: ${ph.place}${shows})${odd}`, ph.disagrees ? "odd" : undefined));
  }
  if (a.merge_km) s.append(el("p", `candidates: gallery points within ${a.merge_km} km merged, probabilities summed`, "note"));
  if (a.map && a.map.truth) {
    const t = a.map.truth;
    s.append(el("p", `True location (from the photo's EXIF): ${t.place}; the top candidate is ${fmt(t.error_km)} km away.`));
  }
  if (a.region) {
    const r = a.region;
    const countries = r.countries.slice(0, 5).map((c) => `${c.country} ${fmt(c.mass)}`).join(", ");
    s.append(el("p", `${Math.round(r.coverage * 100)}% confidence region: ${r.places.toLocaleString()} places, ` +
                     `${Math.round(r.area_km2).toLocaleString()} km²; countries: ${countries}`));
  }
  if (a.spread) s.append(el("p", `top-k spread: ${Math.round(a.spread.max_pairwise_km)} km at most apart`, "note"));
  if (a.countries) {
    s.append(el("p", "Countries: " + a.countries.map((c) => `${c.country} ${fmt(c.score)}`).join(", ")));
  }
  if (a.note) s.append(el("p", a.note, "note"));
}

function bars(title, source, entries) {
  const box = el("div");
  const h = el("h2", title);
  if (source) h.append(el("span", ` (${source})`, "source"));
  box.append(h);
  const ul = el("ul", undefined, "bars");
  const top = Math.max(...entries.map((e) => Math.abs(e.weight)), 1e-12);
  for (const e of entries) {
    const li = el("li", undefined, "bar");
    li.title = `${e.category}/${e.subcategory}: show where “${e.concept}” is found`;
    li.dataset.concept = e.concept;
    li.append(el("span", e.concept, "name"));
    const track = el("span", undefined, "track");
    const fill = el("span", undefined, `fill ${e.category}${e.weight < 0 ? " negative" : ""}`);
    fill.style.width = `${100 * Math.abs(e.weight) / top}%`;
    track.append(fill);
    li.append(track, el("span", (e.weight >= 0 ? "+" : "") + fmt(e.weight), "value"));
    li.addEventListener("click", () => { $("where-text").value = e.concept; where(e.concept); });
    ul.append(li);
  }
  box.append(ul);
  return box;
}

function reasons(a) {
  const r = $("reasons");
  r.replaceChildren();
  const sections = [
    ["What the photo shows", a.photo_concepts_source, a.photo_concepts],
    ["What the place is known for", a.place_concepts_source, a.place_concepts],
    ["Why here", "per-concept score terms, summing to the score", a.why_here],
  ];
  for (const [title, source, entries] of sections) {
    if (entries && entries.length) r.append(bars(title, source, entries));
  }
  if (a.rather_than) {
    const rt = a.rather_than;
    r.append(bars(`Rather than ${rt.runner_up.place}: for`, `logit gap ${fmt(rt.runner_up.logit_gap)}`, rt.for));
    if (rt.against.length) r.append(bars("… and against", undefined, rt.against));
  }
  if (a.rule) r.append(el("p", a.rule, "rule"));
  if (a.check) {
    const c = a.check;
    const p = el("p");
    p.append(el("span", c.faithful ? "Faithful: " : "Not more faithful than random: ", `verdict ${c.faithful ? "ok" : "no"}`));
    p.append(`removing the top ${c.m} concepts drops the score by ${fmt(c.top_concepts_removed.score_drop)} ` +
             `(rank → ${c.top_concepts_removed.rank_after}); they beat ${Math.round(c.beats_random_share * c.draws)} ` +
             `of ${c.draws} random removals.` + (c.unmet && c.unmet.length ? ` Unmet: ${c.unmet.join("; ")}.` : ""));
    r.append(p);
  }
  $("bar-legend").hidden = !r.querySelector(".bar");
}

// photos of one place, located together: the joint answer and each photo's part
async function album() {
  const body = new FormData();
  for (const f of state.album) body.append("image", f, f.name);
  status(`locating ${state.album.length} photos together…`);
  $("explain-btn").disabled = true;
  clear();
  $("preview").hidden = true;
  try {
    const q = limited({ top_k: $("top-k").value, merge_km: $("merge-km").value, hints: true });
    show(await api(`/album?${q}`, { method: "POST", body }), "probability");
    status(`${state.album.length} photos located together`);
  } catch (e) {
    status(e.message, true);
  } finally {
    $("explain-btn").disabled = false;
  }
}

// ---------------------------------------------------------------- choosing a photo
function choose(files) {
  if (!files || !files.length) return;
  state.album = files.length > 1 ? Array.from(files) : null;
  if (state.album) {
    $("drop-text").textContent = `${files.length} photos of one place`;
    $("explain-btn").disabled = false;
    return album();
  }
  const file = files[0];
  state.file = file;
  $("drop-text").textContent = file.name;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  state.previewable = true;
  img.onerror = () => {  // e.g. HEIC, which the server reads and most browsers cannot show
    state.previewable = false;
    img.hidden = true;
    $("drop-text").textContent = `${file.name} (this browser cannot preview it)`;
  };
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("explain-btn").disabled = false;
  explain();
}

$("file").addEventListener("change", (ev) => choose(ev.target.files));
const drop = $("drop");
for (const t of ["dragenter", "dragover"]) {
  drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
}
for (const t of ["dragleave", "drop"]) {
  drop.addEventListener(t, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (ev) => { ev.preventDefault(); choose(ev.dataTransfer.files); });
$("photo-form").addEventListener("submit", (ev) => { ev.preventDefault(); explain(); });
$("where-form").addEventListener("submit", (ev) => { ev.preventDefault(); where($("where-text").value); });
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("api-key").value;
  sessionStorage.setItem("geoconcept-key", state.key);
  $("key-form").hidden = true;
  start();
});

// what the map drew where, with its hover label (for scripts and the browser test)
window.geoconcept = { hits: () => state.hits.map((h) => ({ ...h })) };
start();
