"""Tables and formatting of report.md, against hand-written expected text."""

from __future__ import annotations

import pytest

from rankedlist.report.markdown import (
    config_summary_rows,
    format_fraction_as_percent,
    heads_table,
    markdown_table,
    recall_ks,
    results_table,
    sources_list,
)
from rankedlist.report.published_results import published_result


def test_percent_formatting():
    assert format_fraction_as_percent(0.61349) == "61.3"
    assert format_fraction_as_percent(1) == "100.0"
    assert format_fraction_as_percent(float("nan")) == "–"
    assert format_fraction_as_percent(None) == "–"
    assert format_fraction_as_percent(True) == "–"  # a flag is not a metric


def test_recall_ks_unites_protocol_and_keys():
    keys = ["recall@10", "recall@1", "map@r", "recall@x"]
    assert recall_ks(keys) == [1, 10]
    assert recall_ks(keys, (1, 10, 100)) == [1, 10, 100]


def test_results_table_text():
    ours = {"recall@1": 0.5, "recall@2": 0.625, "map@r": 0.25}
    table = results_table(ours, "ours", [published_result("cub200", "RLL-H")], [1, 2])
    assert table.splitlines() == [
        "| method | R@1 | R@2 | MAP@R | NMI | source |",
        "|---|---:|---:|---:|---:|---|",
        "| **ours** | **50.0** | **62.5** | **25.0** | **–** | this run |",
        "| RLL-H | 57.4 | 69.7 | – | 63.6 | RLL paper, CVPR 2019 |",
    ]


def test_sources_list_names_each_source_once():
    rows = [
        published_result("cub200", "RLL-H"),
        published_result("cub200", "RLL-(L,M,H)"),
        published_result("cub200", "MS loss"),
    ]
    lines = sources_list(rows)
    assert len(lines) == 2
    assert lines[0].startswith("- **RLL paper, CVPR 2019**: Wang et al., Ranked List Loss")
    assert lines[1].startswith("- **X. Wang et al., CVPR 2019**: Xun Wang et al., Multi-Similarity")


def test_heads_table_orders_low_mid_high_fused():
    metrics = {
        "fused": {"recall@1": 0.9},
        "high": {"recall@1": 0.8},
        "low": {"recall@1": 0.6},
        "mid": {"recall@1": 0.7},
    }
    lines = heads_table(metrics, [1]).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["low", "mid", "high", "fused"]
    assert lines[2] == "| low | 60.0 |"


def test_markdown_table_checks_shapes_and_escapes_pipes():
    assert markdown_table(["a", "b"], [["x|y", "1"]]).splitlines()[2] == "| x\\|y | 1 |"
    with pytest.raises(ValueError, match="columns"):
        markdown_table(["a", "b"], [["1"]])


def test_config_summary_known_schema():
    config = {
        "description": "d",
        "data": {"dataset": "cub200", "root": "/data", "p": 20, "k": 3},
        "model": {"name": "bninception", "multi_level": True, "pretrained_path": "/w.pth"},
        "loss": {"name": "rll", "params": {"margin": 0.4}},
        "optim": {"name": "adamw", "lr": 0.001, "momentum": 0.9},
        "schedule": {"name": "multistep", "milestones": [2000, 4000], "gamma": 0.5},
        "train": {"iterations": 10000, "run_dir": "runs/x", "log_every": 10},
    }
    rows = dict(config_summary_rows(config))
    assert rows["loss.params.margin"] == "0.4"
    assert rows["schedule.milestones"] == "2000, 4000"
    assert rows["model.multi_level"] == "True"
    assert "optim.momentum" not in rows  # AdamW has none
    assert not {"data.root", "model.pretrained_path", "train.run_dir"} & set(rows)
    assert list(rows)[0] == "data.dataset"


def test_config_summary_other_schema_falls_back_to_every_scalar():
    config = {
        "optimizer": {"type": "sgd", "base_lr": 0.1},
        "training": {"steps": 5, "output_dir": "x"},
        "misc": {"a": 1},
    }
    assert config_summary_rows(config) == [
        ("optimizer.type", "sgd"),
        ("optimizer.base_lr", "0.1"),
        ("training.steps", "5"),
    ]
