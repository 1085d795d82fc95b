"""``rankedlist compare`` end to end on tiny glyph runs: the same search for every loss (read
back from the studies), the test split read once per (loss, kind, seed), the same command again
reading nothing, more seeds running only the new ones, more trials refused, two real processes
sharing one comparison (a journal file, a PostgreSQL database), one ``error:`` line per bad
input before anything runs."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from _compare_helpers import (
    RECIPES,
    RECORDED,
    REPO,
    TINY,
    compare_argv,
    load_study,
    logged_reads,
    run_cli,
    run_files,
    run_recorded,
    spawn,
    trained_steps,
)

from rankedlist.training.config import load_config
from rankedlist.training.recipes import find_recipe

optuna = pytest.importorskip("optuna")

KINDS = ("tuned", "untuned")
LOSSES = {"glyphs": "rll", "glyphs_ms": "multi_similarity"}
OWN = {"glyphs": {"margin", "gap", "Tn", "lam"}, "glyphs_ms": {"alpha", "beta", "base"}}
SHARED = ("lr", "k")
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """2 losses x 2 trials of 2 iterations, then tuned and untuned with seed 0."""
    root = tmp_path_factory.mktemp("compare")
    out, log = root / "out", root / "splits.log"
    argv = compare_argv(out, 2, [0], 2, f"data.dataset={RECORDED}")
    code = run_recorded(argv, log)
    assert code == 0
    return {  # what the first command left (later tests run the command again)
        "out": out,
        "log": log,
        "argv": argv,
        "splits": log.read_text().split(),
        "results": json.loads((out / "results.json").read_text()),
        "reads": logged_reads(out),
    }


def test_every_loss_gets_the_same_search_as_its_study_records(comparison):
    studies = {
        r: load_study(comparison["out"], f"compare-{Path(comparison['out']).name}-{r}")
        for r in RECIPES
    }
    records = {r: s.user_attrs["rankedlist_compare"] for r, s in studies.items()}
    assert records["glyphs"] == records["glyphs_ms"]
    record = records["glyphs"]
    assert (record["trials"], record["iterations"], record["eval_every"]) == (2, 2, 1)
    assert (record["pruner"], record["sampler_seed"], record["metric"]) == ("median", 0, "map@r")
    assert list(record["shared"]) == list(SHARED)
    for recipe, study in studies.items():
        assert len(study.trials) == 2 and all(t.state in DONE for t in study.trials)
        assert study.user_attrs["rankedlist_tune"]["recipe"]["train"]["iterations"] == 2
        assert all(set(t.params) == {*SHARED, *OWN[recipe]} for t in study.trials)
    for rll, ms in zip(studies["glyphs"].trials, studies["glyphs_ms"].trials, strict=True):
        assert {n: rll.distributions[n] for n in SHARED} == {n: ms.distributions[n] for n in SHARED}
        # The same sampler seed: the same draws of the shared dimensions, trial by trial.
        assert [rll.params[n] for n in SHARED] == [ms.params[n] for n in SHARED]
    lr = studies["glyphs"].trials[0].distributions["lr"]
    assert lr.log and (lr.low, lr.high) == pytest.approx((0.2 * 0.002, 5.0 * 0.002))
    # the batch of 16 splits into k = 2, 4 or 8 images per class (3 and 6 do not divide it)
    assert studies["glyphs"].trials[0].distributions["k"].choices == (2, 4, 8)


def test_the_test_split_is_read_once_per_loss_kind_and_seed(comparison):
    splits = comparison["splits"]
    runs = {(r, kind, 0) for r in RECIPES for kind in KINDS}
    assert splits.count("test") == len(runs) == 4
    assert splits.count("val") == 2 * 2  # one per trial; the final runs never validate
    assert sorted(comparison["reads"]) == sorted(runs)  # each logged once
    assert comparison["results"]["test_reads"] == 4


def test_results_json_holds_the_plan_the_trials_and_every_run(comparison):
    out, results = comparison["out"], comparison["results"]
    import torch

    plan = results["plan"]
    assert plan["recipes"] == RECIPES and list(results["losses"]) == RECIPES
    assert (plan["trials"], plan["seeds"], plan["folds"], plan["iterations"]) == (2, [0], 1, 2)
    assert (plan["metric"], plan["pruner"], plan["sampler_seed"]) == ("map@r", "median", 0)
    assert (plan["dataset"], plan["protocol"]) == (RECORDED, "glyphs")
    assert "train.iterations=2" in plan["overrides"]
    assert results["versions"]["torch"] == torch.__version__
    for recipe in RECIPES:
        loss, study = (
            results["losses"][recipe],
            load_study(out, f"compare-{Path(out).name}-{recipe}"),
        )
        assert loss["loss"] == LOSSES[recipe]
        assert {d for d, spec in loss["space"].items() if spec["shared"]} == set(SHARED)
        assert set(loss["space"]) - set(SHARED) == OWN[recipe]
        assert loss["space"]["k"]["choices"] == [2, 4, 8]
        for row, trial in zip(loss["trials"], study.trials, strict=True):
            assert (row["number"], row["state"], row["value"]) == (
                trial.number, trial.state.name, trial.value
            )  # fmt: skip
            assert row["params"] == trial.params
            assert row["curve"] == [[s, v] for s, v in sorted(trial.intermediate_values.items())]
            assert [s for s, _ in row["curve"]] == [1, 2]  # validated at both iterations
        best = max(study.trials, key=lambda t: t.value)
        assert loss["best"] == {"trial": best.number, "value": best.value, "params": best.params}
        for kind in KINDS:
            assert list(loss[kind]) == ["0"]
            for seed, metrics in loss[kind].items():
                saved = json.loads((out / "runs" / recipe / kind / f"seed{seed}" / "metrics.json")
                                   .read_text())["test"]  # fmt: skip
                assert metrics == saved and 0.0 < metrics["recall@1"] <= 1.0
    try:
        from rankedlist.compare.report import validate_results
    except ModuleNotFoundError:
        return
    validate_results(results)


def test_the_report_is_written_from_the_results(comparison):
    out = comparison["out"]
    for name in ("table.md", "report.md", "comparison.png", "validation_curves.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "table.md").read_text()
    assert "RLL" in table and "multi-similarity" in table


def test_tuned_runs_train_the_best_configuration_and_untuned_the_recipe(comparison):
    out, results = comparison["out"], comparison["results"]
    for recipe in RECIPES:
        best = results["losses"][recipe]["best"]["params"]
        tuned = load_config(out / "runs" / recipe / "tuned" / "seed0" / "config.yaml")
        untuned = load_config(out / "runs" / recipe / "untuned" / "seed0" / "config.yaml")
        assert tuned.optim.lr == pytest.approx(best["lr"]) and tuned.data.k == best["k"]
        assert tuned.data.p * tuned.data.k == 16 and tuned.data.val_fraction == 0.0
        assert (untuned.optim.lr, untuned.data.p, untuned.data.k) == (0.002, 8, 2)
        assert tuned.train.seed == untuned.train.seed == 0
        assert tuned.train.iterations == untuned.train.iterations == 2
        assert untuned.loss.params == load_config(find_recipe(recipe)).loss.params
        own = {n: best[n] for n in OWN[recipe] if n != "gap"}
        assert {n: tuned.loss.params[n] for n in own} == pytest.approx(own)


def test_the_same_command_again_reads_nothing_and_more_seeds_run_only_the_new_ones(
    comparison, capsys
):
    out, log, argv = comparison["out"], comparison["log"], comparison["argv"]
    before, files = log.read_text().split(), run_files(out)
    assert len(files) == 4
    # A process killed (SIGKILL) after a run's test, before it logged the read: no line for it.
    reads = out / "test_reads.jsonl"
    lines = reads.read_text().splitlines()
    reads.write_text("".join(f"{x}\n" for x in lines if '"untuned", "seed": 0' not in x))
    capsys.readouterr()

    assert run_recorded(argv, log) == 0  # the same command again
    said = capsys.readouterr().out
    again = log.read_text().split()
    assert again.count("test") == before.count("test")  # the test split not read again
    assert again.count("val") == before.count("val")  # and no trial ran
    assert run_files(out) == files  # every metrics.json: the same bytes, the same time
    assert "read 4 times in all" in said and "(0 by this command; 4 done runs reused" in said
    late = [r for r in map(json.loads, reads.read_text().splitlines()) if "late" in r]
    assert sorted((x["loss"], x["kind"], x["seed"]) for x in late) == [
        (r, "untuned", 0) for r in RECIPES
    ]  # logged once more, as tested by the killed process

    more = [*argv]
    seeds = more.index("--seeds")
    more[seeds + 1 : seeds + 2] = ["0", "1"]
    assert run_recorded(more, log) == 0
    extended = log.read_text().split()
    assert extended.count("test") - again.count("test") == 2 * len(KINDS)  # seed 1 only
    assert extended.count("val") == again.count("val")
    now = run_files(out)
    assert {k: now[k] for k in files} == files
    assert sorted(set(now) - set(files)) == sorted(
        f"runs/{r}/{kind}/seed1/metrics.json" for r in RECIPES for kind in KINDS
    )
    reads = logged_reads(out)
    assert len(reads) == len(set(reads)) == 8
    results = json.loads((out / "results.json").read_text())
    assert results["test_reads"] == 8 and results["plan"]["seeds"] == [0, 1]
    assert all(list(results["losses"][r][k]) == ["0", "1"] for r in RECIPES for k in KINDS)


def test_more_trials_after_the_tuned_runs_are_refused(comparison, capsys):
    out, log = comparison["out"], comparison["log"]
    more = [*comparison["argv"]]
    more[more.index("--trials") + 1] = "3"
    before, reads = log.read_text().split(), logged_reads(out)
    capsys.readouterr()
    assert run_recorded(more, log) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), captured
    assert str(out / "runs" / "glyphs" / "tuned") in err[0]
    assert "--trials 3" in err[0] and "new --out" in err[0]
    assert "compare:" not in captured.out and "tune:" not in captured.out
    assert log.read_text().split().count("test") == before.count("test")
    assert logged_reads(out) == reads
    assert all(len(load_study(out, f"compare-{Path(out).name}-{r}").trials) == 2 for r in RECIPES)
    assert not (out / "search" / "glyphs" / "trials" / "00002").exists()


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "postgres"])
def test_two_processes_share_one_comparison(storage, tmp_path, request, child_env):
    out = tmp_path / "out"
    url = request.getfixturevalue("postgres_url") if storage == "postgres" else None
    argv = compare_argv(out, 2, [0], 2, *(["--storage", url] if url else []))
    procs = [spawn(argv, child_env()) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs

    runs = [(r, kind, 0) for r in RECIPES for kind in KINDS]
    assert sorted(logged_reads(out)) == sorted(runs)  # every run tested once, by one of them
    by_each = [int(re.search(r"\((\d+) by this command", o).group(1)) for o in outputs]
    assert sum(by_each) == len(runs), outputs
    for recipe in RECIPES:
        study = load_study(out, f"compare-{Path(out).name}-{recipe}", url)
        assert len([t for t in study.trials if t.state in DONE]) == 2  # exactly N trials
        assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
        for kind in KINDS:
            assert trained_steps(out / "runs" / recipe / kind / "seed0") == [1, 2]  # once
    results = json.loads((out / "results.json").read_text())
    assert results["test_reads"] == len(runs)
    assert all(list(results["losses"][r][k]) == ["0"] for r in RECIPES for k in KINDS)


@pytest.mark.slow
def test_sigterm_stops_a_final_run_and_the_same_command_resumes_it(tmp_path, child_env, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--recipes", "glyphs", "--trials", "1", "--seeds", "0", "--out", str(out),
            *TINY, "train.iterations=12", "train.eval_every=6"]  # fmt: skip
    proc = spawn(argv, child_env())
    run_dir = out / "runs" / "glyphs" / "untuned" / "seed0"
    deadline = time.monotonic() + 180
    while not ((run_dir / "metrics.jsonl").is_file() and len(trained_steps(run_dir)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # mid final run
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "run the same command again" in output
    assert (run_dir / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    assert logged_reads(out) == []  # nothing was tested

    capsys.readouterr()
    assert run_cli(argv) == 0  # the same command again
    assert "glyphs untuned seed 0: resumed in" in capsys.readouterr().out
    assert trained_steps(run_dir) == list(range(1, 13))  # resumed: no step trained twice
    assert sorted(logged_reads(out)) == [("glyphs", "tuned", 0), ("glyphs", "untuned", 0)]
    assert len(load_study(out, f"compare-{Path(out).name}-glyphs").trials) == 1


# --------------------------------------------------------------------------- bad input


def _other_protocol(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "glyphs.yaml").read_text())
    data["train"]["protocol"] = "default"
    path = tmp_path / "glyphs_default.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"recipes": ["glyphs", str(path)]}, ["protocol glyphs", "protocol default", str(path)]


def _plan_with_a_typo(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("recipes: [glyphs, glyphs_ms]\ntrails: 3\n")
    return {"options": ["--plan", str(path)]}, [f"plan file {path}", "trails", "recipes, trials"]


BAD_INPUT = {
    "unknown recipe": ({"recipes": ["glyphs", "nope"]},
                       ["'nope' is neither", "glyphs_ms", "glyphs_triplet", "rankedlist recipes"]),
    "other dataset": ({"recipes": ["glyphs", "cub200_resnet50"]},
                      ["dataset glyphs", "dataset cub200", "cub200_resnet50.yaml", "data.dataset"]),
    "other protocol": _other_protocol,
    "budget": ({"extra": ["data.p=128"]}, ["data.p=128", "only", "classes", "lower data.p"]),
    "storage": ({"options": ["--storage", "postgresql+psycopg2://me:secret@127.0.0.1:1/db"]},
                ["--storage", "me:***@127.0.0.1:1/db", "cannot open the database"]),
    "seeds": ({"options": ["--seeds", "0", "x"]}, ["--seeds 'x' is not a seed", "whole numbers"]),
    "trials": ({"options": ["--trials", "0"]}, ["--trials '0'", "whole number >= 1"]),
    "folds": ({"options": ["--folds", "6"]}, ["--folds 6", "val_fraction 0.2", "--folds 5"]),
    "plan file": _plan_with_a_typo,
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT, ids=str)
def test_bad_input_is_one_error_line_before_anything_runs(case, tmp_path, capsys):
    given = BAD_INPUT[case]
    (parts, expected) = given(tmp_path) if callable(given) else given
    out = tmp_path / "out"
    argv = ["compare", "--recipes", *parts.get("recipes", RECIPES), "--trials", "2",
            "--seeds", "0", "--out", str(out), *parts.get("options", []), *TINY,
            "train.iterations=2", *parts.get("extra", [])]  # fmt: skip
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured
    for text in expected:
        assert text in err[0], (text, err[0])
    assert "secret" not in captured.err
    assert "compare:" not in captured.out and "tune:" not in captured.out
    assert not (out / "runs").exists() and not (out / "search").exists()


# --------------------------------------------------------------------------- the plan


def test_a_plan_file_and_the_command_line_make_one_plan(tmp_path):
    from rankedlist.cli.compare import plan_from_args
    from rankedlist.cli.main import parse_command_line

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "recipes: [glyphs, glyphs_ms]\ntrials: 5\nseeds: [0, 1]\nfolds: 2\n"
        "overrides: [train.iterations=300]\npruner: none\n"
    )
    args = parse_command_line(
        ["compare", "--plan", str(plan_file), "--trials", "6", "data.p=16", "--sampler-seed", "3"]
    )
    plan = plan_from_args(args)
    assert plan.recipes == ("glyphs", "glyphs_ms") and plan.trials == 6  # the option wins
    assert (plan.seeds, plan.folds, plan.pruner, plan.sampler_seed) == ((0, 1), 2, "none", 3)
    assert plan.overrides == ("train.iterations=300", "data.p=16")  # the file's, then these
    assert (plan.metric, plan.storage, str(plan.out)) == ("map@r", None, "runs/compare")

    args = parse_command_line(["compare", "--recipes", "glyphs", "glyphs_ms", "train.seed=1",
                               "--seeds", "2", "3", "--out", "x=y"])  # fmt: skip
    plan = plan_from_args(args)
    assert plan.recipes == ("glyphs", "glyphs_ms") and plan.seeds == (2, 3)
    assert plan.overrides == ("train.seed=1",) and str(plan.out) == "x=y"
