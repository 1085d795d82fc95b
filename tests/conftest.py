"""Fixtures shared by every test folder: child processes and the ranks of a gloo job."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT")  # fmt: skip


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child process: no torchrun variables inherited, this
    checkout's ``src`` first on ``PYTHONPATH``, one BLAS/OpenMP thread (two ranks share 2 cores),
    then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _JOB_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **extra)
    return env


def launch_gloo_ranks(
    command: Sequence[str], world: int = 2, expect: int = 0, timeout: float = 180
) -> list[str]:
    """Run ``command`` once per rank with torchrun's variables (one job on a free local port),
    wait for all, check every exit status is ``expect`` and return each rank's output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            list(command),
            env=child_environment(
                RANK=str(rank),
                WORLD_SIZE=str(world),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            ),  # fmt: skip
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:  # a rank that hangs (or a timeout) must not outlive the test
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == expect, (
            f"rank {rank} exited with {p.returncode}, expected {expect}:\n{log[-4000:]}"
        )
    return logs


@pytest.fixture(scope="session")
def gloo_ranks() -> Callable[..., list[str]]:
    """:func:`launch_gloo_ranks`: ``gloo_ranks([sys.executable, script, ...], expect=0)``."""
    return launch_gloo_ranks


@pytest.fixture(scope="session")
def child_env() -> Callable[..., dict[str, str]]:
    """:func:`child_environment`: the environment for a child process of a test."""
    return child_environment
