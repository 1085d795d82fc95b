"""The search page at ``GET /``: drop or pick an image, see its nearest items.

One self-contained HTML document (no script, style or font from elsewhere: it works on a
closed network). It posts the picked files to ``/search`` and shows, per query, the query
itself and its neighbours as thumbnails (``/items/{id}/thumbnail``) with their class names and
similarities; a refused upload shows the server's one-line reason.
"""

from __future__ import annotations

__all__ = ["SEARCH_PAGE"]

SEARCH_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>rankedlist search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  #about { color: #666; font-size: .85rem; margin-bottom: 1rem; }
  #drop { display: block; max-width: 36rem; border: 2px dashed #888; border-radius: 8px;
          padding: 1.2rem; text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #2a6; background: #eefbf2; }
  #controls { margin: .8rem 0; }
  #status { margin: .5rem 0; min-height: 1.2em; }
  #status.error { color: #b00; }
  .query { display: flex; gap: 1rem; align-items: flex-start; margin: 1rem 0;
           padding: .8rem; background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; }
  .query > figure img { width: 128px; height: 128px; object-fit: contain; border: 2px solid #333; }
  .hits { display: flex; flex-wrap: wrap; gap: .6rem; }
  figure { margin: 0; text-align: center; font-size: .8rem; width: 128px; }
  .hit img { width: 128px; height: 128px; object-fit: contain; background: #fff;
             border: 1px solid #ccc; }
  .class { font-weight: 600; overflow-wrap: anywhere; }
  .sim { color: #555; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>rankedlist search</h1>
<div id="about">loading the index ...</div>
<label id="drop" for="file">Drop images here, or click to pick them
  <input id="file" type="file" accept="image/*" multiple hidden>
</label>
<div id="controls">
  <label>neighbours <input id="k" type="number" min="1" value="8" style="width:4em"></label>
  &middot; <a href="docs">API</a>
</div>
<div id="status"></div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([key, value]) => node.setAttribute(key, value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function figure(src, lines, cls) {
  const fig = el("figure", {class: cls});
  fig.appendChild(el("img", {src: src, alt: lines[0]}));
  lines.forEach((line, i) => fig.appendChild(
    el("figcaption", {class: i === 0 ? "class" : "sim"}, line)));
  return fig;
}

function show(files, data) {
  const results = $("results");
  results.replaceChildren();
  data.results.forEach((result, i) => {
    const row = el("section", {class: "query"});
    row.appendChild(figure(URL.createObjectURL(files[i]), [result.query], "asked"));
    const hits = el("div", {class: "hits"});
    result.neighbors.forEach((n) => hits.appendChild(figure(
      n.thumbnail, [n.class === null ? n.item : n.class, n.similarity.toFixed(3)], "hit")));
    row.appendChild(hits);
    results.appendChild(row);
  });
}

async function search(files) {
  if (!files.length) return;
  const status = $("status");
  status.className = "";
  status.textContent = "searching ...";
  const form = new FormData();
  Array.from(files).forEach((f) => form.append("images", f, f.name));
  form.append("k", $("k").value || "8");
  try {
    const response = await fetch("search", {method: "POST", body: form});
    const data = await response.json();
    if (!response.ok) throw new Error(data.detail || response.statusText);
    show(files, data);
    status.textContent = files.length + " image(s) searched";
  } catch (err) {
    status.className = "error";
    status.textContent = err.message;
  }
}

$("file").addEventListener("change", (e) => search(e.target.files));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => search(e.dataTransfer.files));

fetch("info").then((r) => r.json()).then((info) => {
  $("about").textContent = "index " + info.index.name + ": " + info.index.size + " items, " +
    info.index.method + " search; model " + info.model.file + " (" + info.model.runtime +
    "); rankedlist " + info.version;
}).catch(() => { $("about").textContent = ""; });
</script>
</body>
</html>
"""
