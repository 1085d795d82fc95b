"""``report.html``: one self-contained page for looking at a model's mistakes.

The headline (metrics, run summary, version, training curves) is plain HTML, readable without
JavaScript; the hardest queries, confused class pairs, per-class table, class pages, embedding
map and the filter box are built by the inlined script from a JSON block. Everything is inline
(style, script, thumbnails as data URIs): the page opens from a disk or an artifact store with
no network. Every user string is escaped (``html.escape`` in the markup; ``<``, ``>`` and ``&``
as JSON escapes in the data block, which the script only ever sets as text).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist import __version__
from rankedlist.atomic_write import atomic_write_text
from rankedlist.report import markdown as md
from rankedlist.report.failure_analysis import FailureAnalysis, analyse_failures
from rankedlist.report.html_assets import PAGE_SCRIPT, PAGE_STYLE
from rankedlist.report.html_data import page_data
from rankedlist.report.run_summary import dataset_name, jsonable, run_subtitle, run_title

_METRIC_NAMES = {"r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI"}


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _metric_label(key: str) -> str:
    if key.startswith("recall@"):
        return "Recall@" + key[len("recall@") :]
    return _METRIC_NAMES.get(key, key)


def _headline_rows(fused: Mapping[str, Any]) -> list[str]:
    """One table row per metric: the percent shown, the exact fraction in ``data-value``."""
    rows = []
    for key, value in fused.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            continue
        value = float(value) if isinstance(value, float | np.floating) else int(value)
        if isinstance(value, float):
            shown = md.format_fraction_as_percent(value)
            exact = repr(value) if math.isfinite(value) else "null"
        else:
            shown = exact = str(value)
        rows.append(
            f'<tr><th scope="row">{_esc(_metric_label(key))}</th><td class="num" '
            f'data-metric="{_esc(key)}" data-value="{_esc(exact)}">{_esc(shown)}</td></tr>'
        )
    return rows


def _agreement_note(fused: Mapping[str, Any], analysis: FailureAnalysis) -> str:
    """Whether the per-query values reproduce the headline (same exact evaluation)."""
    differ = [
        k
        for k, v in analysis.metrics.items()
        if k in fused and isinstance(v, float) and isinstance(fused[k], float)
        and not (v == fused[k] or (math.isnan(v) and math.isnan(fused[k])))
    ]  # fmt: skip
    if not differ:
        return (
            '<p class="note">The per-query and per-class numbers below come from the same exact '
            "evaluation: their means are the numbers above.</p>"
        )
    return (
        '<p class="note warn">The per-query values below were recomputed on this machine and '
        f"differ from the headline in {_esc(', '.join(differ))} (last-bit ties of another back "
        "end, such as a GPU's).</p>"
    )


def _curves_html(curves_png: Path | None) -> str:
    if curves_png is None or not Path(curves_png).is_file():
        return '<p class="note">No training records were logged: no curves to draw.</p>'
    data = base64.b64encode(Path(curves_png).read_bytes()).decode("ascii")
    return f'<img class="curves" alt="Training curves" src="data:image/png;base64,{data}">'


def _config_rows(config: Mapping[str, Any]) -> str:
    rows = md.config_summary_rows(config)
    return "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)


def _json_block(payload: Mapping[str, Any]) -> str:
    text = json.dumps(jsonable(payload), ensure_ascii=False, separators=(",", ":"))
    # Inside <script> only "</" could end the block; escaping < > & as JSON escapes rules it out.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_SECTIONS = """
