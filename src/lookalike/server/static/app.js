// lookalike web page: no build step, no dependencies; talks to the JSON API of the same server.
"use strict";
const $ = (sel) => document.querySelector(sel);
const state = { collections: [], query: 0, box: null, region: null, regions: null, picture: null };
const KEY_STORE = "lookalike.api-key";

async function api(path, options) {
  const response = await fetch(path, options);
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const err = new Error(body.message || `${response.status} ${response.statusText}`);
    err.status = response.status;
    err.code = body.error;
    throw err;
  }
  return body;
}

// A write (the copies review): sends the API key if this tab has one; asked for once on 401/403.
async function write(path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers["X-API-Key"] = key;
    try {
      return await api(path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (err) {
      if (attempt > 0 || !["unauthorized", "forbidden"].includes(err.code)) throw err;  // not about the key
      const given = window.prompt(`${err.message}\nThis server's API key:`);
      if (!given) throw err;
      sessionStorage.setItem(KEY_STORE, given);
    }
  }
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

const baseName = (path) => path.split(/[\\/]/).pop();

function setStatus(text, isError = false, el = $("#status")) {
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

// -- search -------------------------------------------------------------------------------------
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
    const name = hit.external_id || baseName(hit.path);
    node.dataset.id = hit.id;
    node.dataset.path = hit.path;
    node.dataset.score = hit.score;
    node.querySelector("img").src = hit.thumbnail_url;
    node.querySelector("img").alt = name;
    node.querySelector(".score").textContent = hit.score.toFixed(3);
    node.querySelector(".name").textContent = name;
    node.title = `${hit.path}\nclick: more like this`;
    if (hit.query_box || hit.box) {
      node.title += `\nmatched by ${hit.query_box ? `query region ${hit.query_box.join(",")}` : "the whole query"}`
        + (hit.box ? `, its region ${hit.box.join(",")}` : "");
      node.addEventListener("mouseenter", () => { if (hit.query_box && !state.box) showBox(hit.query_box); });
      node.addEventListener("mouseleave", () => showBox(state.box));
    }
    const more = () => searchById(hit);
    node.addEventListener("click", more);
    node.addEventListener("keydown", (e) => { if (e.key === "Enter") more(); });
    grid.appendChild(node);
  }
  const how = data.box ? ` · searched with region ${data.box}` : data.objects ? " · with the objects found" : "";
  setStatus(data.results.length
    ? `${data.results.length} results in ${Math.round(data.took_ms)} ms${how}`
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

// A new query picture: its box, regions and size belong to the old one.
function newQuery(regionSource = null) {
  state.query++;
  state.box = null;
  state.region = null;
  state.regions = null;
  state.picture = null;
  state.regionSource = regionSource;
  state.regionsLoading = null;
  drawRegions();
  showBox(null);
}

// Boxes are in the query picture's own pixels. An uploaded file is shown as it is; an indexed image as its
// thumbnail, so its size comes from the server (with its regions).
function pictureSize() {
  const img = $("#preview");
  return state.picture || [img.naturalWidth, img.naturalHeight];
}

function place(el, box) {
  const img = $("#preview");
  const [pw, ph] = pictureSize();
  const sx = img.clientWidth / pw;
  const sy = img.clientHeight / ph;
  Object.assign(el.style, { left: `${img.offsetLeft + box[0] * sx}px`, top: `${img.offsetTop + box[1] * sy}px`,
                            width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` });
}

function showBox(box) {
  const img = $("#preview");
  const mark = $("#box");
  if (!box || img.hidden || !img.naturalWidth) { mark.hidden = true; return; }
  place(mark, box);
  mark.hidden = false;
}

// The objects found in the query picture (POST /api/regions), drawn over it as buttons: a click
// searches with that region alone; a click on the selected one goes back to the whole picture.
const SHOWN_REGIONS = 8;

function drawRegions() {
  const layer = $("#regions");
  layer.innerHTML = "";
  const img = $("#preview");
  if (!state.regions || !$("#objects").checked || img.hidden || !img.naturalWidth) return;
  for (const region of state.regions) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "region";
    const label = region.label || "region";
    button.dataset.box = region.box.join(",");
    button.dataset.source = region.source;
    button.dataset.label = region.label;
    button.title = `${label}${region.label ? ` (${region.score.toFixed(2)})` : ""}: click to search with it alone`;
    button.setAttribute("aria-label", `search with ${label} at ${region.box.join(",")}`);
    button.classList.toggle("selected", state.region === button.dataset.box);
    button.classList.toggle("detected", Boolean(region.label));
    const tag = document.createElement("span");
    tag.textContent = region.label || "";
    button.appendChild(tag);
    place(button, region.box);
    layer.appendChild(button);
  }
}

function loadRegions() {  // one request per query picture, shared by whoever waits for it
  if (!state.regionsLoading && state.regionSource) state.regionsLoading = fetchRegions(state.regionSource);
  return state.regionsLoading || Promise.resolve();
}

async function fetchRegions(source) {
  const query = state.query;
  try {
    const data = await api("/api/regions", source());
    if (query !== state.query) return;  // the user moved on meanwhile
    state.picture = [data.width, data.height];
    const area = (r) => (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]);
    // the best few, not the window grid; the larger drawn first, so a small one on a big one stays clickable
    state.regions = data.regions.filter((r) => r.source !== "window").slice(0, SHOWN_REGIONS)
      .sort((a, b) => area(b) - area(a));
    drawRegions();
    showBox(state.box);
  } catch (err) {
    if (query !== state.query) return;
    state.regionsLoading = null;  // the next search may try again
    setStatus(`cannot find objects: ${err.message}`, true);
  }
}

function chooseBox(box, region = null) {
  state.box = box;
  state.region = region;
  showBox(box);
  drawRegions();
  if (state.again) state.again();
}

function wireBoxDrawing() {
  const frame = $("#query-frame");
  const img = $("#preview");
  let start = null;
  let downOn = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    const [pw, ph] = pictureSize();
    const x = Math.min(Math.max(e.clientX - r.left, 0), r.width) * pw / r.width;
    const y = Math.min(Math.max(e.clientY - r.top, 0), r.height) * ph / r.height;
    return [Math.round(x), Math.round(y)];
  };
  const dragged = (e) => {
    const [x, y] = at(e);
    return [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)];
  };
  const pickRegion = (button) => {
    const box = button.dataset.box;
    if (state.region === box) chooseBox(null);  // the selected one again: back to the whole picture
    else chooseBox(box.split(",").map(Number), box);
  };
  frame.addEventListener("pointerdown", (e) => {
    if (img.hidden || !img.naturalWidth || e.button !== 0) return;
    e.preventDefault();
    start = at(e);
    downOn = e.target.closest(".region");
    frame.setPointerCapture(e.pointerId);
  });
  frame.addEventListener("pointermove", (e) => { if (start) showBox(dragged(e)); });
  frame.addEventListener("pointerup", (e) => {
    if (!start) return;
    const box = dragged(e);
    start = null;
    const [pw, ph] = pictureSize();
    const big = (box[2] - box[0]) * img.clientWidth / pw >= 8 && (box[3] - box[1]) * img.clientHeight / ph >= 8;
    if (big && !state.picture && state.lastFile === null) {  // drawn on a thumbnail: to the picture's pixels
      const natural = [img.naturalWidth, img.naturalHeight];
      loadRegions().then(() => {
        if (!state.picture) return;
        const s = [state.picture[0] / natural[0], state.picture[1] / natural[1]];
        chooseBox(box.map((v, i) => Math.min(Math.round(v * s[i % 2]), state.picture[i % 2])));
      });
    } else if (big) chooseBox(box);
    else if (downOn) pickRegion(downOn);
    else chooseBox(null);  // a click on the bare picture goes back to the whole picture
  });
  frame.addEventListener("click", (e) => {
    e.preventDefault();  // the picture is inside the file picker's label
    const button = e.target.closest(".region");
    if (button && e.detail === 0) pickRegion(button);  // a keyboard "click" (Enter / Space)
  });
  img.addEventListener("load", () => { drawRegions(); showBox(state.box); });
  window.addEventListener("resize", () => { drawRegions(); showBox(state.box); });
}

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`, true); return; }
  const form = () => {
    const body = new FormData();
    body.append("file", file);
    body.append("collection", $("#collection").value);
    return body;
  };
  if (state.lastFile !== file) {
    newQuery(() => ({ method: "POST", body: form() }));
    state.lastFile = file;
    showPreview(URL.createObjectURL(file));
  }
  if ($("#objects").checked && !state.regions) loadRegions();
  const body = form();
  const { k } = common();
  body.append("k", String(k));
  const options = imageOptions();
  body.append("rotation_invariant", String(options.rotation_invariant));
  if (options.box) body.append("box", options.box);
  if (options.objects) body.append("objects", "true");
  state.last = state.again = () => searchFile(file);
  return runSearch(body);
}

function searchById(hit, fresh = true) {
  if (fresh) {
    const collection = $("#collection").value;
    newQuery(() => ({ method: "POST", headers: { "Content-Type": "application/json" },
                      body: JSON.stringify({ id: hit.id, collection }) }));
    state.lastFile = null;
    showPreview(hit.thumbnail_url);
    window.scrollTo({ top: 0, behavior: "smooth" });
  }
  if ($("#objects").checked && !state.regions) loadRegions();
  state.last = null; // ids belong to one collection: changing it does not re-run this search
  state.again = () => searchById(hit, false);
  return runSearch(JSON.stringify({ ...common(), ...imageOptions(), id: hit.id }),
                   { "Content-Type": "application/json" });
}

function searchText(text) {
  if (!text.trim()) return;
  newQuery();
  state.lastFile = null;
  $("#preview").hidden = true;
  state.last = () => searchText(text);
  state.again = null;
  return runSearch(JSON.stringify({ ...common(), text }), { "Content-Type": "application/json" });
}

function objectsChanged() {
  if (!$("#objects").checked && state.region) { state.box = null; state.region = null; showBox(null); }
  drawRegions();
  if (state.again) state.again();
  else if (state.last) state.last();
}

// -- copies: review the groups of a dupes job ---------------------------------------------------
const review = { job: null, timer: null };

function copiesStatus(text, isError = false) { setStatus(text, isError, $("#copies-status")); }

async function findCopies() {
  const collection = $("#collection").value;
  if (!collection) return;
  clearTimeout(review.timer);
  $("#find-copies").disabled = true;
  $("#groups").dataset.state = "running";
  copiesStatus("looking for copies…");
  const progress = $("#copies-progress");
  progress.hidden = false;
  progress.removeAttribute("value");
  try {
    let job = await api(`/api/collections/${encodeURIComponent(collection)}/dupes`, { method: "POST" });
    review.job = job.id;
    while (job.state === "running") {
      await new Promise((resolve) => { review.timer = setTimeout(resolve, 300); });
      if (review.job !== job.id) return;  // a newer run took over
      job = await api(`/api/dupes/${job.id}`);
      if (job.total) {
        progress.value = job.progress;
        copiesStatus(`${job.stage}: ${job.done} of ${job.total}`);
      }
    }
    if (job.state !== "done") throw new Error(job.error ? job.error.message : `the job ${job.state}`);
    renderGroups(job.result);
  } catch (err) {
    $("#groups").dataset.state = "error";
    copiesStatus(err.message, true);
  } finally {
    progress.hidden = true;
    $("#find-copies").disabled = false;
  }
}

function evidenceLine(e) {
  const parts = [`#${e.a} ~ #${e.b}: score ${e.score.toFixed(3)}`, `decided by ${e.check}`];
  if (e.check === "geometry") {
    parts.push(`${e.inliers} inliers of ${e.matches} matches`, `correlation ${e.ncc.toFixed(2)}`);
    if (e.mirrored) parts.push("mirrored");
    if (Math.abs(e.rotation) >= 1) parts.push(`turned ${Math.round(e.rotation)}°`);
  }
  if (e.check === "phash") parts.push(`pHash distance ${e.phash_distance}`);
  return parts.join(" · ");
}

function renderGroups(result) {
  const holder = $("#groups");
  holder.innerHTML = "";
  const collection = result.collection;
  result.groups.forEach((group, n) => {
    const node = $("#group").content.firstElementChild.cloneNode(true);
    node.dataset.ids = group.images.map((r) => r.id).join(",");
    node.dataset.keep = group.keep;
    node.querySelector("h2").textContent = `Group ${n + 1}: ${group.images.length} pictures`;
    const members = node.querySelector(".members");
    for (const image of group.images) {
      const member = $("#member").content.firstElementChild.cloneNode(true);
      member.dataset.id = image.id;
      member.title = image.path;
      const img = member.querySelector("img");
      img.src = `/api/collections/${encodeURIComponent(collection)}/images/${image.id}/thumbnail`;
      img.alt = baseName(image.path);
      const radio = member.querySelector("input");
      radio.name = `keep-${n}`;
      radio.value = image.id;
      radio.checked = image.id === group.keep;
      member.classList.toggle("suggested", image.id === group.keep);
      member.querySelector(".meta").textContent = `#${image.id} · ${image.width}×${image.height} · ${humanBytes(image.size)}`;
      member.querySelector(".name").textContent = baseName(image.path);
      members.appendChild(member);
    }
    const list = node.querySelector(".evidence");
    for (const e of group.evidence) {
      const li = document.createElement("li");
      li.textContent = evidenceLine(e);
      list.appendChild(li);
    }
    node.querySelector(".keep").addEventListener("click", () => planKeep(node, collection));
    node.querySelector(".skip").addEventListener("click", () => {
      settle(node, "skipped", "Skipped for now: the next run shows this group again.");
    });
    node.querySelector(".not-dup").addEventListener("click", () => notDuplicates(node, collection));
    holder.appendChild(node);
  });
  const s = result.stats;
  copiesStatus(result.groups.length
    ? `${s.groups} group(s), ${s.images_in_groups} of ${s.images} pictures · ${s.candidate_pairs} candidate pairs, `
      + `${s.verified_pairs} checked · ${s.seconds.total.toFixed(1)} s`
      + (s.resolved_groups_left_out ? ` · ${s.resolved_groups_left_out} resolved group(s) left out` : "")
    : `no copies among ${s.images} pictures`
      + (s.resolved_groups_left_out ? ` (${s.resolved_groups_left_out} resolved group(s) left out)` : ""));
  holder.dataset.state = "done";
}

function groupIds(node) { return node.dataset.ids.split(",").map(Number); }

// A group dealt with: its buttons are gone, what happened stays in view.
function settle(node, how, text) {
  node.classList.add(how);
  node.dataset.outcome = how;
  for (const b of node.querySelectorAll(".actions button, input")) b.disabled = true;
  const outcome = node.querySelector(".outcome");
  outcome.textContent = text;
  outcome.classList.remove("error");
}

function groupError(node, err) {
  const outcome = node.querySelector(".outcome");
  outcome.textContent = err.message;
  outcome.classList.add("error");
}

async function notDuplicates(node, collection) {
  try {
    await write(`/api/collections/${encodeURIComponent(collection)}/not-duplicates`, { ids: groupIds(node) });
    settle(node, "not-duplicates", "Remembered: these pictures are not copies and will not be grouped again.");
  } catch (err) { groupError(node, err); }
}

// Keep: first the plan (nothing changes), then a confirmation that carries it out.
async function planKeep(node, collection) {
  const keep = Number(node.querySelector("input:checked").value);
  const url = `/api/collections/${encodeURIComponent(collection)}/dupes/keep`;
  const body = { ids: groupIds(node), keep };
  let plan;
  try { plan = await write(url, body); } catch (err) { groupError(node, err); return; }
  const outcome = node.querySelector(".outcome");
  outcome.classList.remove("error");
  outcome.innerHTML = "";
  const list = document.createElement("ul");
  for (const a of plan.actions) {
    const li = document.createElement("li");
    li.textContent = `${baseName(a.path)} → the library's trash`;
    li.title = `${a.path} → ${a.target}`;
    list.appendChild(li);
  }
  for (const s of plan.skipped) {
    const li = document.createElement("li");
    li.textContent = `left alone: ${baseName(s.path)}: ${s.reason}`;
    list.appendChild(li);
  }
  const head = document.createElement("p");
  head.textContent = plan.actions.length
    ? `Keep ${baseName(plan.kept[0] || "")}: ${plan.actions.length} picture(s) would move to the library's trash.`
    : "Nothing to move.";
  outcome.append(head, list);
  if (!plan.actions.length) return;
  const confirm = document.createElement("button");
  confirm.type = "button";
  confirm.className = "confirm";
  confirm.textContent = `Move ${plan.actions.length} to the trash`;
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "cancel secondary";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => { outcome.innerHTML = ""; });
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    try {
      const done = await write(url, { ...body, apply: true });
      settle(node, "kept", `Kept ${baseName(done.kept[0] || "")}; ${done.actions.length} moved to the library's trash. `
        + `Undo: lookalike dupes --undo ${done.manifest}`);
      node.querySelectorAll(".member").forEach((m) => {
        m.classList.toggle("gone", done.actions.some((a) => Number(m.dataset.id) === a.image_id));
      });
    } catch (err) { confirm.disabled = false; groupError(node, err); }
  });
  const buttons = document.createElement("div");
  buttons.className = "actions";
  buttons.append(confirm, cancel);
  outcome.append(buttons);
}

