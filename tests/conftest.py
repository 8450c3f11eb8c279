from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from manifest import Repository, load_config


def _temporary_files_in_memory() -> None:
    """The tests' temporary files (pytest's ``tmp_path``, ``tempfile``, and every process a
    test starts: daemons, code servers, runs, the Postgres and S3 servers) on ``/dev/shm``, a
    RAM file system, where there is one and ``TMPDIR`` does not say otherwise: Dagster's
    SQLite storages sync every event to disk, and on a 2-core machine the suite waited on
    those writes (tests/glue/test_tick.py and test_exactness.py alone: 52 s -> 38 s). Nothing
    here tests durability across a power loss; the crash tests kill processes, not the
    machine. ``MANIFEST_TEST_DISK_TMP=1`` keeps them on disk."""
    if "TMPDIR" in os.environ or os.environ.get("MANIFEST_TEST_DISK_TMP"):
        return
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return
    base = shm / f"manifest-tests-{os.getuid()}"
    base.mkdir(exist_ok=True)
    # others may pass through (not list): the Postgres server, run as its own user when
    # the tests run as root, reaches its data folder below
    base.chmod(0o711)
    os.environ["TMPDIR"] = str(base)  # the workers and every process they start inherit it
    tempfile.tempdir = None  # recomputed from TMPDIR


_temporary_files_in_memory()

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OLD = 60.0  # seconds: default age of test files, safely outside any cooldown/racy window


def write(path: Path, content: str | bytes, *, age: float = OLD) -> Path:
    """Write a file and date it ``age`` seconds in the past."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    stamp = time.time_ns() - int(age * 1e9)
    os.utime(path, ns=(stamp, stamp))
    return path


def on_tty(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str]:
    """Run ``argv`` with its standard output on a new terminal (a pty; stderr discarded):
    its exit code and everything it wrote there."""
    import pty
    import subprocess

    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout=60)
    os.close(leader)
    return code, b"".join(chunks).decode()


@pytest.fixture
def project(tmp_path: Path, raw: Path) -> Iterator[Any]:
    """A project folder with the sample tree and its store, and a watcher running for it in
    the foreground (``tests.test_server.Project``); stopped after the test."""
    import shutil

    from tests.test_server import Project

    folder = tmp_path / "project"
    folder.mkdir()
    moved = folder / "raw"
    shutil.move(raw, moved)
    p = Project(folder, moved)
    yield p
    p.stop()


def touch(path: Path, *, age: float = OLD / 2) -> None:
    stamp = time.time_ns() - int(age * 1e9)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    write(root / "concepts" / "concepts_metadata.csv", "concept_id,name\nc1,tide\nc2,ember\n")
    write(root / "concepts" / "descriptions" / "c1.txt", "The tide.\n")
    write(root / "concepts" / "descriptions" / "c2.txt", "An ember.\n")
    write(root / "link_templates.csv", "template_id,template_file\nanalogy,links/analogy.txt\n")
    write(root / "links" / "analogy.txt", "{concept_a} is like {concept_b}\n")
    return root


MakeRepo = Callable[..., Repository]


@pytest.fixture
def make_repo(tmp_path: Path, raw: Path) -> MakeRepo:
    def make(*, sync: bool = True, **overrides: object) -> Repository:
        """``sync=False`` where durability is not under test: no fsync, same write paths
        for a few objects (many trees at once take the bulk path only when syncing)."""
        kwargs: dict[str, object] = {
            "root": raw,
            "store": tmp_path / "state",
            "cooldown_sec": 0,
            "env": {},
        }
        kwargs.update(overrides)
        return Repository(load_config(**kwargs), lock_timeout=2.0, sync=sync)  # type: ignore[arg-type]

    return make


@pytest.fixture
def repo(make_repo: MakeRepo) -> Repository:
    return make_repo()


from tests.postgres import postgres_server  # noqa: E402, F401  (a real PostgreSQL server)
from tests.s3server import s3, s3_server  # noqa: E402, F401  (a real S3 API on 127.0.0.1)


@pytest.fixture
def make_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The sample on a real Dagster test instance (tests/glue/harness.py). Dagster is imported
    here, not at the top: the spawned children of the process tests import this module
    (for ``write``) and need no Dagster."""
    from tests.glue.harness import harness_factory

    with harness_factory(tmp_path, monkeypatch) as make:
        yield make


@pytest.fixture
def fine_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The racy window of a filesystem with exact timestamps. Test files are written a few
    milliseconds before they are scanned, and ``utime`` cannot age a ctime: under the
    default 2 s window (FAT's tick) every such file is racy and re-hashed once more."""
    import manifest.fingerprint

    monkeypatch.setattr(manifest.fingerprint, "RACY_NS", 1)


# The fast tests that take longest (each a few real subprocesses: dg, dagster dev, the demo's
# runs, killed writers): they go first among the fast ones, so that none of them starts last
# and holds the suite's end (the longest first, as a scheduler of unequal jobs does)
LONGEST_FAST = (
    "tests/glue/test_dg.py",
    "tests/glue/test_entrypoints.py",
    "tests/glue/test_bucket_glue.py",
    "tests/glue/test_one_truth.py",
    "tests/glue/test_adopt.py",
    "tests/test_crash.py",
    "tests/cli/test_bucket_cli.py",
    "tests/glue/test_bucket_events_glue.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n N`), the slow tests (the real daemon, mostly waiting for cron
    minutes or runs) start first, one per worker: xdist hands each worker two consecutive
    tests to begin with, so slow tests go at every other position, each followed by a short
    fast one (it waits for the slow one). N must exceed their count (seven: `.ci/run` uses
    `-n 8`), or a slow test waits for a worker and the fast ones wait behind them all; the
    extra worker starts on the fast ones at once, on the CPU the daemon tests leave idle
    between their ticks, the longest of them first (``LONGEST_FAST``)."""
    if not (hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None)):
        return  # not under xdist (workers collect; the controller only schedules)
    slow = [i for i in items if i.get_closest_marker("slow")]
    fast = [i for i in items if not i.get_closest_marker("slow")]
    # stable: the longest modules first, in LONGEST_FAST's order, then the rest as collected
    fast.sort(
        key=lambda i: next(
            (n for n, m in enumerate(LONGEST_FAST) if i.nodeid.startswith(m)), len(LONGEST_FAST)
        )
    )
    # a slow test's partner waits for it on its worker: partners come from the end (the
    # shorter tests), the longest from the front
    partners = fast[len(fast) - min(len(slow), len(fast)) :]
    rest = fast[: len(fast) - len(partners)]
    ordered: list[pytest.Item] = []
    for n, item in enumerate(slow):
        ordered.append(item)
        if n < len(partners):
            ordered.append(partners[n])
    ordered.extend(rest)
    items[:] = ordered
