from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from blake3 import blake3

import manifest.fingerprint
from manifest import ChangeSet
from manifest.fingerprint import RACY_NS, hash_file
from manifest.globs import PathFilter
from manifest.model import IndexEntry
from manifest.root.index import StatCache
from manifest.root.scan import Scanner

from .conftest import MakeRepo, touch, write


def test_hash_file_is_blake3_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = write(tmp_path / "f.bin", data)
    digest, st = hash_file(path)
    assert digest == blake3(data).digest()
    assert st.st_size == len(data)


def test_large_files_hash_with_threads_and_plain_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest.fingerprint, "LARGE_FILE", 1024)
    calls: list[str] = []
    real = manifest.fingerprint.blake3

    class Spy:
        AUTO = real.AUTO

        def __init__(self, *args: object, **kwargs: object) -> None:
            calls.append(f"threads={kwargs.get('max_threads')}")
            self.inner = real(*args, **kwargs)

        def update(self, data: object) -> None:
            calls.append("update")
            self.inner.update(data)

        def update_mmap(self, path: str) -> None:  # never: a mapped file can SIGBUS
            raise AssertionError("update_mmap used")

        def digest(self) -> bytes:
            return self.inner.digest()

    monkeypatch.setattr(manifest.fingerprint, "blake3", Spy)
    data = os.urandom(5000)
    path = write(tmp_path / "big.bin", data)
    digest, _ = hash_file(path)
    assert digest == blake3(data).digest()
    assert calls == [f"threads={real.AUTO}", "update"]


def _hash_forever(path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, manifest.fingerprint.NotRegularFile):
            hash_file(path)


def test_a_big_file_truncated_while_hashed_never_kills_the_process(tmp_path: Path) -> None:
    """A real process hashes a 32 MiB file while this one truncates and refills it: with a
    memory map that is a SIGBUS; with reads it is at worst a changed-size error."""
    path = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    path.write_bytes(block * 32)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_hash_forever, args=(str(path), 4.0))
    child.start()
    while child.is_alive():
        with open(path, "r+b") as fh:
            fh.truncate(1 << 20)
            fh.seek(0, os.SEEK_END)
            for _ in range(31):
                fh.write(block)
    child.join()
    assert child.exitcode == 0  # -7 would be SIGBUS


def test_a_file_that_changes_size_while_read_is_read_again_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "f.bin", b"x" * 4000)
    real = manifest.fingerprint._hash_fd
    calls = []

    def shrinking(fd: int, expected: int) -> tuple[bytes, int]:
        calls.append(expected)
        if len(calls) == 1:
            os.truncate(path, 1000)  # truncated under the first read
        return real(fd, expected)

    monkeypatch.setattr(manifest.fingerprint, "_hash_fd", shrinking)
    digest, st = hash_file(path)
    assert calls == [4000, 1000] and st.st_size == 1000
    assert digest == blake3(b"x" * 1000).digest()

    def always_shrinking(fd: int, expected: int) -> tuple[bytes, int]:
        os.truncate(path, max(os.fstat(fd).st_size - 10, 0))
        return real(fd, expected)

    monkeypatch.setattr(manifest.fingerprint, "_hash_fd", always_shrinking)
    with pytest.raises(manifest.fingerprint.FileChangedError, match="changed size"):
        hash_file(path)


def test_hash_file_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    with pytest.raises(manifest.fingerprint.NotRegularFile):
        hash_file(tmp_path / "p")


