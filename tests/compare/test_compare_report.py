"""The comparison's report, from hand-made results dicts: the sentences name the leader and say
whether the 95% intervals separate (numbers recomputed here with scipy.stats.t and statistics),
what tuning bought, the budget warnings; the table's cells; the pictures; the schema check."""

from __future__ import annotations

import copy
import math
import re
import statistics
import struct

import pytest
from scipy import stats

from rankedlist.compare.report import validate_results, write_compare_report
from rankedlist.compare.sentences import summary_sentences

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "nmi")
HEADERS = ("R@1", "R@2", "R@4", "R@8", "R-Precision", "MAP@R", "NMI")


# --------------------------------------------------------------------------- builders


def runs(map_r, recall_1=None, seeds=None):
    """Per-seed test metrics (fractions): MAP@R and R@1 as given, the others derived from them,
    plus the evaluation's counts (which are not metrics to average)."""
    recall_1 = recall_1 or [min(0.99, v + 0.3) for v in map_r]
    seeds = seeds if seeds is not None else range(len(map_r))
    out = {}
    for i, seed in enumerate(seeds):
        r1 = recall_1[i]
        out[str(seed)] = {
            "recall@1": r1, "recall@2": min(1.0, r1 + 0.03), "recall@4": min(1.0, r1 + 0.05),
            "recall@8": min(1.0, r1 + 0.06), "r_precision": map_r[i] + 0.1, "map@r": map_r[i],
            "nmi": 0.5 + map_r[i] / 2, "lone_queries": 0, "num_queries": 200,
        }  # fmt: skip
    return out


def trial(number, state="COMPLETE", value=0.5, pruned_at=None, curve=None):
    if curve is None and state != "FAIL":
        curve = [[10, value - 0.1], [20, value - 0.04], [30, value]]
    return {
        "number": number, "state": state, "value": None if state == "FAIL" else value,
        "params": {"lr": 0.01 * (number + 1), "margin": 0.4}, "pruned_at": pruned_at,
        "curve": curve or [],
    }  # fmt: skip


def healthy_trials():
    """4 trials, 1 pruned, trial 2 best: a budget the warnings have nothing to say about."""
    return [
        trial(0, value=0.55),
        trial(1, "PRUNED", 0.40, pruned_at=20, curve=[[10, 0.35], [20, 0.40]]),
        trial(2, value=0.61),
        trial(3, value=0.58),
    ]


def loss(name, label, tuned, untuned, trials=None, best=None):
    trials = healthy_trials() if trials is None else trials
    if best is None and trials:
        done = [t for t in trials if t["state"] == "COMPLETE"]
        top = max(done, key=lambda t: t["value"]) if done else None
        best = top and {"trial": top["number"], "value": top["value"], "params": top["params"]}
    return {
        "loss": name,
        "label": label,
        "space": {
            "lr": {"low": 0.2, "high": 5.0, "log": True, "shared": True},
            "k": {"choices": [2, 4, 8], "shared": True},
            "margin": {"low": 0.1, "high": 0.8, "log": False, "shared": False},
        },
        "trials": trials,
        "best": best,
        "tuned": tuned,
        "untuned": untuned,
    }


def results_of(losses, seeds=(0, 1, 2), trials=4, test_reads=None, metric="map@r"):
    return {
        "rankedlist_version": "0.9.0",
        "versions": {"torch": "2.6.0", "optuna": "4.1.0"},
        "plan": {
            "recipes": list(losses),
            "trials": trials,
            "seeds": list(seeds),
            "folds": 1,
            "metric": metric,
            "overrides": ["train.iterations=40"],
            "iterations": 40,
            "pruner": "median",
            "sampler_seed": 0,
            "dataset": "glyphs",
            "protocol": "glyphs",
        },  # fmt: skip
        "test_reads": 2 * len(seeds) * len(losses) if test_reads is None else test_reads,
        "losses": losses,
    }