<div id="toolbar" hidden><label>Filter queries and classes by name:
<input id="filter" type="search" placeholder="class name"></label> <span id="filter-count"
class="note"></span></div>
<p class="needs-js note">The sections below (hardest queries, confused classes, per-class
results, class pages, embedding map) need JavaScript; the numbers above do not.</p>
<section id="hardest"><h2>Hardest queries</h2><p class="note">The queries with the lowest
average precision (their MAP@R term), lowest first, with their nearest neighbours: a green frame
and &#x2713; for the query's class, red and &#x2717; for another; the number is the cosine
similarity.</p><ol id="hardest-list" class="queries"></ol></section>
<section id="confused"><h2>Most confused class pairs</h2><p class="note">Counted over every
query: how often one class's images have the other's as their nearest neighbour.</p>
<div id="pairs-list"></div></section>
<section id="classes"><h2>Per class</h2><p class="note">Recall@1 and MAP@R of each class's
queries (in percent). Click a header to sort, a name to open its page.</p>
<div id="classes-wrap"><table><thead><tr><th><button data-key="0">class</button></th>
<th class="num"><button data-key="1">queries</button></th><th class="num"><button
data-key="2">Recall@1</button></th><th class="num"><button data-key="3">MAP@R</button></th>
</tr></thead><tbody id="classes-body"></tbody></table></div></section>
<section id="class-page-section"><h2>Class page</h2><div id="class-page"><p class="note">Pick
a class in a list above.</p></div></section>
<section id="embedding-map"><h2>Embedding map</h2><p class="note">t-SNE of a seeded subsample
(at most 20 classes, 1,500 points), one colour per class; a red ring marks an image whose
nearest neighbour is of another class. Hover for the image, click for its class.</p>
<div id="map-wrap"><svg id="map" width="820" height="560" role="img"
aria-label="embedding map"></svg><div id="tip"></div></div><div id="map-legend"
class="legend"></div></section>
"""


def render_page(
    *,
    config: Mapping[str, Any],
    test_metrics: Mapping[str, Mapping[str, Any]],
    protocol: str,
    split: str,
    analysis: FailureAnalysis,
    data: Mapping[str, Any],
    num_images: int,
    query_count: int | None,
    curves_png: Path | None,
) -> str:
    """The text of ``report.html``."""
    dataset = dataset_name(config, protocol)
    title = run_title(config, dataset, protocol)
    fused = test_metrics["fused"]
    heads = ""
    if len(test_metrics) > 1:
        table = md.heads_table(test_metrics, md.recall_ks(fused))
        heads = f"<h3>Per head</h3><pre>{_esc(table)}</pre>"
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1>",
        f'<p class="subtitle">{_esc(run_subtitle(config, dataset, num_images, query_count))}</p>',
        f'<p class="note">{_esc(split)} split, <code>{_esc(protocol)}</code> protocol; '
        f'rankedlist <span id="version">{_esc(__version__)}</span>.</p></header>',
        '<section id="headline"><h2>Results</h2><div class="columns"><div>',
        '<p class="note">Percent; the exact fractions are those of metrics.json.</p>',
        '<table id="headline-metrics">', *_headline_rows(fused), "</table></div>",
        '<div><p class="note">The run\'s key settings:</p><dl id="config-summary">',
        _config_rows(config), "</dl></div></div>", heads,
        _agreement_note(fused, analysis),
        f'<p class="note" id="sampled">{_esc(data["sampled"])}</p></section>',
        "</section>", _SECTIONS,
        '<section id="curves"><h2>Training curves</h2>', _curves_html(curves_png), "</section>",
        f'<script type="application/json" id="report-data">{_json_block(data)}</script>',
        f"<script>{PAGE_SCRIPT}</script></body></html>",
    ]  # fmt: skip
    return "\n".join(parts) + "\n"


def write_html_report(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    test_metrics: Mapping[str, Mapping[str, Any]],
    protocol: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any = None,
    query_count: int | None = None,
    split: str = "test",
    curves_png: Path | None = None,
    layout: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write ``report.html`` (atomically) for the evaluated embeddings of a split.

    ``test_metrics`` are the split's metrics as in ``metrics.json`` (``{"fused": {...}, ...}``);
    the page's per-query statistics come from the same exact evaluation run on ``embeddings``
    (every query), its pictures from a bounded sample. ``curves_png`` is the training curves
    picture already drawn (else it is drawn from ``history``); ``layout`` the embedding map's
    :func:`rankedlist.report.embedding_map.map_layout` (else it is computed here).
    """
    from rankedlist.evaluation import PROTOCOLS
    from rankedlist.report.embedding_map import map_layout
    from rankedlist.report.training_curves import plot_training_curves

    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    ks = tuple(md.recall_ks(test_metrics["fused"], PROTOCOLS[protocol].ks))
    analysis = analyse_failures(embeddings, labels, ks=ks, query_count=query_count)
    if layout is None:
        layout = map_layout(embeddings, labels)
    data = page_data(analysis, embeddings, labels, dataset, query_count, layout)
    with tempfile.TemporaryDirectory(prefix="rankedlist-report-") as tmp:
        if curves_png is None:
            curves_png = plot_training_curves(list(history), Path(tmp) / "curves.png")
        text = render_page(
            config=config, test_metrics=test_metrics, protocol=protocol, split=split,
            analysis=analysis, data=data, num_images=len(labels), query_count=query_count,
            curves_png=curves_png,
        )  # fmt: skip
    return atomic_write_text(Path(path), text)
