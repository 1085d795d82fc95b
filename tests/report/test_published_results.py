"""The published numbers: units, keys, and agreement with the table in shared/protocols.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rankedlist.report import PUBLISHED_RESULTS, PUBLISHED_UNITS, published_result
from rankedlist.report import published_results as rows_for

PROTOCOLS_MD = Path(__file__).resolve().parents[3] / "shared" / "protocols.md"
KEY = re.compile(r"^(recall@\d+|map@r|nmi)$")


def test_units_and_keys():
    assert PUBLISHED_UNITS == "percent"
    for dataset, rows in PUBLISHED_RESULTS.items():
        assert rows, dataset
        for row in rows:
            assert row.dataset == dataset
            assert row.kind in ("paper", "released-code", "later", "reference")
            assert row.metrics, row.method
            for key, value in row.metrics.items():
                assert KEY.match(key), key
                assert 1.0 < value <= 100.0, (row.method, key, value)  # percent, not fraction


def test_spot_values_and_order():
    assert published_result("cub200", "RLL-(L,M,H)").metrics["recall@1"] == 61.3
    assert published_result("cars196", "RLL-H").metrics["nmi"] == 65.4
    assert published_result("sop", "RLL-(L,M,H)").metrics["recall@100"] == 96.3
    assert "recall@10" not in published_result("sop", "Proxy NCA").metrics  # "-" in the paper
    assert published_result("inshop", "Proxy-Anchor").metrics == {"recall@1": 91.9}
    assert published_result("glyphs", "Raw pixels (reference baseline)").metrics == {
        "recall@1": 83.0,
        "map@r": 41.0,
        "nmi": 79.0,
    }
    for dataset in ("cub200", "cars196", "sop"):
        assert [r.method for r in rows_for(dataset)[:2]] == ["RLL-H", "RLL-(L,M,H)"]
    assert rows_for("folder") == []
    assert rows_for("glyphs", include_reference=False) == []
    with pytest.raises(KeyError, match="available"):
        published_result("cub200", "ArcFace")


def test_rows_are_read_only():
    row = published_result("cub200", "RLL-H")
    with pytest.raises(TypeError):
        row.metrics["recall@1"] = 99.0  # type: ignore[index]


@pytest.mark.skipif(not PROTOCOLS_MD.exists(), reason="shared/protocols.md is not beside the repo")
def test_paper_table_matches_protocols_md():
    """Parse the CVPR table of protocols.md section 4 and compare every cell."""
    text = PROTOCOLS_MD.read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| method | CUB R@1"))
    lines = text.splitlines()
    start = lines.index(header) + 2
    columns = [
        ("cub200", "recall@1"), ("cub200", "recall@2"), ("cub200", "recall@4"),
        ("cub200", "recall@8"), ("cub200", "nmi"),
        ("cars196", "recall@1"), ("cars196", "recall@2"), ("cars196", "recall@4"),
        ("cars196", "recall@8"), ("cars196", "nmi"),
        ("sop", "recall@1"), ("sop", "recall@10"), ("sop", "recall@100"), ("sop", "nmi"),
    ]  # fmt: skip
    checked = 0
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        method, values = cells[0], cells[1:]
        assert len(values) == len(columns)
        for (dataset, key), cell in zip(columns, values, strict=True):
            row = published_result(dataset, method)
            if cell == "-":
                assert key not in row.metrics
            else:
                assert row.metrics[key] == float(cell), (method, dataset, key)
                checked += 1
    assert checked == 6 * 14 - 2  # six methods; only Proxy NCA lacks two cells (SOP R@10, R@100)