def clear_lead(rll_wins=False, rll_first=True):
    """Multi-similarity well ahead of RLL on MAP@R and R@1 (or the reverse: the numbers swap)."""
    strong = runs([0.49, 0.51, 0.50], [0.88, 0.90, 0.89])
    weak = runs([0.42, 0.43, 0.41], [0.80, 0.83, 0.81])
    untuned = runs([0.40, 0.41, 0.39], [0.79, 0.80, 0.81])
    entries = [
        ("glyphs", loss("rll", "RLL", strong if rll_wins else weak, untuned)),
        ("glyphs_ms", loss("multi_similarity", "multi-similarity", weak if rll_wins else strong,
                           untuned)),
    ]  # fmt: skip
    return results_of(dict(entries if rll_first else entries[::-1]))


def summary(fractions):
    """Mean, sample std and 95% t-interval of the mean, in percent: the reference numbers."""
    pct = [100 * v for v in fractions]
    mean = statistics.fmean(pct)
    if len(pct) < 2:
        return mean, None, None
    sd = statistics.stdev(pct)
    low, high = stats.t.interval(0.95, len(pct) - 1, loc=mean, scale=sd / math.sqrt(len(pct)))
    return mean, sd, (low, high)


def values(results, recipe, variant, metric):
    return [m[metric] for m in results["losses"][recipe][variant].values()]


# --------------------------------------------------------------------------- (a) a clear lead


@pytest.mark.parametrize("rll_first", [True, False])
def test_a_clear_lead_is_named_with_its_points_and_separated_intervals(rll_first):
    results = clear_lead(rll_wins=False, rll_first=rll_first)
    sentences = summary_sentences(results)
    for i, (metric, name) in enumerate((("map@r", "MAP@R"), ("recall@1", "R@1"))):
        ms, _, ms_ci = summary(values(results, "glyphs_ms", "tuned", metric))
        rll, _, rll_ci = summary(values(results, "glyphs", "tuned", metric))
        assert ms_ci[0] > rll_ci[1]  # the data do separate: the sentence must say so
        assert sentences[i] == (
            f"multi-similarity leads RLL by {ms - rll:.1f} {name} points ({ms:.1f} against "
            f"{rll:.1f}) and the intervals do not overlap."
        )
    # By hand: MAP@R 49, 51, 50 against 42, 43, 41; R@1 88, 90, 89 against 80, 83, 81.
    assert sentences[:2] == [
        "multi-similarity leads RLL by 8.0 MAP@R points (50.0 against 42.0) and the intervals "
        "do not overlap.",
        "multi-similarity leads RLL by 7.7 R@1 points (89.0 against 81.3) and the intervals do "
        "not overlap.",
    ]
    assert not [s for s in sentences if s.startswith("Warning")]


def test_the_sentences_are_symmetric_rll_has_no_special_case():
    """The same numbers with the names swapped give the same sentences with the names swapped."""
    rll_loses = summary_sentences(clear_lead(rll_wins=False))
    rll_wins = summary_sentences(clear_lead(rll_wins=True))

    def swapped(sentence):
        a, b = "multi-similarity", "RLL"
        return sentence.replace(a, "\0").replace(b, a).replace("\0", b)

    assert rll_wins[0].startswith("RLL leads multi-similarity by 8.0 MAP@R points")
    assert rll_loses[0].startswith("multi-similarity leads RLL by 8.0 MAP@R points")
    assert rll_wins[:2] == [swapped(s) for s in rll_loses[:2]]
    assert sorted(rll_wins) == sorted(swapped(s) for s in rll_loses)  # tuning sentences too


