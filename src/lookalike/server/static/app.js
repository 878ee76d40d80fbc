// lookalike web page: no build step, no dependencies; talks to the JSON API of the same server.
"use strict";
const $ = (sel) => document.querySelector(sel);
const state = { collections: [], models: {}, busy: 0 };

async function api(path, options) {
  const response = await fetch(path, options);
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function current() {
  return state.collections.find((c) => c.name === $("#collection").value);
}

function showStats() {
  const c = current();
  $("#stats").textContent = c
    ? `${c.count} images · ${c.model} (${c.dim}-d ${c.metric}) · ${c.index_type || c.index_spec} · ${humanBytes(c.size_bytes)}`
    : "no collections yet: index a folder with `lookalike index PATH`";
  $("#text-form").hidden = !(c && c.text);
}

async function loadCollections() {
  const data = await api("/api/collections");
  state.collections = data.collections;
  const select = $("#collection");
  select.innerHTML = "";
  for (const c of state.collections) {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = `${c.name} (${c.count})`;
    select.appendChild(option);
  }
  const wanted = new URLSearchParams(location.search).get("collection") || localStorage.getItem("lookalike.collection");
  const fallback = state.collections.find((c) => c.count > 0) || state.collections[0];
  const chosen = state.collections.find((c) => c.name === wanted) || fallback;
  if (chosen) select.value = chosen.name;
  showStats();
}

function showPreview(url) {
  const img = $("#preview");
  img.src = url;
  img.hidden = false;
  $("#drop-hint").textContent = "Drop, paste or pick another image";
}

function render(data) {
  const grid = $("#results");
  grid.innerHTML = "";
  const template = $("#hit");
  for (const hit of data.results) {
    const node = template.content.firstElementChild.cloneNode(true);
    const name = hit.external_id || hit.path.split(/[\\/]/).pop();
    node.dataset.id = hit.id;
    node.dataset.path = hit.path;
    node.dataset.score = hit.score;
    node.querySelector("img").src = hit.thumbnail_url;
    node.querySelector("img").alt = name;
    node.querySelector(".score").textContent = hit.score.toFixed(3);
    node.querySelector(".name").textContent = name;
    if (hit.query_box || hit.box) {
      node.title = `${hit.path}\nmatched by ${hit.query_box ? `query region ${hit.query_box.join(",")}` : "the whole query"}`
        + (hit.box ? `, its region ${hit.box.join(",")}` : "");
      node.addEventListener("mouseenter", () => { if (hit.query_box && !state.box) showBox(hit.query_box); });
      node.addEventListener("mouseleave", () => showBox(state.box));
    }
    node.title = `${hit.path}\nclick: more like this`;
    const more = () => searchById(hit.id, hit.thumbnail_url);
    node.addEventListener("click", more);
    node.addEventListener("keydown", (e) => { if (e.key === "Enter") more(); });
    grid.appendChild(node);
  }
  setStatus(data.results.length
    ? `${data.results.length} results in ${Math.round(data.took_ms)} ms`
    : "no results");
  grid.dataset.state = "done";
}

async function runSearch(body, headers) {
  const grid = $("#results");
  grid.dataset.state = "searching";
  setStatus("searching…");
  try {
    render(await api("/api/search", { method: "POST", body, headers }));
  } catch (err) {
    grid.innerHTML = "";
    grid.dataset.state = "error";
    setStatus(err.message, true);
  }
}

function common() {
  return { collection: $("#collection").value, k: Number($("#k").value) };
}

function imageOptions() {
  const options = { rotation_invariant: $("#rotations").checked };
  if (state.box) options.box = state.box.join(",");
  else if ($("#objects").checked) options.objects = true;
  return options;
}

// A box drawn on the query picture (in its own pixels) searches with that region only.
function showBox(box) {
  const img = $("#preview");
  const mark = $("#box");
  if (!box || img.hidden || !img.naturalWidth) { mark.hidden = true; return; }
  const sx = img.clientWidth / img.naturalWidth;
  const sy = img.clientHeight / img.naturalHeight;
  Object.assign(mark.style, { left: `${img.offsetLeft + box[0] * sx}px`, top: `${img.offsetTop + box[1] * sy}px`,
                              width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` });
  mark.hidden = false;
}

function wireBoxDrawing() {
  const img = $("#preview");
  let start = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    const x = Math.min(Math.max(e.clientX - r.left, 0), r.width) * img.naturalWidth / r.width;
    const y = Math.min(Math.max(e.clientY - r.top, 0), r.height) * img.naturalHeight / r.height;
    return [Math.round(x), Math.round(y)];
  };
  const current = (e) => {
    const [x, y] = at(e);
    return [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)];
  };
  img.addEventListener("pointerdown", (e) => { e.preventDefault(); start = at(e); img.setPointerCapture(e.pointerId); });
  img.addEventListener("pointermove", (e) => { if (start) showBox(current(e)); });
  img.addEventListener("pointerup", (e) => {
    if (!start) return;
    const box = current(e);
    start = null;
    const big = box[2] - box[0] >= 8 && box[3] - box[1] >= 8;
    state.box = big ? box : null;  // a click (no drag) goes back to the whole picture
    showBox(state.box);
    if (state.last) state.last();
  });
  img.addEventListener("click", (e) => e.preventDefault());  // the picture is inside the file picker's label
}

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`, true); return; }
  if (state.lastFile !== file) { state.box = null; showBox(null); }
  state.lastFile = file;
  showPreview(URL.createObjectURL(file));
  const form = new FormData();
  form.append("file", file);
  const { collection, k } = common();
  form.append("collection", collection);
  form.append("k", String(k));
  const options = imageOptions();
  form.append("rotation_invariant", String(options.rotation_invariant));
  if (options.box) form.append("box", options.box);
  if (options.objects) form.append("objects", "true");
  state.last = () => searchFile(file);
  return runSearch(form);
}

function searchById(id, thumbnailUrl) {
  state.box = null;
  showBox(null);
  showPreview(thumbnailUrl);
  state.last = null; // ids belong to one collection: changing it does not re-run this search
  window.scrollTo({ top: 0, behavior: "smooth" });
  return runSearch(JSON.stringify({ ...common(), ...imageOptions(), id }), { "Content-Type": "application/json" });
}

function searchText(text) {
  if (!text.trim()) return;
  $("#preview").hidden = true;
  state.last = () => searchText(text);
  return runSearch(JSON.stringify({ ...common(), text }), { "Content-Type": "application/json" });
}

function wire() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  document.addEventListener("drop", (e) => searchFile(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("#file").click(); });
  $("#text-form").addEventListener("submit", (e) => { e.preventDefault(); searchText($("#text").value); });
  $("#collection").addEventListener("change", () => {
    localStorage.setItem("lookalike.collection", $("#collection").value);
    showStats();
    $("#results").innerHTML = "";
    if (state.last) state.last();
  });
  $("#k").addEventListener("change", () => { if (state.last) state.last(); });
  $("#rotations").addEventListener("change", () => { if (state.last) state.last(); });
  $("#objects").addEventListener("change", () => { if (state.last) state.last(); });
  wireBoxDrawing();
}

wire();
loadCollections().catch((err) => setStatus(`cannot load collections: ${err.message}`, true));
