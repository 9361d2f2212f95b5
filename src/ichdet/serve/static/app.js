// ichdet web page: worklist, upload, viewer. No framework, no CDN: hospitals run offline.
"use strict";

const LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"];
const COLORS = ["#8c564b", "#d62728", "#9467bd", "#2ca02c", "#ff7f0e", "#000000"];
const state = { study: null, n: 0, window: "brain", overlay: false, segmentation: false, imageUrl: null, sort: "triage", search: "" };
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("ichdet-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("a token is needed");
  }
  return response;
}

$("token-save").addEventListener("click", () => {
  sessionStorage.setItem("ichdet-token", $("token").value);
  $("token-box").hidden = true;
  refresh();
});

function fmtTime(seconds) { return new Date(seconds * 1000).toLocaleString(); }

function flagText(item) {
  if (!item.flags) return "";
  return LABELS.filter((k) => k !== "any" && item.flags[k]).join(", ") || (item.flags.any ? "any" : "-");
}

function unassessableRow(item) {
  const row = document.createElement("tr");
  row.dataset.id = item.id;
  row.className = "unassessable" + (state.study && state.study.id === item.id ? " selected" : "");
  for (const text of [fmtTime(item.received), "NOT ASSESSABLE: " + item.not_assessable]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  row.addEventListener("click", () => openStudy(item.id));
  return row;
}

async function refresh() {
  try {
    const query = new URLSearchParams({ limit: "200", sort: state.sort, q: state.search });
    const response = await api("/api/v1/studies?" + query.toString());
    if (!response.ok) return;
    const data = await response.json();
    const body = $("worklist").querySelector("tbody");
    const apart = $("unassessable").querySelector("tbody");
    body.innerHTML = "";
    apart.innerHTML = "";
    for (const item of data.items) {
      if (item.assessable === false) {
        apart.appendChild(unassessableRow(item));
        continue;
      }
      const row = document.createElement("tr");
      row.dataset.id = item.id;
      row.className = (item.flags && item.flags.any ? "flagged" : "") + (state.study && state.study.id === item.id ? " selected" : "");
      const p = item.probabilities ? item.probabilities.any.toFixed(3) : "";
      const who = item.patient || {};
      const cells = [who.patient_name, who.patient_id, who.accession, who.study_date, who.description, item.series_read,
        fmtTime(item.received), item.status + (item.reason ? " (" + item.reason + ")" : ""), p, flagText(item)].map((t) => t || "");
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      row.addEventListener("click", () => openStudy(item.id));
      body.appendChild(row);
    }
    $("health").textContent = data.total + " studies";
  } catch (e) { /* token missing: the box is shown */ }
}

function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, "upload");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v1/studies");
  if (token()) xhr.setRequestHeader("Authorization", "Bearer " + token());
  $("progress").hidden = false;
  $("progress").value = 0;
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) $("progress").value = (100 * e.loaded) / e.total; };
  xhr.onload = () => {
    $("progress").value = 100;
    let answer = {};
    try { answer = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    $("upload-status").textContent = xhr.status === 202
      ? "queued " + [].concat(answer).length + " study(s)"
      : "refused: " + (answer.detail || xhr.status);
    refresh();
  };
  xhr.onerror = () => { $("upload-status").textContent = "upload failed"; };
  xhr.send(form);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); });
$("file-input").addEventListener("change", (e) => upload(e.target.files));

async function openStudy(id) {
  const response = await api("/api/v1/studies/" + id);
  if (!response.ok) return;
  const study = await response.json();
  state.study = study;
  $("viewer").hidden = false;
  $("study-title").textContent = id.slice(0, 8) + " (" + study.status + ")";
  $("warning").hidden = !study.warning;
  $("warning").textContent = study.warning ? "WARNING: " + study.warning : "";
  $("notes").textContent = study.notes ? "Input quality: " + study.notes : "";
  volumes(study.segmentation);
  if (study.status !== "done") return;
  if (study.assessable === false) {
    $("warning").hidden = false;
    $("warning").textContent = "NOT ASSESSABLE: " + study.not_assessable + " (no probability is given). Series: " +
      (study.series || []).map((s) => s.series + " (" + s.reason + ")").join("; ");
    $("summary").querySelector("tbody").innerHTML = "";
    $("slice").removeAttribute("src");
    $("slice-label").textContent = "";
    return;
  }
  state.n = study.key_slices.any;
  summary();
  show();
  refresh();
}