def test_mtime_size_fingerprint_sees_a_touch(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(mode="mtime_size")
    repo.begin()
    touch(raw / "link_templates.csv")
    assert repo.status().changes == ChangeSet(modified=("link_templates.csv",))


@pytest.mark.usefixtures("fine_timestamps")
def test_content_hash_touch_without_edit_is_no_change(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()
    touch(raw / "link_templates.csv")
    status = repo.status()
    assert status.changes == ChangeSet()
    assert status.hashed == 1  # the stat changed, so exactly that file was re-read


@pytest.mark.usefixtures("fine_timestamps")
def test_stat_cache_avoids_rehashing_unchanged_files(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()  # baseline hashes everything and saves the cache
    assert repo.status().hashed == 0
    write(raw / "link_templates.csv", "template_id,template_file\nnew,links/new.txt\n")
    status = repo.status()
    assert status.hashed == 1
    assert status.changes == ChangeSet(modified=("link_templates.csv",))
    assert repo.status().hashed == 0  # the new stat is cached now


def test_same_size_edit_is_a_change_in_content_mode(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()
    path = raw / "concepts" / "descriptions" / "c1.txt"
    before = path.stat()
    write(path, "The TIDE.\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime
    assert repo.status().changes == ChangeSet(modified=("concepts/descriptions/c1.txt",))


def _scan_at(root: Path, index: Path, clock_ns: int) -> int:
    """Scan ``root`` as if every folder were listed at ``clock_ns``; files hashed."""
    cache = StatCache(index, "content_hash")
    scanner = Scanner(
        os.fsencode(root), mode="content_hash", cooldown_ns=0, path_filter=PathFilter(), cache=cache
    )
    scanner.clock = lambda: clock_ns  # type: ignore[method-assign]
    hashed = scanner.scan().hashed
    cache.save()
    return hashed


def _recorded(index: Path) -> list[IndexEntry]:
    return list(StatCache(index, "content_hash").entries(b"").values())


def test_racy_entries_are_smudged_and_rehashed(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    path = write(root / "f.csv", "aaaa", age=0)
    st = path.stat()
    index = tmp_path / "index"
    # The folder was listed in the same tick as the file's mtime: racy.
    assert _scan_at(root, index, st.st_mtime_ns) == 1
    assert [e.ino for e in _recorded(index)] == [-1]
    assert StatCache(index, "content_hash").head(b"").signature == b""  # type: ignore[union-attr]
    # so the next scan re-hashes it, even though the stat matches; once the mtime and ctime
    # are safely older than the listing, the entry is trusted
    later = max(st.st_mtime_ns, st.st_ctime_ns) + RACY_NS + 1
    assert _scan_at(root, index, later) == 1
    assert [e.ino for e in _recorded(index)] == [st.st_ino]
    assert _scan_at(root, index, later) == 0


@pytest.mark.parametrize(
    ("mtime_age", "ctime_age", "racy"),
    [
        (3600, 3600, False),  # both safely older than the folder's listing: trusted
        (3600, 0.5, True),  # mtime restored to an old value, ctime in the same tick: racy
        (0.5, 3600, True),
        (3600, RACY_NS / 1e9, True),  # exactly one granularity before the listing: racy
    ],
)
def test_racy_entries_by_mtime_or_ctime_against_the_listing_time(
    tmp_path: Path, mtime_age: float, ctime_age: float, racy: bool
) -> None:
    root = tmp_path / "raw"
    path = write(root / "a.csv", "abc")
    ctime = path.stat().st_ctime_ns
    now = ctime + int(ctime_age * 1e9)  # the clock the listing reads
    os.utime(path, ns=(now - int(mtime_age * 1e9), now - int(mtime_age * 1e9)))
    assert path.stat().st_ctime_ns - ctime < 10**8  # utime moved the ctime by little
    ctime = path.stat().st_ctime_ns
    now = ctime + int(ctime_age * 1e9)
    os.utime(path, ns=(now - int(mtime_age * 1e9), now - int(mtime_age * 1e9)))
    index = tmp_path / "index"
    _scan_at(root, index, now)
    # a smudged entry never matches, so the file is hashed again on the next scan
    assert ([e.ino for e in _recorded(index)] == [-1]) == racy
    assert (_scan_at(root, index, now) == 1) == racy


def test_racy_same_tick_edit_is_detected_end_to_end(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(cooldown_sec=0)
    repo.begin()
    path = raw / "link_templates.csv"
    size = path.stat().st_size
    write(path, b"A" * size, age=0)  # fresh: recorded racy in the cache
    first = repo.status()
    assert first.changes == ChangeSet(modified=("link_templates.csv",))
    st = path.stat()
    path.write_bytes(b"B" * size)  # same size...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...same mtime tick
    assert repo.status().hashed >= 1
    snap, _ = repo.snapshot()
    entry = repo.find_file(snap, "link_templates.csv")
    assert entry is not None and entry.digest == blake3(b"B" * size).digest()


@pytest.mark.usefixtures("fine_timestamps")
def test_corrupt_cache_is_rebuilt_not_fatal(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo()
    repo.begin()
    (tmp_path / "state" / "index").write_bytes(b"\x00garbage")
    status = repo.status()
    assert status.changes == ChangeSet() and status.hashed == 5
    assert repo.status().hashed == 0


def test_cache_keeps_the_clock_out_of_the_snapshot(make_repo: MakeRepo, raw: Path) -> None:
    """In content mode the tree holds no mtimes: the root id is a content fingerprint."""
    repo = make_repo()
    repo.begin()
    first = repo.read_snapshot(repo.resolve("last")).root
    for path in raw.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    snap, _ = repo.snapshot()
    assert repo.read_snapshot(snap).root == first


@pytest.mark.usefixtures("fine_timestamps")
def test_rehash_all_ignores_the_stat_cache(make_repo: MakeRepo) -> None:
    repo = make_repo()
    repo.begin()
    assert repo.scan(base=repo.resolve("last")).hashed == 0
    assert repo.scan(base=repo.resolve("last"), rehash_all=True).hashed == 5


def test_mtime_mode_full_hash_check_records_then_catches_a_silent_edit(
    make_repo: MakeRepo, raw: Path
) -> None:
    repo = make_repo(mode="mtime_size")
    base = repo.begin().snapshot
    first = repo.begin(rehash_all=True)  # first check after install: only records hashes
    assert first.outcome == "unchanged"
    assert repo.find_ref("last") != base
    assert repo.log()[0].reason == "full-hash check: recorded content hashes, no content changed"
    assert repo.diff(base, "last") == ChangeSet()  # same files, same content
    assert repo.status().changes == ChangeSet() and repo.status().hashed == 0

    path = raw / "concepts" / "descriptions" / "c2.txt"
    before = path.stat()
    write(path, "An EMBER.\n")  # same size...
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and the same mtime
    assert repo.begin().outcome == "unchanged"  # mtime_size cannot see it
    caught = repo.begin(rehash_all=True)
    assert caught.outcome == "started"
    assert caught.changes == ChangeSet(modified=("concepts/descriptions/c2.txt",))


def test_mtime_mode_real_edit_after_hashes_were_recorded(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(mode="mtime_size")
    repo.begin()
    repo.begin(rehash_all=True)
    write(raw / "link_templates.csv", "a,b\n")
    assert repo.begin().changes == ChangeSet(modified=("link_templates.csv",))


def test_hash_file_trusts_the_scans_stat_only_when_the_size_matches(tmp_path: Path) -> None:
    path = write(tmp_path / "f.csv", "abc")
    stale = path.stat()
    write(path, "abcdef")  # grew after the scan's lstat
    digest, st = hash_file(path, lstat=stale)
    assert digest == blake3(b"abcdef").digest() and st.st_size == 6
    os.unlink(path)
    os.mkfifo(path)  # a FIFO swapped in after the lstat of a regular file
    with pytest.raises(manifest.fingerprint.NotRegularFile):
        hash_file(path, lstat=stale)


def test_a_stale_index_lock_does_not_stop_the_cache_being_saved(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    import socket
    import subprocess
    import sys

    repo = make_repo()
    repo.begin()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lock = tmp_path / "state" / "index.lock"
    lock.write_text(f"{child.pid} {socket.gethostname()} 1\n")
    (tmp_path / "state" / "index").unlink()
    repo.status()  # the crashed process's lock on the cache is taken over
    assert (tmp_path / "state" / "index").exists() and not lock.exists()
    stale_ref_lock = tmp_path / "state" / "refs" / "pending.lock"
    stale_ref_lock.write_text(f"{child.pid} {socket.gethostname()} 1\n")
    assert repo.status().stale_locks == (str(stale_ref_lock),)  # a ref's lock is reported
    report = repo.fsck()
    assert report.ok  # a crash's leftover: a warning, the next writer takes it over
    assert any(p.severity == "warning" and "left by a crash" in p.message for p in report.problems)
