"""The local store's refs beyond what every store guarantees (tests/store/test_conformance.py):
lock files and their takeover, torn and failed reflog writes, ref names."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manifest import Repository
from manifest.errors import (
    DanglingRefError,
    InvalidRefNameError,
    LockHeldError,
    RefConflictError,
    StoreError,
)
from manifest.store.refs import RefStore, validate_ref_name

from .conftest import write

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def refs(tmp_path: Path) -> RefStore:
    return RefStore(tmp_path, lock_timeout=0.2)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a/../b",
        "../escape",
        "/abs",
        "a//b",
        "trail/",
        "bad\nname",
        "tab\tname",
        "a.lock",
        "x@{1}",
        "sp ace",
        "dir/.hidden..x",
        "-dash",
    ],
)
def test_invalid_ref_names(name: str) -> None:
    with pytest.raises(InvalidRefNameError):
        validate_ref_name(name)


@pytest.mark.parametrize("name", ["last", "pending", "team/backfill-2026", "v1.2_rc"])
def test_valid_ref_names(name: str) -> None:
    assert validate_ref_name(name) == name


def test_garbage_ref_is_dangling(refs: RefStore, tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "last").write_text("not-an-id\n")
    with pytest.raises(DanglingRefError, match="manifest reset last"):
        refs.find_ref("last")


def test_held_lock_names_itself_and_its_age(refs: RefStore, tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "last.lock").write_text("12345 host\n")
    with pytest.raises(LockHeldError) as info:
        refs.update_ref("last", A, reason="x")
    message = str(info.value)
    assert "refs/last.lock exists" in message and "remove it" in message
    assert info.value.exit_code == 4
    assert refs.find_ref("last") is None


def test_lock_is_released_after_an_error(refs: RefStore, tmp_path: Path) -> None:
    with pytest.raises(RefConflictError):
        refs.update_ref("last", A, reason="x", expected=B)
    assert not (tmp_path / "refs" / "last.lock").exists()
    refs.update_ref("last", A, reason="x")


def test_torn_reflog_line_is_skipped(refs: RefStore, tmp_path: Path) -> None:
    refs.update_ref("last", A, reason="x")
    with open(tmp_path / "logs" / "refs" / "last", "ab") as fh:
        fh.write(b'{"old":null,"ne')
    assert len(refs.read_reflog("last")) == 1
    assert list(refs.iter_reflog_problems("last"))


@pytest.fixture
def repo_with_two(repo: Repository, raw: Path) -> tuple[Repository, str, str]:
    first, _ = repo.snapshot(ref="last", message="one")
    write(raw / "link_templates.csv", "template_id\nother\n")
    second, _ = repo.snapshot(ref="last", message="two")
    return repo, first, second


def test_a_failed_reflog_write_leaves_the_ref_unmoved(
    repo_with_two: tuple[Repository, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, first, second = repo_with_two
    assert repo.find_ref("last") == second

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(repo.refs, "_append_reflog", full)
    with pytest.raises(StoreError, match="last not moved"):
        repo.reset("last", first)
    assert repo.find_ref("last") == second
    monkeypatch.undo()
    assert repo.resolve("last@{0}") == second


def test_a_failed_ref_write_after_its_line_is_skipped_and_reported(
    repo_with_two: tuple[Repository, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, first, second = repo_with_two
    import manifest.store.refs

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(manifest.store.refs, "atomic_write", broken)
    with pytest.raises(StoreError, match="last not moved"):
        repo.reset("last", first)
    monkeypatch.undo()
    assert repo.find_ref("last") == second
    assert repo.resolve("last@{0}") == second  # the line that never took effect is skipped
    assert repo.log("last")[0].id == second
    warnings = [p.message for p in repo.fsck().problems if p.subject == "reflog last"]
    assert any("never happened" in m for m in warnings)
    repo.reset("last", first)  # and the next move works, its line follows on
    assert repo.resolve("last@{0}") == first and repo.resolve("last@{1}") == second


def test_a_message_with_undecodable_bytes_is_logged(
    repo_with_two: tuple[Repository, str, str],
) -> None:
    repo, first, _ = repo_with_two
    repo.reset("last", first, message=os.fsdecode(b"caf\xe9\nnext"))
    assert repo.log("last")[0].reason == "reset by hand: caf\\xe9\\nnext"


def test_a_lock_that_cannot_be_written_is_not_left_behind(
    refs: RefStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import manifest.fsutil

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest.fsutil, "write_all", full)
    with pytest.raises(StoreError, match="cannot write lock"):
        refs.update_ref("last", "a" * 64, reason="x")
    assert not list((tmp_path / "refs").glob("*.lock"))


def test_a_lock_whose_holder_is_gone_is_taken_over(
    refs: RefStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22.1: a lock left by a crash never needs a person. A dead pid, or a live pid
    that is another process (another start time, a reused pid), on this host: taken over
    and logged. A live holder, or a lock from another host: waited for, never taken."""
    import socket

    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    (tmp_path / "refs").mkdir(exist_ok=True)
    lock = tmp_path / "refs" / "last.lock"
    refs.lock_timeout = 0.0
    lock.write_text(f"{child.pid} {host} 1\n")  # as an older version wrote it
    with caplog.at_level("WARNING", logger="manifest"):
        refs.update_ref("last", "a" * 64, reason="x")
    assert "took over" in caplog.text and f"pid {child.pid}" in caplog.text
    assert refs.find_ref("last") == "a" * 64 and not lock.exists()
    lock.write_text(f"{os.getpid()} {host} 1 - 1\n")  # this pid, but another start time
    refs.update_ref("last", "b" * 64, reason="x")
    assert refs.find_ref("last") == "b" * 64
    for holder in (f"{os.getpid()} {host} 1\n", f"{child.pid} elsewhere 1\n"):
        lock.write_text(holder)  # a live holder here; a lock of another host
        with pytest.raises(LockHeldError):
            refs.update_ref("last", "c" * 64, reason="x")
    lock.unlink()


def test_a_holder_killed_with_sigkill_blocks_nobody(refs: RefStore, tmp_path: Path) -> None:
    """A real process holding the lock (the flock and the file), killed with SIGKILL: the
    next writer proceeds at once; fsck calls the leftover a warning (exit 0)."""
    import signal

    (tmp_path / "refs").mkdir(exist_ok=True)
    code = (
        "import sys, time; from pathlib import Path; from manifest.fsutil import LockFile;"
        "lock = LockFile(Path(sys.argv[1])); lock.acquire(); print('held', flush=True);"
        "time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "refs" / "last")], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    refs.lock_timeout = 0.2
    with pytest.raises(LockHeldError):  # alive: waited for
        refs.update_ref("last", "a" * 64, reason="x")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "refs" / "last.lock").exists()
    refs.lock_timeout = 0.0
    refs.update_ref("last", "a" * 64, reason="x")  # no person needed
    assert refs.find_ref("last") == "a" * 64


def test_locks_work_where_hard_links_do_not(
    refs: RefStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exFAT, some network and FUSE filesystems have no hard links: locks fall back to
    O_CREAT|O_EXCL on the lock file itself, and still exclude each other."""
    import errno as _errno

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(_errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    refs.update_ref("last", "a" * 64, reason="x")
    assert refs.find_ref("last") == "a" * 64
    from manifest.fsutil import LockFile

    with LockFile(tmp_path / "refs" / "last", timeout=0.0):
        refs.lock_timeout = 0.0
        with pytest.raises(LockHeldError):
            refs.update_ref("last", "b" * 64, reason="x")
