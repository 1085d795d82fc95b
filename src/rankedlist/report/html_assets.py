"""The style and script inlined into ``report.html`` (no CDN, no network: one file).

The script reads the page's JSON data block and builds every element with ``textContent`` and
``setAttribute`` only, never ``innerHTML``: class names and paths are the user's text and must
show as text, whatever they hold.
"""

PAGE_STYLE = """
:root { --right: #1a9641; --wrong: #d7191c; --ink: #222; --muted: #666; --line: #ddd; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans",
  "Noto Sans CJK SC", "Noto Sans Devanagari", "Noto Sans Arabic", sans-serif; color: var(--ink);
  margin: 0 auto; max-width: 1180px; padding: 0 18px 40px; line-height: 1.4; }
h1 { margin: 18px 0 4px; font-size: 1.6em; } h2 { margin-top: 34px; border-bottom: 1px solid
  var(--line); padding-bottom: 4px; } .subtitle { color: var(--muted); margin: 0 0 6px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; border-bottom:
  1px solid var(--line); text-align: left; } td.num, th.num { text-align: right;
  font-variant-numeric: tabular-nums; }
.note { color: var(--muted); font-size: 0.92em; } .warn { color: var(--wrong); }
.columns { display: flex; gap: 48px; flex-wrap: wrap; align-items: flex-start; }
#config-summary { display: grid; grid-template-columns: repeat(2, auto minmax(90px, auto));
  gap: 1px 12px; font-size: 0.88em; margin: 0; }
#config-summary dt { font-weight: bold; } #config-summary dd { margin: 0; }
img.curves { max-width: 100%; border: 1px solid var(--line); }
#toolbar { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 5;
  border-bottom: 1px solid var(--line); }
#filter { font-size: 1em; padding: 5px 8px; width: 320px; }
ol.queries, #pairs-list { padding: 0 6px; list-style: none; max-height: 640px; overflow-y: auto;
  border: 1px solid var(--line); margin: 0; } li.query { margin: 10px 0 16px; }
.qhead { display: flex; gap: 14px; align-items: baseline; flex-wrap: wrap; }
.strip { display: flex; gap: 6px; flex-wrap: wrap; margin-top: 4px; }
figure.cell { margin: 0; width: 84px; text-align: center; font-size: 0.78em; }
figure.cell img, figure.cell .nothumb { width: 72px; height: 72px; object-fit: contain;
  border: 4px solid #2c7bb6; display: block; margin: 0 auto; background: #fff; }
.nothumb { overflow: hidden; font-size: 0.8em; word-break: break-all; }
figure.right img, figure.right .nothumb { border-color: var(--right); }
figure.wrong img, figure.wrong .nothumb { border-color: var(--wrong); }
figure.side-a img, figure.side-a .nothumb { border-color: #2c7bb6; }
figure.side-b img, figure.side-b .nothumb { border-color: #e08214; }
figure.right .mark { color: var(--right); font-weight: bold; }
figure.wrong .mark { color: var(--wrong); font-weight: bold; }
figcaption { overflow-wrap: anywhere; } .query-cell { margin-right: 14px !important; }
.pair { margin: 10px 0 18px; } .pair .strip { align-items: center; }
.vs { font-weight: bold; padding: 0 10px; }
th button { font: inherit; background: none; border: none; cursor: pointer; padding: 0; }
#classes-wrap { max-height: 420px; overflow-y: auto; border: 1px solid var(--line); }
a.classlink { color: #1f5fa0; cursor: pointer; }
#map-wrap { position: relative; } svg#map { border: 1px solid var(--line); background: #fff; }
svg#map circle.wrong { stroke: var(--wrong); stroke-width: 2; }
#tip { position: absolute; pointer-events: none; background: #fff; border: 1px solid #999;
  padding: 4px; font-size: 0.8em; display: none; max-width: 180px; }
#tip img { display: block; width: 48px; height: 48px; object-fit: contain; }
.legend span { display: inline-block; margin: 2px 10px 2px 0; font-size: 0.85em; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
"""

