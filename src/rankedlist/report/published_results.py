"""Published numbers to print beside a run's own, each with the publication (or code) it is from.

Every row carries its provenance in :attr:`PublishedResult.source` (the full citation, written to
``metrics.json``) and :attr:`PublishedResult.short_source` (the table cell of ``report.md``). The
toolkit's documentation lists the same rows and sources in ``docs/published_results.md``.

Units: every number here is a **percentage** (0-100), as the papers print them; the evaluation
returns fractions (0-1), and the report multiplies those by 100 before putting them side by side.
Metric keys are the evaluation's keys (``recall@1``, ``recall@10``, ``map@r``, ``nmi``, ...), so a
row can be looked up with the same key as a run's own metric. A metric a source did not report is
simply absent from its ``metrics``.

``kind`` says where a row comes from:

- ``"paper"``: Wang et al., *Ranked List Loss for Deep Metric Learning*, CVPR 2019: its comparison
  with the state of the art on CUB-200-2011, Cars196 and SOP (BN-Inception), the RLL rows and the
  baselines as that table prints them;
- ``"released-code"``: what the authors' released 2020 code logged
  (github.com/XinshaoAmosWang/Ranked-List-Loss-for-DML);
- ``"later"``: later methods users compare against: Proxy-Anchor (Kim et al., CVPR 2020, the
  results of the authors' repository), MS loss (Xun Wang et al., CVPR 2019) and Hyp-ViT (Ermolov et
  al., CVPR 2022);
- ``"reference"``: not a publication: measured with this package on the embedded glyph test
  classes: raw pixels (no training, ``benchmarks/glyphs_raw_pixels.py``) and the demo's GlyphNet +
  RLL-H after 150 iterations (about 20 s of training on 2 CPU cores).

The In-Shop ``released-code`` row is the best of the test-set evaluations its run logged, i.e.
selected on the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: Units of every number in :data:`PUBLISHED_RESULTS`.
PUBLISHED_UNITS = "percent"

# Full citations (``source``) and their short forms for a table cell (``short_source``).
_RLL_PAPER = (
    "Wang et al., Ranked List Loss for Deep Metric Learning, CVPR 2019: comparison with the state "
    "of the art on CUB-200-2011, Cars196 and SOP (BN-Inception); baselines as printed there"
)
_RLL_PAPER_SHORT = "RLL paper, CVPR 2019"
_RLL_CODE = "the authors' released 2020 code, github.com/XinshaoAmosWang/Ranked-List-Loss-for-DML"
_RLL_CODE_SHORT = "RLL 2020 code log"
_PROXY_ANCHOR = (
    "Kim et al., Proxy Anchor Loss for Deep Metric Learning, CVPR 2020: the results table of the "
    "authors' repository README, github.com/tjddus9597/Proxy-Anchor-CVPR2020 (above the paper's "
    "own numbers, as that README says)"
)
_PROXY_ANCHOR_SHORT = "Kim et al., CVPR 2020 (code)"
_MS_LOSS = (
    "Xun Wang et al., Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning, "
    "CVPR 2019 (CUB-200-2011 Recall@1, BN-Inception)"
)
_MS_LOSS_SHORT = "X. Wang et al., CVPR 2019"
_HYP_VIT = (
    "Ermolov et al., Hyperbolic Vision Transformers: Combining Improvements in Metric Learning, "
    "CVPR 2022 (Hyp-ViT: ViT-S/16, 384-d)"
)
_HYP_VIT_SHORT = "Ermolov et al., CVPR 2022"
#: How the ``"reference"`` glyph rows were measured (commands run from the repository root).
GLYPHS_RAW_PIXELS_COMMAND = "python benchmarks/glyphs_raw_pixels.py"
GLYPHS_SHORT_RUN_COMMAND = "rankedlist train --config glyphs train.iterations=150"


@dataclass(frozen=True)
class PublishedResult:
    """One row of published (or measured reference) numbers for one dataset.

    Attributes:
        method: the method's name as printed in tables, e.g. ``"RLL-(L,M,H)"``.
        dataset: the dataset key (``cub200``, ``cars196``, ``sop``, ``inshop``, ``glyphs``).
        metrics: metric key -> value in percent (see :data:`PUBLISHED_UNITS`).
        kind: ``"paper"``, ``"released-code"``, ``"later"`` or ``"reference"``.
        source: where the numbers come from: the publication (and its table) or the released
            code, or for a ``"reference"`` row how it was measured.
        note: backbone / embedding size or other context, when the source states it.
        short_source: ``source`` in a few words, for a table cell (``source`` when empty).
    """

    method: str
    dataset: str
    metrics: Mapping[str, float]
    kind: str
    source: str
    note: str = ""
    short_source: str = ""

    def __post_init__(self) -> None:
        # A read-only view so the module-level table cannot be edited by accident.
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        if not self.short_source:
            object.__setattr__(self, "short_source", self.source)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``metrics.json`` stores), values in percent."""
        return {
            "method": self.method,
            "dataset": self.dataset,
            "kind": self.kind,
            "units": PUBLISHED_UNITS,
            "metrics": dict(self.metrics),
            "source": self.source,
            "short_source": self.short_source,
            "note": self.note,
        }


