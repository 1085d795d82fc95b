"""Distributed evaluation: 2 gloo processes against 1 process, same numbers to the bit.

The 2-process part runs once per module (``_dist_worker.py`` launched twice with torchrun's
environment variables); the tests compute the same cases here in one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import rankedlist.evaluation as ev

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORLD = 2


def _load_worker():
    spec = importlib.util.spec_from_file_location("_dist_worker", HERE / "_dist_worker.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


W = _load_worker()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the worker on 2 ranks once; return what each rank computed."""
    out = tmp_path_factory.mktemp("dist_eval")
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.update(
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "_dist_worker.py"), str(out)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed (rc {p.returncode}):\n{log[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(W.cases()))
def test_two_processes_give_the_single_process_numbers(ranks, case):
    fn, kwargs = W.cases()[case]
    want = getattr(ev, fn)(**kwargs)
    for res in ranks:
        assert res[case] == want  # identical floats: exact sums of identical per-query values
    assert 0 < want["map@r"] < 1


def test_cases_cover_lone_queries_and_both_screens(ranks):
    from rankedlist.evaluation._inputs import prepare
    from rankedlist.evaluation._screened import choose_kind

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