PAGE_SCRIPT = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const names = data.names, thumbs = data.thumbs;
  const stats = new Map(data.classStats.map((s) => [s[0], s]));
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31"];

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") e.textContent = v; else e.setAttribute(k, String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  const name = (c) => (String(c) in names ? names[String(c)] : "class " + c);
  const pct = (v) => (100 * v).toFixed(1);
  function thumb(key, alt) {
    if (!key || !(key in thumbs)) return el("div", { class: "nothumb", text: alt });
    return el("img", { src: thumbs[key], alt: alt });
  }
  function classLink(c) {
    const a = el("a", { href: "#class-page", class: "classlink", "data-cls": c, text: name(c) });
    a.addEventListener("click", () => showClass(c));
    return a;
  }
  function cell(kind, key, cls, caption) {
    return el("figure", { class: "cell " + kind, "data-cls": cls }, thumb(key, name(cls)),
      el("figcaption", {}, ...caption));
  }
  function neighborCell(n, j) {
    const fig = cell(n.ok ? "neighbor right" : "neighbor wrong", n.thumb, n.cls, [
      el("span", { class: "mark", text: n.ok ? "\u2713" : "\u2717" }),
      " " + (j + 1) + ". ", el("span", { class: "nname", text: name(n.cls) }),
      el("br"), el("span", { class: "sim", text: "sim " + n.sim.toFixed(3) })]);
    fig.setAttribute("data-row", n.row);
    fig.setAttribute("data-correct", n.ok ? "1" : "0");
    return fig;
  }

  function renderHardest() {
    const list = document.getElementById("hardest-list");
    list.textContent = "";
    data.hardest.forEach((q, i) => {
      const li = el("li", { class: "query filterable", "data-row": q.row, "data-cls": q.cls,
        "data-ap": q.ap, "data-first": q.firstCorrect, "data-name": name(q.cls).toLowerCase() });
      li.append(el("div", { class: "qhead" }, el("strong", { text: "#" + (i + 1) }),
        classLink(q.cls), el("span", { class: "ap", text: "AP " + q.ap.toFixed(3) }),
        el("span", { text: "first correct neighbour at rank " + q.firstCorrect })));
      const strip = el("div", { class: "strip" },
        cell("query-cell", q.thumb, q.cls, [el("span", { text: "query" })]));
      q.neighbors.forEach((n, j) => strip.append(neighborCell(n, j)));
      li.append(strip);
      list.append(li);
    });
  }

  function renderPairs() {
    const box = document.getElementById("pairs-list");
    box.textContent = "";
    data.pairs.forEach((p) => {
      const both = (name(p.a) + "\n" + name(p.b)).toLowerCase();
      const div = el("div", { class: "pair filterable", "data-name": both, "data-a": p.a,
        "data-b": p.b });
      div.append(el("div", { class: "qhead" }, classLink(p.a), el("span", { class: "vs",
        text: "\u2194" }), classLink(p.b), el("span", { text: p.ab + " of " + name(p.a) +
        "'s queries rank " + name(p.b) + " first; " + p.ba + " the other way round" })));
      const strip = el("div", { class: "strip" });
      p.aImages.forEach((im) => strip.append(cell("side-a", im.thumb, p.a, [name(p.a)])));
      strip.append(el("span", { class: "vs", text: "vs" }));
      p.bImages.forEach((im) => strip.append(cell("side-b", im.thumb, p.b, [name(p.b)])));
      div.append(strip);
      box.append(div);
    });
    if (!data.pairs.length) {
      box.append(el("p", { text: "No query's nearest neighbour is of another class." }));
    }
  }

  let sortKey = 2, sortUp = true;
  function renderClasses() {
    const body = document.getElementById("classes-body");
    const rows = data.classStats.slice().sort((a, b) => {
      const x = sortKey === 0 ? name(a[0]).localeCompare(name(b[0])) : a[sortKey] - b[sortKey];
      return (sortUp ? x : -x) || a[0] - b[0];
    });
    body.textContent = "";
    for (const s of rows) {
      body.append(el("tr", { class: "filterable", "data-cls": s[0],
        "data-name": name(s[0]).toLowerCase(), "data-r1": s[2], "data-map": s[3] },
        el("td", {}, classLink(s[0])), el("td", { class: "num", text: s[1] }),
        el("td", { class: "num", text: pct(s[2]) }), el("td", { class: "num", text: pct(s[3]) })));
    }
    applyFilter();
  }
  function setupSort() {
    document.querySelectorAll("#classes th button").forEach((b) => {
      b.addEventListener("click", () => {
        const key = Number(b.getAttribute("data-key"));
        sortUp = key === sortKey ? !sortUp : key === 0;
        sortKey = key;
        renderClasses();
      });
    });
  }

  function showClass(c) {
    const box = document.getElementById("class-page");
    box.textContent = "";
    const s = stats.get(Number(c));
    box.append(el("h3", { text: name(c) }));
    if (s) box.append(el("p", { text: s[1] + " queries \u00b7 Recall@1 " + pct(s[2]) +
      " \u00b7 MAP@R " + pct(s[3]) + " (all of this class's queries)" }));
    const items = data.classPages[String(c)];
    if (!items) {
      box.append(el("p", { class: "note", text: "No thumbnails were kept for this class: pages " +
        "are kept for " + Object.keys(data.classPages).length + " classes (the worst by " +
        "Recall@1 and those named in the lists above)." }));
      return;
    }
    box.append(el("p", { class: "note", text: "Each of its first images (left) and where its " +
      "nearest neighbour lands (right)." }));
    const strip = el("div", { class: "strip" });
    items.forEach((it) => {
      strip.append(cell("query-cell", it.thumb, Number(c), [el("span", { text: "image" })]));
      strip.append(neighborCell(it.nn, 0));
    });
    box.append(strip);
  }

  function renderMap() {
    const svg = document.getElementById("map");
    const tip = document.getElementById("tip");
    const W = 820, H = 560, pad = 12;
    const ns = "http://www.w3.org/2000/svg";
    const order = [...new Set(data.map.map((p) => p[2]))];
    const color = (c) => PALETTE[order.indexOf(c) % PALETTE.length];
    for (const p of data.map) {
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", pad + p[0] * (W - 2 * pad));
      dot.setAttribute("cy", pad + (1 - p[1]) * (H - 2 * pad));
      dot.setAttribute("r", 4);
      dot.setAttribute("fill", color(p[2]));
      const wrong = p[4] !== null && p[4] !== p[2];
      if (wrong) dot.setAttribute("class", "wrong");
      dot.addEventListener("mouseenter", (ev) => {
        tip.textContent = "";
        if (p[5] && p[5] in thumbs) tip.append(el("img", { src: thumbs[p[5]], alt: name(p[2]) }));
        tip.append(el("div", { text: name(p[2]) }));
        if (p[4] !== null) tip.append(el("div", { text: "nearest: " + name(p[4]) +
          (wrong ? " \u2717" : " \u2713") }));
        tip.style.left = ev.offsetX + 14 + "px";
        tip.style.top = ev.offsetY + 14 + "px";
        tip.style.display = "block";
      });
      dot.addEventListener("mouseleave", () => { tip.style.display = "none"; });
      dot.addEventListener("click", () => { showClass(p[2]); location.hash = "class-page"; });
      svg.append(dot);
    }
    const legend = document.getElementById("map-legend");
    order.forEach((c) => legend.append(el("span", {}, el("i", { style: "background:" +
      color(c) }), name(c))));
  }

  function applyFilter() {
    const q = document.getElementById("filter").value.trim().toLowerCase();
    let shown = 0, total = 0;
    document.querySelectorAll(".filterable").forEach((e) => {
      const keep = !q || e.getAttribute("data-name").includes(q);
      e.hidden = !keep;
      total += 1;
      shown += keep ? 1 : 0;
    });
    document.getElementById("filter-count").textContent =
      q ? shown + " of " + total + " entries match" : "";
  }

  document.getElementById("filter").addEventListener("input", applyFilter);
  document.querySelectorAll(".needs-js").forEach((e) => { e.hidden = true; });
  document.getElementById("toolbar").hidden = false;
  renderHardest();
  renderPairs();
  setupSort();
  renderClasses();
  renderMap();
  if (data.hardest.length) showClass(data.hardest[0].cls);
})();
"""
