"""Published numbers to print beside a run's own, from ``shared/protocols.md`` section 4.

Units: every number here is a **percentage** (0-100), as the papers print them; the evaluation
returns fractions (0-1), and the report multiplies those by 100 before putting them side by side.
Metric keys are the evaluation's keys (``recall@1``, ``recall@10``, ``map@r``, ``nmi``, ...), so a
row can be looked up with the same key as a run's own metric. A metric a source did not report is
simply absent from its ``metrics``.

``kind`` says where a row comes from:

- ``"paper"``: the Ranked List Loss paper (CVPR 2019) table, RLL rows and the baselines it printed;
- ``"released-code"``: what the authors' released 2020 code logged;
- ``"later"``: later methods users compare against;
- ``"reference"``: measurements on the embedded glyph data recorded in protocols.md (not a
  publication): raw pixels, and a small CNN trained for 20 s on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: Units of every number in :data:`PUBLISHED_RESULTS`.
PUBLISHED_UNITS = "percent"

_RLL_PAPER = "Wang et al., Ranked List Loss, CVPR 2019 (Table of protocols.md s.4)"
_PROTOCOLS = "shared/protocols.md section 4"


@dataclass(frozen=True)
class PublishedResult:
    """One row of published (or recorded reference) numbers for one dataset.

    Attributes:
        method: the method's name as printed in tables, e.g. ``"RLL-(L,M,H)"``.
        dataset: the dataset key (``cub200``, ``cars196``, ``sop``, ``inshop``, ``glyphs``).
        metrics: metric key -> value in percent (see :data:`PUBLISHED_UNITS`).
        kind: ``"paper"``, ``"released-code"``, ``"later"`` or ``"reference"``.
        source: where the number comes from.
        note: backbone / embedding size or other context, when the source states it.
    """

    method: str
    dataset: str
    metrics: Mapping[str, float]
    kind: str
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        # A read-only view so the module-level table cannot be edited by accident.
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``metrics.json`` stores), values in percent."""
        return {
            "method": self.method,
            "dataset": self.dataset,
            "kind": self.kind,
            "units": PUBLISHED_UNITS,
            "metrics": dict(self.metrics),
            "source": self.source,
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
        out.append(PublishedResult(method, dataset, metrics, "paper", _RLL_PAPER))
    return out


# The paper's table (protocols.md section 4), in the paper's row order, RLL rows last there; here
# the two RLL rows come first because the report puts them next to the run's own numbers.
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


def _r1(method: str, dataset: str, value: float, kind: str, note: str = "") -> PublishedResult:
    return PublishedResult(method, dataset, {"recall@1": value}, kind, _PROTOCOLS, note)


_LATER = {
    "cub200": [
        _r1("Proxy-Anchor", "cub200", 69.1, "later", "BN-Inception, 512-d"),
        _r1("MS loss", "cub200", 65.7, "later"),
        _r1("Hyp-ViT", "cub200", 85.6, "later", "ViT-S/16, 384-d"),
    ],
    "cars196": [
        _r1("Proxy-Anchor", "cars196", 86.4, "later", "BN-Inception, 512-d"),
        _r1("Hyp-ViT", "cars196", 86.5, "later", "ViT-S/16, 384-d"),
    ],
    "sop": [
        _r1("RLL-(L,M,H), released 2020 code", "sop", 78.7, "released-code", "192-d fused"),
        _r1("Proxy-Anchor", "sop", 79.2, "later", "BN-Inception, 512-d"),
        _r1("Hyp-ViT", "sop", 85.9, "later", "ViT-S/16, 384-d"),
    ],
    "inshop": [
        _r1("RLL-(L,M,H), released 2020 code", "inshop", 89.9, "released-code", "384-d fused"),
        _r1("Proxy-Anchor", "inshop", 91.9, "later", "BN-Inception, 512-d"),
        _r1("Hyp-ViT", "inshop", 92.5, "later", "ViT-S/16, 384-d"),
    ],
}

_GLYPHS_REFERENCE = [
    PublishedResult(
        "Raw pixels (reference baseline)",
        "glyphs",
        {"recall@1": 83.0, "map@r": 41.0, "nmi": 79.0},
        "reference",
        _PROTOCOLS + " (measured on 2 CPU cores, not a publication)",
        "no training: flattened pixels",
    ),
    PublishedResult(
        "Small CNN, 20 s (reference)",
        "glyphs",
        {"recall@1": 92.0, "map@r": 62.0, "nmi": 90.0},
        "reference",
        _PROTOCOLS + " (measured on 2 CPU cores, not a publication)",
        "about 0.92 / 0.62 / 0.90",
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
        include_reference: keep the ``"reference"`` rows (glyph baselines measured in protocols.md).
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