def _rll_paper_rows(
    dataset: str, ks: tuple[int, ...], rows: dict[str, tuple[float | None, ...]]
) -> list[PublishedResult]:
    """Rows of the CVPR 2019 table: R@k for k in ``ks``, then NMI; ``None``: not given."""
    out = []
    for method, values in rows.items():
        keys = [f"recall@{k}" for k in ks] + ["nmi"]
        metrics = {key: v for key, v in zip(keys, values, strict=True) if v is not None}
        out.append(
            PublishedResult(method, dataset, metrics, "paper", _RLL_PAPER, "", _RLL_PAPER_SHORT)
        )
    return out


# The CVPR 2019 paper's comparison table, RLL rows last there; here the two RLL rows come first
# because the report puts them next to the run's own numbers. Proxy NCA has no SOP R@10 / R@100
# in it ("-").
_CUB = _rll_paper_rows(
    "cub200",
    (1, 2, 4, 8),
    {
        "RLL-H": (57.4, 69.7, 79.2, 86.9, 63.6),
        "RLL-(L,M,H)": (61.3, 72.7, 82.7, 89.4, 66.1),
        "Triplet semi-hard": (42.6, 55.0, 66.4, 77.2, 55.4),
        "Lifted structure": (43.6, 56.6, 68.6, 79.6, 56.5),
        "N-pair-mc": (45.4, 58.4, 69.5, 79.5, 57.2),
        "Proxy NCA": (49.2, 61.9, 67.9, 72.4, 59.5),
    },
)
_CARS = _rll_paper_rows(
    "cars196",
    (1, 2, 4, 8),
    {
        "RLL-H": (74.0, 83.6, 90.1, 94.1, 65.4),
        "RLL-(L,M,H)": (82.1, 89.3, 93.7, 96.7, 71.8),
        "Triplet semi-hard": (51.5, 63.8, 73.5, 82.4, 53.4),
        "Lifted structure": (53.0, 65.7, 76.0, 84.3, 56.9),
        "N-pair-mc": (53.9, 66.8, 77.8, 86.4, 57.8),
        "Proxy NCA": (73.2, 82.4, 86.4, 88.7, 64.9),
    },
)
_SOP = _rll_paper_rows(
    "sop",
    (1, 10, 100),
    {
        "RLL-H": (76.1, 89.1, 95.4, 89.7),
        "RLL-(L,M,H)": (79.8, 91.3, 96.3, 90.4),
        "Triplet semi-hard": (66.7, 82.4, 91.9, 89.5),
        "Lifted structure": (62.5, 80.8, 91.9, 88.7),
        "N-pair-mc": (66.4, 83.2, 93.0, 89.4),
        "Proxy NCA": (73.7, None, None, 90.6),
    },
)


def _r1(
    method: str, dataset: str, value: float, kind: str, source: str, short: str, note: str = ""
) -> PublishedResult:
    return PublishedResult(method, dataset, {"recall@1": value}, kind, source, note, short)


_INSHOP_LOG = (
    _RLL_CODE + ", InshopClothes_Simp_21042020/train_60_T10_pn04_v63/Recall_concat_d128.txt: the "
    "best Recall@1 of its test evaluations every 2,000 iterations (at iteration 26,000 of 30,000)"
)
# That log line: "iter: 26000, rank1: 0.899, rank10: 0.976, rank20: 0.983, rank30: 0.987, ...".
_INSHOP_LOGGED = (89.9, 97.6, 98.3, 98.7, 98.9, 99.0)
_SOP_LOG = _RLL_CODE + ": the Recall@1 logged by its SOP RLL-(L,M,H) run"


def _proxy_anchor(dataset: str, ks: tuple[int, ...], values: tuple[float, ...]) -> PublishedResult:
    metrics = {f"recall@{k}": v for k, v in zip(ks, values, strict=True)}
    note = "BN-Inception, 512-d"
    return PublishedResult(
        "Proxy-Anchor", dataset, metrics, "later", _PROXY_ANCHOR, note, _PROXY_ANCHOR_SHORT
    )


def _hyp_vit(dataset: str, value: float) -> PublishedResult:
    note = "ViT-S/16, 384-d"
    return _r1("Hyp-ViT", dataset, value, "later", _HYP_VIT, _HYP_VIT_SHORT, note)