def test_three_losses_are_ranked_with_their_gap_to_the_leader():
    results = clear_lead()
    results["losses"]["glyphs_triplet"] = loss(
        "triplet", "triplet", runs([0.45, 0.47, 0.46]), runs([0.44, 0.45, 0.46])
    )
    results["plan"]["recipes"].append("glyphs_triplet")
    ms = summary(values(results, "glyphs_ms", "tuned", "map@r"))[0]
    tri = summary(values(results, "glyphs_triplet", "tuned", "map@r"))[0]
    rll = summary(values(results, "glyphs", "tuned", "map@r"))[0]
    sentences = summary_sentences(results)
    assert sentences[0].startswith(f"multi-similarity leads triplet by {ms - tri:.1f} MAP@R")
    assert sentences[2] == (
        f"Tuned MAP@R, best first: multi-similarity {ms:.1f}; triplet {tri:.1f} "
        f"({tri - ms:+.1f}); RLL {rll:.1f} ({rll - ms:+.1f})."
    )


# --------------------------------------------------------------------------- (b) overlap, hurt


def test_overlapping_intervals_are_a_tie_and_tuning_that_hurt_is_said():
    results = results_of(
        {
            "glyphs": loss("rll", "RLL", runs([0.50, 0.40, 0.46]), runs([0.43, 0.44, 0.42])),
            "glyphs_ms": loss(
                "multi_similarity",
                "multi-similarity",
                runs([0.47, 0.41, 0.44]),
                runs([0.48, 0.47, 0.46]),
            ),
        }  # fmt: skip
    )
    rll, _, rll_ci = summary(values(results, "glyphs", "tuned", "map@r"))
    ms, _, ms_ci = summary(values(results, "glyphs_ms", "tuned", "map@r"))
    ms_untuned, _, ms_untuned_ci = summary(values(results, "glyphs_ms", "untuned", "map@r"))
    rll_untuned, _, rll_untuned_ci = summary(values(results, "glyphs", "untuned", "map@r"))
    assert rll > ms and rll_ci[0] <= ms_ci[1]  # RLL ahead, intervals overlapping
    assert ms < ms_untuned and ms_ci[1] >= ms_untuned_ci[0]
    assert rll > rll_untuned and rll_ci[0] <= rll_untuned_ci[1]
    sentences = summary_sentences(results)
    assert sentences[0] == (
        f"RLL leads multi-similarity by {rll - ms:.1f} MAP@R points ({rll:.1f} against {ms:.1f}), "
        "but their 95% intervals overlap: a tie at this budget."
    )
    assert f"Tuning bought RLL {rll - rll_untuned:.1f} MAP@R points" in sentences[2]
    assert sentences[3] == (
        f"multi-similarity's tuned configuration tested {ms_untuned - ms:.1f} MAP@R points below "
        f"its untuned recipe ({ms_untuned:.1f} untuned, {ms:.1f} tuned), but their 95% intervals "
        "overlap: a tie at this budget."
    )
    assert (ms_untuned - ms, rll - ms) == pytest.approx((3.0, 1.3333333))  # by hand: 47-44, 45.3-44


def test_tuning_that_clearly_hurt_is_said_with_separated_intervals():
    results = clear_lead()
    results["losses"]["glyphs"]["untuned"] = runs([0.50, 0.51, 0.52])
    tuned, _, tuned_ci = summary(values(results, "glyphs", "tuned", "map@r"))
    untuned, _, untuned_ci = summary(values(results, "glyphs", "untuned", "map@r"))
    assert tuned_ci[1] < untuned_ci[0]
    assert summary_sentences(results)[2] == (
        f"RLL's tuned configuration tested {untuned - tuned:.1f} MAP@R points below its untuned "
        f"recipe ({untuned:.1f} untuned, {tuned:.1f} tuned) and the intervals do not overlap."
    )


def test_the_primary_metric_is_the_plans():
    results = clear_lead()
    results["plan"]["metric"] = "recall@1"
    sentences = summary_sentences(results)
    assert " R@1 points" in sentences[0] and " MAP@R points" in sentences[1]
    del results["plan"]["metric"]  # optional: MAP@R by default
    validate_results(results)
    assert " MAP@R points" in summary_sentences(results)[0]


# --------------------------------------------------------------------------- (c) small budget