// -- views --------------------------------------------------------------------------------------
function showView() {
  const copies = location.hash === "#copies";
  $("#search-view").hidden = copies;
  $("#copies-view").hidden = !copies;
  for (const [tab, on] of [["#tab-search", !copies], ["#tab-copies", copies]]) {
    if (on) $(tab).setAttribute("aria-current", "page");
    else $(tab).removeAttribute("aria-current");
  }
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
  drop.addEventListener("keydown", (e) => {
    if (e.target === drop && (e.key === "Enter" || e.key === " ")) $("#file").click();
  });
  $("#text-form").addEventListener("submit", (e) => { e.preventDefault(); searchText($("#text").value); });
  $("#collection").addEventListener("change", () => {
    localStorage.setItem("lookalike.collection", $("#collection").value);
    showStats();
    $("#results").innerHTML = "";
    $("#groups").innerHTML = "";
    copiesStatus("");
    if (state.last) state.last();
  });
  const rerun = () => { if (state.again) state.again(); else if (state.last) state.last(); };
  $("#k").addEventListener("change", rerun);
  $("#rotations").addEventListener("change", rerun);
  $("#objects").addEventListener("change", objectsChanged);
  $("#find-copies").addEventListener("click", findCopies);
  window.addEventListener("hashchange", showView);
  wireBoxDrawing();
  showView();
}

wire();
loadCollections().catch((err) => setStatus(`cannot load collections: ${err.message}`, true));
