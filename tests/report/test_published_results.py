"""The published numbers: units, keys, sources, the glyph reference row against a fresh
measurement, and agreement with the project's internal table (when that file is beside the repo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _workers import load_worker

from rankedlist.report import PUBLISHED_RESULTS, PUBLISHED_UNITS, published_result
from rankedlist.report import published_results as rows_for

REPO = Path(__file__).resolve().parents[2]
#: The comparison with the state of the art in the RLL paper (CVPR 2019), typed from the paper:
#: an independent copy of the numbers PUBLISHED_RESULTS holds.
PAPER_TABLE = """
|method|CUB R@1|R@2|R@4|R@8|NMI|Cars R@1|R@2|R@4|R@8|NMI|SOP R@1|R@10|R@100|NMI|
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
|Triplet semi-hard|42.6|55.0|66.4|77.2|55.4|51.5|63.8|73.5|82.4|53.4|66.7|82.4|91.9|89.5|
|Lifted structure|43.6|56.6|68.6|79.6|56.5|53.0|65.7|76.0|84.3|56.9|62.5|80.8|91.9|88.7|
|N-pair-mc|45.4|58.4|69.5|79.5|57.2|53.9|66.8|77.8|86.4|57.8|66.4|83.2|93.0|89.4|
|Proxy NCA|49.2|61.9|67.9|72.4|59.5|73.2|82.4|86.4|88.7|64.9|73.7|-|-|90.6|
|RLL-H|57.4|69.7|79.2|86.9|63.6|74.0|83.6|90.1|94.1|65.4|76.1|89.1|95.4|89.7|
|RLL-(L,M,H)|61.3|72.7|82.7|89.4|66.1|82.1|89.3|93.7|96.7|71.8|79.8|91.3|96.3|90.4|
"""
KEY = re.compile(r"^(recall@\d+|r_precision|map@r|nmi)$")
RAW_PIXELS = "Raw pixels (reference baseline)"


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
    assert published_result("inshop", "Proxy-Anchor").metrics == {
        "recall@1": 91.9,
        "recall@10": 98.1,
        "recall@20": 98.7,
        "recall@30": 99.0,
        "recall@40": 99.1,
    }
    assert published_result("cub200", "MS loss").metrics == {"recall@1": 65.7}
    assert published_result("glyphs", RAW_PIXELS).metrics == {
        "recall@1": 80.5,
        "recall@2": 90.0,
        "recall@4": 94.7,
        "recall@8": 97.0,
        "r_precision": 42.4,
        "map@r": 34.5,
        "nmi": 72.4,
    }
    for dataset in ("cub200", "cars196", "sop"):
        assert [r.method for r in rows_for(dataset)[:2]] == ["RLL-H", "RLL-(L,M,H)"]
    assert rows_for("folder") == []
    assert rows_for("glyphs", include_reference=False) == []
    with pytest.raises(KeyError, match="available"):
        published_result("cub200", "ArcFace")


def test_every_row_cites_its_source():
    """Sources a user can look up: the publication, the released code, or how it was measured;
    never a file that only the project's developers have."""
    for rows in PUBLISHED_RESULTS.values():
        for row in rows:
            assert row.source and row.short_source, row.method
            assert len(row.short_source) <= 45, row.short_source  # a table cell
            for internal in ("shared/", "protocols.md", "rll-spec"):
                assert internal not in row.source and internal not in row.short_source
            assert row.to_dict()["source"] == row.source
    paper = published_result("cub200", "Triplet semi-hard")
    assert "Ranked List Loss" in paper.source and "CVPR 2019" in paper.source
    assert paper.short_source == "RLL paper, CVPR 2019"
    inshop = published_result("inshop", "RLL-(L,M,H), released 2020 code")
    assert "XinshaoAmosWang/Ranked-List-Loss-for-DML" in inshop.source
    assert "Recall_concat_d128.txt" in inshop.source
    assert "tjddus9597/Proxy-Anchor-CVPR2020" in published_result("sop", "Proxy-Anchor").source
    assert "CVPR 2022" in published_result("cars196", "Hyp-ViT").source
    assert "Multi-Similarity" in published_result("cub200", "MS loss").source
    raw = published_result("glyphs", RAW_PIXELS)
    assert raw.source.startswith("raw pixels, measured by benchmarks/glyphs_raw_pixels.py")
    assert "150 iterations" in rows_for("glyphs")[1].method
    assert "train.iterations=150" in rows_for("glyphs")[1].source


def test_short_source_defaults_to_source():
    from rankedlist.report import PublishedResult

    row = PublishedResult("m", "cub200", {"recall@1": 50.0}, "later", "Someone et al., 2030")
    assert row.short_source == "Someone et al., 2030"


def test_raw_pixel_row_is_what_the_benchmark_measures():
    """``benchmarks/glyphs_raw_pixels.py`` run now gives the numbers of the reference row."""
    script = REPO / "benchmarks" / "glyphs_raw_pixels.py"
    module = load_worker(script)
    metrics, info = module.measure()
    assert info["images"] == 1638 and info["classes"] == 88 and info["dim"] == 3 * 32 * 32
    row = published_result("glyphs", RAW_PIXELS)
    measured = {key: round(100 * metrics[key], 1) for key in row.metrics}
    assert measured == dict(row.metrics)


def test_docs_page_lists_every_row():
    """docs/published_results.md shows each row of the package's table with the same numbers."""
    from rankedlist.report.markdown import format_percent

    text = (REPO / "docs" / "published_results.md").read_text(encoding="utf-8")
    assert not any(internal in text for internal in ("shared/", "protocols.md", "rll-spec"))
    for dataset, rows in PUBLISHED_RESULTS.items():
        section = text.split(f"(`{dataset}`)\n", 1)[1].split("\n#", 1)[0]
        for row in rows:
            label = row.method + (f" ({row.note})" if row.note and row.kind != "reference" else "")
            line = next(ln for ln in section.splitlines() if ln.startswith(f"| {label} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            numbers = [c for c in cells[1:-1] if c != "–"]
            assert sorted(numbers) == sorted(format_percent(v) for v in row.metrics.values())
            assert cells[-1] == row.short_source
            if row.kind == "reference":  # how to measure it again
                (command,) = re.findall(r"`([^`]+)`", row.source)
                assert command in " ".join(text.replace("`", "").split())
            else:  # its full citation is listed
                assert f"- **{row.short_source}**: " in text


def test_rows_are_read_only():
    row = published_result("cub200", "RLL-H")
    with pytest.raises(TypeError):
        row.metrics["recall@1"] = 99.0  # type: ignore[index]


def test_paper_table_matches_the_published_rows():
    """Parse the paper's table typed above and compare every cell with PUBLISHED_RESULTS."""
    text = PAPER_TABLE
    header = next(line for line in text.splitlines() if line.startswith("|method|CUB R@1"))
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