def test_a_budget_too_small_to_trust_is_warned_about(tmp_path):
    pruned = [
        trial(0, value=0.52),
        trial(1, "PRUNED", 0.30, pruned_at=10),
        trial(2, "PRUNED", 0.31, pruned_at=10),
        trial(3, "PRUNED", 0.33, pruned_at=20),
    ]
    failed = [trial(i, "FAIL") for i in range(4)]
    results = results_of(
        {
            "glyphs": loss("rll", "RLL", runs([0.40]), runs([0.41]), trials=pruned),
            "glyphs_contrastive": loss("contrastive", "contrastive", {}, runs([0.38]), failed),
        },
        seeds=(0,),
    )
    sentences = summary_sentences(results)
    warnings = [s for s in sentences if s.startswith("Warning:")]
    assert len(warnings) == 4
    assert any(
        s.startswith("Warning: 1 seed (fewer than 3): there is no 95% interval") for s in warnings
    )
    assert any(s.startswith("Warning: 3 of 4 trials of RLL were pruned") for s in warnings)
    assert any(s.startswith("Warning: RLL's best configuration is trial 0, the first of its 4")
               for s in warnings)  # fmt: skip
    assert any(s.startswith("Warning: all 4 trials of contrastive failed") for s in warnings)
    assert "Not finished yet (left out of every number): contrastive tuned seed 0." in sentences
    assert sentences[0] == "Only RLL has a tuned test MAP@R so far (40.0): nothing to compare."
    assert sentences[2] == (
        "RLL's tuned configuration tested 1.0 MAP@R points below its untuned recipe (41.0 "
        "untuned, 40.0 tuned); a single seed gives no 95% interval: the change is untested."
    )
    files = write_compare_report(results, tmp_path)
    table = files["table"].read_text()
    assert "| 40.0 | n/a (1 seed) |" in table
    assert "| contrastive | `glyphs_contrastive` | tuned | 0 | – | – |" in table
    report = files["report"].read_text()
    assert all(w in report for w in warnings)
    assert "No dimensions." not in report and "no best." in report


@pytest.mark.parametrize(
    ("trials", "warned"),
    [
        ([trial(0, value=0.6), trial(1, value=0.5)], False),  # trial 0 of 2: not "more than 2"
        ([trial(0, value=0.6), trial(1, value=0.5), trial(2, value=0.4)], True),
        ([trial(0, "PRUNED", 0.3, 10), trial(1, "PRUNED", 0.3, 10), trial(2), trial(3, value=0.6)],
         False),  # exactly half pruned: not "most"
    ],
)  # fmt: skip
def test_the_warnings_hold_at_their_boundaries(trials, warned):
    results = results_of(
        {"glyphs": loss("rll", "RLL", runs([0.4, 0.41, 0.42]), runs([0.4, 0.4, 0.41]), trials)}
    )
    assert bool([s for s in summary_sentences(results) if s.startswith("Warning")]) is warned


# --------------------------------------------------------------------------- (d) the table


def _table_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def test_the_table_holds_mean_std_and_the_t_interval_of_every_metric(tmp_path):
    results = clear_lead()
    del results["losses"]["glyphs"]["untuned"]["2"]  # a run still missing: 2 seeds there
    header, rows = _table_rows(write_compare_report(results, tmp_path)["table"].read_text())
    expected_header = ["loss", "recipe", "run", "seeds"]
    for h in HEADERS:
        expected_header += [h, f"{h} 95% CI"]
    assert header == expected_header  # counts (lone_queries, num_queries) are not columns
    assert len(rows) == 4
    for row in rows:
        recipe, variant = row[1].strip("`"), row[2]
        assert row[0] == results["losses"][recipe]["label"]
        assert row[3] == str(len(results["losses"][recipe][variant]))
        for j, metric in enumerate(METRICS):
            mean, sd, (low, high) = summary(values(results, recipe, variant, metric))
            assert row[4 + 2 * j] == f"{mean:.1f} ± {sd:.1f}"
            assert row[5 + 2 * j] == f"[{low:.1f}, {high:.1f}]"
    # By hand: MAP@R 42, 43, 41 -> mean 42.0, std 1.0, t(0.975, 2) = 4.303 -> 42 ± 2.48.
    rll_tuned = next(r for r in rows if r[1] == "`glyphs`" and r[2] == "tuned")
    assert rll_tuned[4 + 2 * METRICS.index("map@r") :][:2] == ["42.0 ± 1.0", "[39.5, 44.5]"]
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302653)


