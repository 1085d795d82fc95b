"""Distributed evaluation: 2 gloo processes against 1 process, same numbers to the bit.

The 2-process part runs once per module (``_dist_worker.py`` launched twice with torchrun's
environment variables), and so does a 1-process job with the same environment (the reference
for the torch back end: MKL rounds its float32 products differently when OpenMP is limited to one
thread, so only a process set up alike can match it bit for bit). The exact back ends are also
compared with the numbers computed here, in the test's own process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _workers import load_worker

import rankedlist.evaluation as ev

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORLD = 2


W = load_worker(HERE / "_dist_worker.py")  # the worker's cases, computed here too


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, gloo_ranks) -> list[dict]:
    """Run the worker on 2 ranks once; return what each rank computed."""
    out = tmp_path_factory.mktemp("dist_eval")
    gloo_ranks([sys.executable, str(HERE / "_dist_worker.py"), str(out)], world=WORLD)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, gloo_ranks) -> dict:
    """The worker as a job of one process, in the 2-process job's environment."""
    out = tmp_path_factory.mktemp("dist_eval_one")
    gloo_ranks([sys.executable, str(HERE / "_dist_worker.py"), str(out)], world=1)
    return json.loads((out / "rank0.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(W.cases()))
def test_two_processes_give_the_single_process_numbers(ranks, one_process, case):
    fn, kwargs = W.cases()[case]
    want = one_process[case]
    for res in ranks:
        assert res[case] == want  # identical floats: exact sums of identical per-query values
    assert 0 < want["map@r"] < 1
    if kwargs.get("backend") != "torch":  # exact to the bit whatever the process's threads
        assert getattr(ev, fn)(**kwargs) == want


@pytest.mark.slow
def test_cases_cover_lone_queries_and_both_screens(ranks):
    from rankedlist.evaluation._inputs import prepare
    from rankedlist.evaluation._screen_bound import choose_kind

    cases = W.cases()
    assert ranks[0]["gallery_auto"]["lone_queries"] >= 4  # 4 made lone, some by chance
    assert ranks[0]["same_auto"]["lone_queries"] >= 5  # the singletons, and chance
    same = cases["same_auto"][1]
    long = cases["same_float32"][1]
    assert choose_kind(prepare(same["query"], same["query_labels"], None, None)) == "bf16"
    assert choose_kind(prepare(long["query"], long["query_labels"], None, None)) == "float32"


def test_distributed_without_process_group_raises():
    x, y = W._data(50, 5, 8, seed=0)
    with pytest.raises(ValueError, match="process group"):
        ev.retrieval_metrics(x, y, distributed=True)


@pytest.mark.parametrize("n, world, unit", [(288, 2, 33), (10, 3, 1), (5, 4, 2), (0, 2, 7)])
def test_shares_are_whole_chunks_that_cover_every_row_once(n, world, unit):
    """Each process's rows are whole chunks of the single-process run, in order, none twice."""
    from rankedlist.evaluation._comm import share

    chunks = [list(range(s, min(n, s + unit))) for s in range(0, n, unit)]
    got = [list(range(n))[share(n, r, world, unit)] for r in range(world)]
    assert [i for part in got for i in part] == list(range(n))
    for part in got:
        starts = [c[0] for c in chunks]
        assert not part or (part[0] in starts and (part[-1] + 1 == n or part[-1] + 1 in starts))
    sizes = [-(-len(part) // unit) for part in got]  # chunks per process differ by one at most
    assert max(sizes) - min(sizes) <= 1
