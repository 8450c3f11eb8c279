"""Scanning in worker processes gives exactly what one process gives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import manifest.root.pool
from manifest import ChangeSet, Repository, load_config
from manifest.root.pool import choose_jobs

from .conftest import write


def _tree(root: Path, folders: int = 24, files: int = 5) -> None:
    for d in range(folders):
        for f in range(files):
            write(root / f"d{d:02d}" / f"s{d % 3}" / f"f{f}.csv", f"folder {d} file {f}\n")
    write(root / "top.csv", "at the top\n")


def _repo(tmp_path: Path, store: str, jobs: int, mode: str = "content_hash") -> Repository:
    env = {"MANIFEST_JOBS": str(jobs)}
    config = load_config(
        root=tmp_path / "raw", store=tmp_path / store, mode=mode, cooldown_sec=0, env=env
    )
    return Repository(config, lock_timeout=2.0)


@pytest.mark.parametrize("mode", ["content_hash", "mtime_size"])
@pytest.mark.usefixtures("fine_timestamps")
def test_parallel_scan_equals_the_serial_scan(tmp_path: Path, mode: str) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    serial, parallel = _repo(tmp_path, "one", 1, mode), _repo(tmp_path, "two", 2, mode)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    def both() -> tuple[tuple[object, ...], tuple[object, ...]]:
        a, b = serial.scan(base=None), parallel.scan(base=None)
        assert a.jobs == 1 and b.jobs == 2  # a worker and this process
        return (
            (a.root_id, a.files, a.bytes, a.hashed, a.unstable, a.problems),
            (b.root_id, b.files, b.bytes, b.hashed, b.unstable, b.problems),
        )

    first = both()
    assert first[0] == first[1]
    write(raw / "d03" / "s0" / "f1.csv", "edited\n")
    write(raw / "d07" / "s1" / "new.csv", "new\n")
    os.unlink(raw / "d11" / "s2" / "f0.csv")
    second = both()
    assert second[0] == second[1] and second[0][0] != first[0][0]
    warm = both()  # every folder a stat-cache match on both sides
    assert warm[0] == warm[1] and warm[0][:3] == second[0][:3]
    assert warm[0][3] == 0  # nothing re-read


@pytest.mark.usefixtures("fine_timestamps")
def test_snapshots_from_workers_diff_like_serial_ones(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    repo = _repo(tmp_path, "state", 2)
    base, changes = repo.snapshot(ref="last")
    assert len(changes.added) == 24 * 5 + 1
    write(raw / "d05" / "s2" / "f3.csv", "changed\n")
    status = repo.status()
    assert status.changes == ChangeSet(modified=("d05/s2/f3.csv",))
    assert status.hashed == 1
    # a second status: the edited folder now matches the cache, its tree is rebuilt from it
    again = repo.status()
    assert again.changes == status.changes and again.hashed == 0
    snap, _ = repo.snapshot(ref="last")
    assert repo.diff(base, snap) == ChangeSet(modified=("d05/s2/f3.csv",))
    assert repo.fsck().ok


@pytest.mark.usefixtures("fine_timestamps")
def test_a_worker_that_dies_leaves_its_subtrees_to_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    (tmp_path / "one").mkdir()
    expected = _repo(tmp_path, "one", 1).scan(base=None)
    # real worker processes that SIGKILL themselves as soon as they get their first task
    suicide = (
        "import os, signal, sys; sys.stdin.buffer.read(8); os.kill(os.getpid(), signal.SIGKILL)"
    )
    monkeypatch.setattr(manifest.root.pool, "worker_argv", lambda: [sys.executable, "-c", suicide])
    (tmp_path / "two").mkdir()
    got = _repo(tmp_path, "two", 2).scan(base=None)
    assert (got.root_id, got.files, got.bytes, got.hashed) == (
        expected.root_id,
        expected.files,
        expected.bytes,
        expected.hashed,
    )


@pytest.mark.usefixtures("fine_timestamps")
def test_workers_never_import_a_manifest_folder_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project folder may hold its own ``manifest`` package (or ``manifest.py``). A worker
    started from there runs this package, not that one."""
    raw = tmp_path / "raw"
    _tree(raw)
    marker = tmp_path / "decoy-imported"
    decoy = tmp_path / "project" / "manifest"
    write(decoy / "__init__.py", f"open({str(marker)!r}, 'w').close()\n")
    write(decoy / "pool.py", "raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path / "project")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    expected = _repo(tmp_path, "one", 1).scan(base=None)
    got = _repo(tmp_path, "two", 2).scan(base=None)
    assert got.jobs == 2
    assert (got.root_id, got.files) == (expected.root_id, expected.files)
    assert not marker.exists()


def test_a_folder_swapped_for_a_symlink_in_a_worker_is_never_followed(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    repo = _repo(tmp_path, "state", 2)
    repo.snapshot(ref="last")
    outside = tmp_path / "outside"
    write(outside / "secret.csv", "s\n")
    os.rename(raw / "d09", tmp_path / "d09_moved")
    (raw / "d09").symlink_to(outside, target_is_directory=True)
    status = repo.status()
    assert status.changes.added == ("d09",)  # the symlink itself
    assert status.changes.removed == tuple(f"d09/s0/f{f}.csv" for f in range(5))
    assert not any("secret" in p for p in status.changes.paths)


def test_a_worker_can_send_a_big_result_without_waiting_to_be_read() -> None:
    """A subtree whose folders all changed sends tens of KiB of cache records: the result
    pipe holds it, so the worker goes on to its next subtree while this process is busy."""
    import fcntl

    proc = manifest.root.pool.start_worker(-1)
    assert proc is not None and proc.stdout is not None
    try:
        size = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        max_size = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        assert size == min(manifest.root.pool.PIPE_BYTES, max_size) > 64 * 1024
    finally:
        manifest.root.pool.stop_spares([proc])


def test_choose_jobs() -> None:
    assert choose_jobs(10, None) == 1  # small: one process
    assert choose_jobs(10, 3) == 3  # MANIFEST_JOBS wins
    cores = len(os.sched_getaffinity(0))
    assert choose_jobs(2_000_000, None) == max(1, min(cores, manifest.root.pool.MAX_JOBS))


@pytest.mark.usefixtures("fine_timestamps")
def test_workers_apply_the_filters_and_skip_a_store_inside_the_root(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    write(raw / "d04" / "s1" / "notes.txt", "not a csv\n")

    def scan(jobs: int, store: str) -> tuple[object, ...]:
        config = load_config(
            root=raw,
            store=raw / store,  # inside the root: never scanned
            cooldown_sec=0,
            include=("**/*.csv", "**/*.txt"),
            exclude=("d1*/**", "**/f4.csv"),
            env={"MANIFEST_JOBS": str(jobs)},
        )
        (raw / store).mkdir(exist_ok=True)
        result = Repository(config).scan(base=None)
        return (result.root_id, result.files, result.jobs > 1)

    serial, parallel = scan(1, ".one"), scan(2, ".two")
    assert serial[:2] == parallel[:2] and parallel[2] and not serial[2]
    # 24 folders minus d10-d19, 4 csv files each, plus the top csv and the txt
    assert serial[1] == 14 * 4 + 1 + 1


@pytest.mark.usefixtures("fine_timestamps")
def test_progress_counts_every_file_once(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    repo = _repo(tmp_path, "state", 2)
    (tmp_path / "state").mkdir()
    seen: list[int] = []
    hashed: list[int] = []
    repo.scan(base=None, on_walk=lambda files, _b: seen.append(files), on_hash=hashed.append)
    assert seen and max(seen) <= 24 * 5 + 1  # never more than there are
    assert sum(hashed) == sum(p.stat().st_size for p in raw.rglob("*.csv"))


@pytest.mark.usefixtures("fine_timestamps")
def test_workers_started_early_are_used_or_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan that knows from its last snapshot that the tree is big starts its workers
    before loading the stat cache; every worker it starts is used, and none outlives it."""
    raw = tmp_path / "raw"
    _tree(raw)
    repo = _repo(tmp_path, "state", 2)
    repo.snapshot(ref="last")
    started: list[object] = []
    real_start = manifest.root.pool.start_worker

    def recording(index_fd: int) -> object:
        proc = real_start(index_fd)
        started.append(proc)
        return proc

    spares_seen: list[int] = []
    real_spares = manifest.root.pool.start_spares

    def spares(count: int, index_fd: int) -> object:
        spares_seen.append(count)
        return real_spares(count, index_fd)

    monkeypatch.setattr(manifest.root.pool, "start_worker", recording)
    monkeypatch.setattr(manifest.root.pool, "start_spares", spares)
    write(raw / "d02" / "s2" / "f1.csv", "edited\n")
    status = repo.status()
    assert status.changes == ChangeSet(modified=("d02/s2/f1.csv",))
    assert spares_seen == [1] and len(started) == 1  # the spare was the worker
    assert all(p.returncode is not None for p in started)  # type: ignore[attr-defined]

    # A root that cannot be split (no subfolder) never hands the spare a task: it is
    # stopped, not left behind.
    flat = tmp_path / "flat"
    write(flat / "a.csv", "a\n")
    config = load_config(
        root=flat,
        store=tmp_path / "flat_state",
        mode="content_hash",
        cooldown_sec=0,
        env={"MANIFEST_JOBS": "2"},
    )
    flat_repo = Repository(config, lock_timeout=2.0)
    flat_repo.snapshot(ref="last")
    started.clear()
    spares_seen.clear()
    assert flat_repo.status().changes == ChangeSet()
    assert spares_seen == [1] and len(started) == 1
    assert all(p.returncode is not None for p in started)  # type: ignore[attr-defined]


_SCRIPT_HEAD = """
import sys
import manifest.fingerprint
manifest.fingerprint.RACY_NS = 1
from manifest import Repository, load_config
def repo(store, jobs):
    return Repository(load_config(root=sys.argv[1], store=store, mode=sys.argv[2],
                      cooldown_sec=0, env={"MANIFEST_JOBS": str(jobs)}))
"""


def _run_script(body: str, *args: str, prefix: list[str] | None = None) -> str:
    import subprocess

    done = subprocess.run(
        [*(prefix or []), sys.executable, "-c", _SCRIPT_HEAD + body, *args],
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails the test instead of the CI run
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_big_task_and_a_big_result_at_once_do_not_deadlock(tmp_path: Path) -> None:
    """The parent writes a task (its subtree's stat cache records: more than a pipe holds)
    while the worker writes a big result for the task before: the worker reads its tasks on
    a thread of its own, so neither waits for the other forever. The result pipe is left at
    its default size here so that small trees show it."""

    raw = tmp_path / "raw"
    for s in range(4):
        for f in range(450):
            for x in range(2):
                # four levels of one folder: the scan hands out the four s* subtrees whole
                path = raw / "a" / "b" / "c" / "d" / f"s{s}" / f"f{f:03d}" / f"x{x}.csv"
                write(path, f"{s} {f} {x}\n")
    body = """
import os, time
import manifest.root.pool
manifest.root.pool.widen_pipe = lambda fd: None
store = sys.argv[3]
serial = repo(store + "-serial", 1)
parallel = repo(store, 2)
parallel.snapshot(ref="last")
stamp = time.time_ns() - 3600 * 10**9
for top, _dirs, files in os.walk(sys.argv[1]):
    for name in files:
        os.utime(os.path.join(top, name), ns=(stamp, stamp))
time.sleep(0.05)
got = parallel.scan(base=None)
want = serial.scan(base=None)
print(got.jobs, got.root_id == want.root_id, got.files, want.files)
"""
    out = _run_script(body, str(raw), "mtime_size", str(tmp_path / "state"))
    jobs, same, files, want = out.split()
    assert (jobs, same, files, want) == ("2", "True", "3600", "3600")


def test_an_unreadable_folder_that_was_a_file_is_carried_as_a_file(tmp_path: Path) -> None:
    """A task's folder that cannot be read, whose entry in the base snapshot is a file: the
    worker carries it as a file of its parent (not a subfolder), as a one-process scan does."""
    import shutil
    import subprocess

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads every folder, and setpriv is not there to drop that")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()}")
    raw = tmp_path / "raw"
    # folders interleaved with files that will become unreadable folders: whichever process
    # takes which task, the worker gets some of them
    for d in range(24):
        for f in range(40):
            write(raw / "a" / "top" / f"d{d:02d}" / f"f{f}.csv", f"{d} {f}\n")
        write(raw / "a" / "top" / f"x{d:02d}", "I was a file with many bytes in it\n")
    body = """
import os
one, two = repo(sys.argv[3] + "-1", 1), repo(sys.argv[3] + "-2", 2)
s1, s2 = one.snapshot(ref="last")[0], two.snapshot(ref="last")[0]
xs = [os.path.join(sys.argv[1], "a", "top", f"x{d:02d}") for d in range(24)]
for x in xs:
    os.unlink(x)
    os.makedirs(os.path.join(x, "inner"))
    open(os.path.join(x, "inner", "g.csv"), "w").write("g\\n")
    os.chmod(x, 0)
try:
    r1, r2 = one.scan(base=s1), two.scan(base=s2)
finally:
    for x in xs:
        os.chmod(x, 0o755)
print(r2.jobs, len(r1.problems), r1.root_id == r2.root_id, r1.files, r2.files)
"""
    out = _run_script(body, str(raw), "content_hash", str(tmp_path / "state"), prefix=prefix)
    jobs, problems, same, files_one, files_two = out.split()
    assert (jobs, problems) == ("2", "24")
    assert (same, files_one, files_two) == ("True", "984", "984")


@pytest.mark.usefixtures("fine_timestamps")
def test_a_stopped_worker_is_given_up_like_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22.15: a worker that stops answering (SIGSTOP) would make the scan wait
    forever; it is given up (killed, its tasks scanned here) within seconds."""
    import time

    raw = tmp_path / "raw"
    _tree(raw)
    (tmp_path / "one").mkdir()
    expected = _repo(tmp_path, "one", 1).scan(base=None)
    stopped = (
        "import os, signal, sys; sys.stdin.buffer.read(8); os.kill(os.getpid(), signal.SIGSTOP)"
    )
    monkeypatch.setattr(manifest.root.pool, "worker_argv", lambda: [sys.executable, "-c", stopped])
    (tmp_path / "two").mkdir()
    started = time.monotonic()
    got = _repo(tmp_path, "two", 2).scan(base=None)
    assert time.monotonic() - started < 30
    assert (got.root_id, got.files, got.bytes) == (expected.root_id, expected.files, expected.bytes)