# --------------------------------------------------------------------------- (e) files


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_pictures_and_the_report_are_written(tmp_path):
    results = clear_lead()
    files = write_compare_report(results, tmp_path / "out")
    assert set(files) == {"table", "comparison", "validation_curves", "report"}
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in files.values())
    # 2 losses, 3 panels (R@1, MAP@R, NMI): (1.5 + 1.25 * 2) * 3 = 12 x 4 inches at 110 dpi.
    assert _png_size(files["comparison"]) == (1320, 440)
    assert _png_size(files["validation_curves"]) == (704, 396)  # 6.4 x 3.6 inches
    report = files["report"].read_text()
    sentences = summary_sentences(results)
    assert report.index(sentences[0]) < report.index("## Test results")
    assert "![test metrics per seed](comparison.png)" in report
    assert "![validation curves](validation_curves.png)" in report
    assert "| `lr` | [0.2, 5] | yes | shared |" in report
    assert "| `k` | one of 2, 4, 8 | – | shared |" in report
    assert "| `margin` | [0.1, 0.8] | no | this loss only |" in report
    assert "### RLL (`glyphs`, loss `rll`)" in report
    assert "| 1 | pruned | 0.4 | 20 | lr=0.02, margin=0.4 |" in report
    assert "The test split was read 12 times in all runs of this comparison" in report
    assert "versions: rankedlist 0.9.0, torch 2.6.0, optuna 4.1.0" in report
    assert "Warning" not in report and "Not finished" not in report


def test_a_comparison_in_progress_names_its_missing_runs_and_extra_test_reads(tmp_path):
    results = clear_lead()
    del results["losses"]["glyphs_ms"]["tuned"]["1"]
    del results["losses"]["glyphs_ms"]["tuned"]["2"]
    results["test_reads"] = 13
    sentences = summary_sentences(results)
    assert "Not finished yet (left out of every number): multi-similarity tuned seeds 1, 2." in (
        sentences
    )
    assert sentences[-1] == (
        "Warning: the test split was read 13 times, more than the 12 runs of the plan: some run "
        "was tested more than once."
    )
    for loss_ in results["losses"].values():
        loss_["best"] = None
    files = write_compare_report(results, tmp_path)
    assert "validation_curves" not in files and not (tmp_path / "validation_curves.png").exists()
    assert "No validation curves: no loss has a best trial" in files["report"].read_text()


# --------------------------------------------------------------------------- (f) the schema


@pytest.mark.parametrize(
    "path",
    [
        ("test_reads",),
        ("versions",),
        ("plan", "seeds"),
        ("plan", "pruner"),
        ("losses", "glyphs_ms"),
        ("losses", "glyphs", "label"),
        ("losses", "glyphs", "untuned"),
        ("losses", "glyphs", "space", "lr", "shared"),
        ("losses", "glyphs", "space", "margin", "high"),
        ("losses", "glyphs", "trials", 1, "state"),
        ("losses", "glyphs", "trials", 0, "curve"),
        ("losses", "glyphs", "best", "value"),
    ],
)
def test_a_results_dict_missing_a_key_is_refused_by_name(tmp_path, path):
    results = clear_lead()
    validate_results(results)
    broken = copy.deepcopy(results)
    node = broken
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    name = ".".join(str(k) for k in path).replace(".1.", "[1].").replace(".0.", "[0].")
    with pytest.raises(ValueError, match=f"missing the key {re.escape(name)}"):
        validate_results(broken)
    with pytest.raises(ValueError):
        write_compare_report(broken, tmp_path)
    assert not list(tmp_path.iterdir())