_LATER = {
    "cub200": [
        _proxy_anchor("cub200", (1, 2, 4, 8), (69.1, 78.9, 86.1, 91.2)),
        _r1("MS loss", "cub200", 65.7, "later", _MS_LOSS, _MS_LOSS_SHORT),
        _hyp_vit("cub200", 85.6),
    ],
    "cars196": [
        _proxy_anchor("cars196", (1, 2, 4, 8), (86.4, 91.9, 95.0, 97.0)),
        _hyp_vit("cars196", 86.5),
    ],
    "sop": [
        _r1(
            "RLL-(L,M,H), released 2020 code",
            "sop",
            78.7,
            "released-code",
            _SOP_LOG,
            _RLL_CODE_SHORT,
            "192-d fused",
        ),
        _proxy_anchor("sop", (1, 10, 100, 1000), (79.2, 90.7, 96.2, 98.6)),
        _hyp_vit("sop", 85.9),
    ],
    "inshop": [
        PublishedResult(
            "RLL-(L,M,H), released 2020 code",
            "inshop",
            {
                f"recall@{k}": v
                for k, v in zip((1, 10, 20, 30, 40, 50), _INSHOP_LOGGED, strict=True)
            },
            "released-code",
            _INSHOP_LOG,
            "384-d fused",
            _RLL_CODE_SHORT,
        ),
        _proxy_anchor("inshop", (1, 10, 20, 30, 40), (91.9, 98.1, 98.7, 99.0, 99.1)),
        _hyp_vit("inshop", 92.5),
    ],
}

# Measured with this package on the embedded glyphs' 88 test classes (1,638 images, never seen in
# training), the demo's evaluation (``protocol="glyphs"``); both are deterministic.
_GLYPHS_REFERENCE = [
    PublishedResult(
        "Raw pixels (reference baseline)",
        "glyphs",
        {
            "recall@1": 80.5,
            "recall@2": 90.0,
            "recall@4": 94.7,
            "recall@8": 97.0,
            "r_precision": 42.4,
            "map@r": 34.5,
            "nmi": 72.4,
        },
        "reference",
        f"raw pixels, measured by benchmarks/glyphs_raw_pixels.py (`{GLYPHS_RAW_PIXELS_COMMAND}`): "
        "the test images through the demo's evaluation transform, flattened, no training; "
        "not a publication",
        "no training: the flattened 3 x 32 x 32 test images",
        "measured: benchmarks/glyphs_raw_pixels.py",
    ),
    PublishedResult(
        "GlyphNet + RLL-H, 150 iterations (reference)",
        "glyphs",
        {
            "recall@1": 93.5,
            "recall@2": 97.6,
            "recall@4": 99.0,
            "recall@8": 99.4,
            "r_precision": 72.4,
            "map@r": 67.0,
            "nmi": 92.0,
        },
        "reference",
        f"measured with this package: `{GLYPHS_SHORT_RUN_COMMAND}` (the demo recipe cut to 150 "
        "iterations: about 20 s of training on 2 CPU cores); not a publication",
        "the demo recipe, 150 of its 600 iterations",
        "measured: demo recipe, 150 iterations",
    ),
]

#: dataset key -> rows, RLL-H and RLL-(L,M,H) first. All values in percent.
PUBLISHED_RESULTS: MappingProxyType[str, tuple[PublishedResult, ...]] = MappingProxyType(
    {
        "cub200": tuple(_CUB + _LATER["cub200"]),
        "cars196": tuple(_CARS + _LATER["cars196"]),
        "sop": tuple(_SOP + _LATER["sop"]),
        "inshop": tuple(_LATER["inshop"]),
        "glyphs": tuple(_GLYPHS_REFERENCE),
    }
)


def published_results(dataset: str, *, include_reference: bool = True) -> list[PublishedResult]:
    """The rows recorded for ``dataset`` (empty for a dataset without any, e.g. ``folder``).

    Args:
        dataset: a dataset key such as ``"cub200"``; case-insensitive.
        include_reference: keep the ``"reference"`` rows (glyph baselines measured with this
            package, not publications).
    """
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a str such as 'cub200', got {type(dataset).__name__}")
    rows = PUBLISHED_RESULTS.get(dataset.lower(), ())
    return [r for r in rows if include_reference or r.kind != "reference"]


def published_result(dataset: str, method: str) -> PublishedResult:
    """The row of ``method`` for ``dataset``; ``KeyError`` naming the available methods if none."""
    for row in published_results(dataset):
        if row.method == method:
            return row
    names = [r.method for r in published_results(dataset)]
    raise KeyError(f"no published row {method!r} for dataset {dataset!r}; available: {names}")
