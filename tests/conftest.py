"""Fixtures shared by every test folder: the tiny glyph run (``tiny_run``), child processes,
the ranks of a gloo job, and a throw-away PostgreSQL server (``postgres_url``).

``tests/`` is on ``sys.path`` (the ``pythonpath`` option in pyproject.toml): its helper modules
``_tiny_run`` (the tiny run for scripts in child processes) and ``_workers`` (a worker script
loaded as a module) import from any test folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from _tiny_run import TinyRun

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
def tiny_run() -> TinyRun:
    """The tiny glyph run (:class:`_tiny_run.TinyRun`): ``tiny_run.config(run_dir, *overrides)``,
    ``tiny_run.train(run_dir, *args)`` (the CLI in this process), ``tiny_run.argv(...)``,
    ``tiny_run.overrides``, ``tiny_run.records(run_dir)``."""
    return TinyRun()


@pytest.fixture(scope="session")
def gloo_ranks() -> Callable[..., list[str]]:
    """:func:`launch_gloo_ranks`: ``gloo_ranks([sys.executable, script, ...], expect=0)``."""
    return launch_gloo_ranks


@pytest.fixture(scope="session")
def child_env() -> Callable[..., dict[str, str]]:
    """:func:`child_environment`: the environment for a child process of a test."""
    return child_environment


# --------------------------------------------------------------------------- PostgreSQL

_POSTGRES_MISSING = (
    "the PostgreSQL server binaries (initdb, pg_ctl) are not under /usr/lib/postgresql/*/bin nor "
    "on PATH; install them with `apt-get install -y --no-install-recommends postgresql` (.ci/run "
    "does it in CI)"
)


def _postgres_bin() -> Path:
    """The folder of the newest installed ``initdb`` and ``pg_ctl`` (Debian's layout first)."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parents[1].name.split(".") if p.isdigit())

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if found and (found[-1].parent / "pg_ctl").is_file():
        return found[-1].parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    pytest.fail(_POSTGRES_MISSING, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (``postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres``) of a
    PostgreSQL server started for this test session (each xdist worker its own): a throw-away
    cluster (``initdb``, trust authentication, no fsync) in a temporary folder, listening on
    127.0.0.1 on a free port, stopped and deleted at the end. PostgreSQL refuses to run as root:
    as root the cluster belongs to the ``postgres`` user and its commands run through
    ``runuser``. Missing binaries or driver fail the test (never a skip: CI installs both)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail(
            "psycopg2 is not installed: pip install -e '.[tune]' (the tune extra brings the "
            "PostgreSQL driver)",
            pytrace=False,
        )
    bin_dir = _postgres_bin()
    # Not under pytest's tmp_path: its root folder is private to this user, and the server may
    # run as another one.
    base = Path(tempfile.mkdtemp(prefix="rankedlist-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(f"running as root, but there is no postgres user; {_POSTGRES_MISSING}")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = base / "data", base / "server.log", _free_port()

    def run(*argv: str, timeout: float = 60) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            server_log = log.read_text()[-3000:] if log.is_file() else ""
            pytest.fail(
                f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}\n{server_log}",
                pytrace=False,
            )

    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", options, "start")  # fmt: skip
        try:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