function summary() {
  const body = $("summary").querySelector("tbody");
  body.innerHTML = "";
  for (const k of LABELS) {
    const row = document.createElement("tr");
    row.className = state.study.flags[k] ? "flag" : "";
    const link = document.createElement("a");
    link.href = "#";
    link.className = "key-slice";
    link.dataset.n = state.study.key_slices[k];
    link.textContent = "slice " + (state.study.key_slices[k] + 1);
    link.addEventListener("click", (e) => { e.preventDefault(); state.n = Number(link.dataset.n); show(); });
    for (const text of [k, state.study.probabilities[k].toFixed(3), state.study.flags[k] ? "FLAG" : "-"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    const cell = document.createElement("td");
    cell.appendChild(link);
    row.appendChild(cell);
    body.appendChild(row);
  }
}

function volumes(seg) {
  $("seg-control").hidden = !seg;
  $("volumes").hidden = !seg;
  if (!seg) { state.segmentation = false; $("seg-overlay").checked = false; return; }
  const parts = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"]
    .filter((k) => seg["volume_ml_" + k] > 0)
    .map((k) => k + " " + seg["volume_ml_" + k].toFixed(1) + " mL");
  let text = "Blood volume (segmentation): " + seg.volume_ml_any.toFixed(1) + " mL";
  if (parts.length) text += " (" + parts.join(", ") + ")";
  for (const k of ["subdural", "epidural"]) {
    if (seg["thickness_mm_" + k] > 0) text += "; " + k + " up to " + seg["thickness_mm_" + k].toFixed(1) + " mm thick";
  }
  $("volumes").textContent = text;
}

function overlayName() {
  return state.segmentation ? "segmentation" : state.overlay ? "heatmap" : "none";
}

async function show() {
  const s = state.study;
  const count = s.slices.length;
  state.n = Math.max(0, Math.min(count - 1, state.n));
  $("slice-label").textContent = "slice " + (state.n + 1) + " / " + count;
  $("report-link").onclick = (e) => { e.preventDefault(); openReport(s.id); };
  plot();
  const url = "/api/v1/studies/" + s.id + "/slices/" + state.n + ".png?window=" + state.window +
    "&overlay=" + overlayName();
  const response = await api(url);
  if (!response.ok) return;
  const blob = await response.blob();
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(blob);
  const img = $("slice");
  img.dataset.n = state.n;
  img.dataset.window = state.window;
  img.dataset.overlay = overlayName();
  img.src = state.imageUrl;
}

async function openReport(id) {
  const response = await api("/api/v1/studies/" + id + "/report");
  if (!response.ok) return;
  const url = URL.createObjectURL(await response.blob());
  window.open(url, "_blank");
}

function plot() {
  const canvas = $("plot");
  const ctx = canvas.getContext("2d");
  const slices = state.study.slices;
  const w = canvas.width, h = canvas.height, pad = 20;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(pad, pad / 2, w - 2 * pad, h - 1.5 * pad);
  const x = (i) => pad + ((w - 2 * pad) * i) / Math.max(1, slices.length - 1);
  const y = (p) => h - pad + (-(h - 1.5 * pad)) * p;
  LABELS.forEach((k, j) => {
    ctx.strokeStyle = COLORS[j];
    ctx.lineWidth = k === "any" ? 2 : 1;
    ctx.beginPath();
    slices.forEach((s, i) => { const px = x(i), py = y(s.probabilities[k]); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  });
  ctx.strokeStyle = "#06c";
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(x(state.n), pad / 2);
  ctx.lineTo(x(state.n), h - pad);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "#444";
  ctx.fillText("probability along z (slice " + (state.n + 1) + ")", pad, h - 4);
  ctx.fillText("1", 6, pad / 2 + 8);
  ctx.fillText("0", 6, h - pad);
  LABELS.forEach((k, j) => {  // legend
    ctx.fillStyle = COLORS[j];
    ctx.fillText(k, w - pad - 95, pad + 12 * (j + 1));
  });
}

$("slice").addEventListener("wheel", (e) => { e.preventDefault(); if (!state.study) return; state.n += e.deltaY > 0 ? 1 : -1; show(); });
document.addEventListener("keydown", (e) => {
  if (!state.study || !state.study.slices) return;
  if (e.key === "ArrowDown" || e.key === "ArrowRight") { state.n += 1; show(); e.preventDefault(); }
  if (e.key === "ArrowUp" || e.key === "ArrowLeft") { state.n -= 1; show(); e.preventDefault(); }
});
for (const button of document.querySelectorAll("button.window")) {
  button.addEventListener("click", () => {
    state.window = button.dataset.window;
    for (const b of document.querySelectorAll("button.window")) b.classList.toggle("active", b === button);
    if (state.study) show();
  });
}
$("overlay").addEventListener("change", (e) => { state.overlay = e.target.checked; if (state.study) show(); });
$("seg-overlay").addEventListener("change", (e) => { state.segmentation = e.target.checked; if (state.study) show(); });

for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
  th.addEventListener("click", () => {  // a column sorts ascending, again descending, again triage
    const key = th.dataset.sort;
    state.sort = state.sort === key ? "-" + key : state.sort === "-" + key ? "triage" : key;
    for (const other of document.querySelectorAll("#worklist th")) other.classList.remove("asc", "desc");
    if (state.sort !== "triage") th.classList.add(state.sort.startsWith("-") ? "desc" : "asc");
    refresh();
  });
}
$("search").addEventListener("input", (e) => { state.search = e.target.value.trim(); refresh(); });

refresh();
setInterval(async () => {
  await refresh();
  if (state.study && state.study.status !== "done" && state.study.status !== "failed") openStudy(state.study.id);
}, 2000);
