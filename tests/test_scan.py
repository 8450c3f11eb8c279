from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import manifest.repo
import manifest.root.scan
from manifest import ChangeSet, Repository, load_config
from manifest.errors import RootError
from manifest.model import path_to_text, text_to_path
from manifest.root.scan import Scanner
from manifest.scanresult import ScanProblem

from .conftest import MakeRepo, touch, write


def test_clean_tree_after_baseline(make_repo: MakeRepo) -> None:
    repo = make_repo()
    assert repo.begin().outcome == "baseline"
    status = repo.status()
    assert status.changes == ChangeSet()
    assert status.files == 5


def test_paths_are_relative_posix_and_sorted(make_repo: MakeRepo) -> None:
    repo = make_repo(bootstrap="all")
    result = repo.begin()
    assert result.changes.added == (
        "concepts/concepts_metadata.csv",
        "concepts/descriptions/c1.txt",
        "concepts/descriptions/c2.txt",
        "link_templates.csv",
        "links/analogy.txt",
    )


def test_include_and_exclude_globs(make_repo: MakeRepo) -> None:
    repo = make_repo(bootstrap="all", include=("**/*.csv", "links/**"), exclude=("links/**",))
    assert repo.begin().changes.added == ("concepts/concepts_metadata.csv", "link_templates.csv")


def test_symlinks_are_recorded_not_followed(make_repo: MakeRepo, raw: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.csv", "s\n")
    (raw / "link_to_file.csv").symlink_to(outside)
    (raw / "link_to_dir").symlink_to(outside.parent, target_is_directory=True)
    repo = make_repo(bootstrap="all")
    added = repo.begin().changes.added
    assert "link_to_file.csv" in added and "link_to_dir" in added
    assert not any(p.startswith("link_to_dir/") for p in added)
    snap = repo.find_ref("pending")
    assert snap is not None
    entry = repo.find_file(snap, "link_to_file.csv")
    assert entry is not None and entry.kind == manifest.model.KIND_SYMLINK
    # Editing the target outside the tree changes nothing; re-pointing the link does.
    assert repo.promote(snap).outcome == "promoted"
    write(outside, "changed\n")
    assert repo.status().changes == ChangeSet()
    (raw / "link_to_file.csv").unlink()
    (raw / "link_to_file.csv").symlink_to(tmp_path / "elsewhere.csv")
    assert repo.status().changes == ChangeSet(modified=("link_to_file.csv",))


def test_fifo_and_socket_are_skipped_without_opening(make_repo: MakeRepo, raw: Path) -> None:
    os.mkfifo(raw / "pipe.csv")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(raw / "sock"))
    try:
        repo = make_repo(bootstrap="all")
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(repo.begin()), daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert done, "scanning a FIFO hung"
        result = done[0]
        assert isinstance(result, manifest.repo.CycleResult)
        assert "pipe.csv" not in result.changes.added and "sock" not in result.changes.added
        assert repo.status().skipped == ("pipe.csv", "sock")
    finally:
        sock.close()


def test_store_under_root_is_never_entered(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(store=raw / ".state", bootstrap="all")
    first = repo.begin()
    assert not any(p.startswith(".state") for p in first.changes.added)
    assert first.snapshot is not None
    repo.promote(first.snapshot)
    assert repo.status().changes == ChangeSet()


def test_vanished_file_is_simply_absent(
    make_repo: MakeRepo, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = raw / "link_templates.csv"

    class Racing(Scanner):
        def _list_dir(self, dir_fd: int, rel_dir: bytes) -> list[os.DirEntry[str]]:
            listing = super()._list_dir(dir_fd, rel_dir)
            if rel_dir == b"":
                victim.unlink()  # gone between listing and stat
            return listing

    monkeypatch.setattr(manifest.root.scan, "Scanner", Racing)
    repo = make_repo(bootstrap="all")
    result = repo.begin()
    assert "link_templates.csv" not in result.changes.added
    assert result.problems == ()


def test_unreadable_file_is_a_problem_not_a_removal(
    make_repo: MakeRepo, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo()
    repo.begin()
    target = raw / "concepts" / "concepts_metadata.csv"
    write(target, "concept_id,name\nc1,tide\n")  # modified, but we cannot read it
    real_hash = manifest.root.scan.hash_file

    def deny(
        path: bytes | str | os.PathLike[str], **kwargs: object
    ) -> tuple[bytes, os.stat_result]:
        if os.fsencode(path) == b"concepts/concepts_metadata.csv":
            raise PermissionError(13, "Permission denied")
        return real_hash(path, **kwargs)  # type: ignore[arg-type]

    real_read = manifest.root.scan._read_small

    def deny_small(name: bytes, dir_fd: int, size: int) -> bytes | None:
        # the inlined read of a small file gives up, as an open refused would make it
        if name == b"concepts_metadata.csv":
            return None
        return real_read(name, dir_fd, size)

    monkeypatch.setattr(manifest.root.scan, "hash_file", deny)
    monkeypatch.setattr(manifest.root.scan, "_read_small", deny_small)
    status = repo.status()
    assert status.changes == ChangeSet()
    assert status.problems == (ScanProblem("concepts/concepts_metadata.csv", "Permission denied"),)
    monkeypatch.undo()
    assert repo.status().changes == ChangeSet(modified=("concepts/concepts_metadata.csv",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_by_permissions(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()
    target = raw / "link_templates.csv"
    write(target, "changed\n")
    target.chmod(0)
    try:
        status = repo.status()
        assert status.changes == ChangeSet()
        assert [p.path for p in status.problems] == ["link_templates.csv"]
    finally:
        target.chmod(0o644)


def test_unreadable_directory_is_a_problem_and_keeps_its_files(
    make_repo: MakeRepo, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo()
    repo.begin()

    class Denied(Scanner):
        def _list_dir(self, dir_fd: int, rel_dir: bytes) -> list[os.DirEntry[str]]:
            if rel_dir == b"concepts/descriptions/":
                raise PermissionError(13, "Permission denied")
            return super()._list_dir(dir_fd, rel_dir)

    monkeypatch.setattr(manifest.root.scan, "Scanner", Denied)
    status = repo.status()
    assert status.changes == ChangeSet()
    assert status.problems == (ScanProblem("concepts/descriptions", "Permission denied"),)
    assert status.files == 5


def test_non_utf8_names_round_trip(make_repo: MakeRepo, raw: Path) -> None:
    name = b"caf\xe9-\xff.csv"
    path = os.fsencode(raw) + b"/" + name
    with open(path, "wb") as fh:
        fh.write(b"x\n")
    stamp = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(stamp, stamp))
    repo = make_repo(bootstrap="all")
    result = repo.begin()
    text = path_to_text(name)
    assert text in result.changes.added
    assert text_to_path(text) == name
    assert result.snapshot is not None
    assert repo.find_file(result.snapshot, text) is not None
    repo.promote(result.snapshot)
    os.unlink(path)
    assert repo.status().changes == ChangeSet(removed=(text,))


def test_missing_root_and_file_root_are_clear_errors(make_repo: MakeRepo, tmp_path: Path) -> None:
    with pytest.raises(RootError, match="does not exist"):
        make_repo(root=tmp_path / "nope").status()
    write(tmp_path / "afile", "x")
    with pytest.raises(RootError, match="not a directory"):
        make_repo(root=tmp_path / "afile").status()


def test_empty_folders_are_not_recorded(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()
    (raw / "empty" / "deeper").mkdir(parents=True)
    assert repo.status().changes == ChangeSet()


# -- cooldown ---------------------------------------------------------------------------


def test_fresh_file_is_unstable_and_not_yet_added(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(cooldown_sec=30)
    repo.begin()
    write(raw / "new.csv", "n\n", age=0)
    result = repo.begin()
    assert result.outcome == "unchanged"
    assert result.unstable == ("new.csv",)
    touch(raw / "new.csv", age=31)
    result = repo.begin()
    assert result.outcome == "started"
    assert result.changes == ChangeSet(added=("new.csv",))


def test_unstable_edit_keeps_old_entry_and_is_never_removed(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(cooldown_sec=30)
    repo.begin()
    write(raw / "link_templates.csv", "being written", age=1)
    status = repo.status()
    assert status.changes == ChangeSet()
    assert status.unstable == ("link_templates.csv",)
    snap, _ = repo.snapshot()
    assert repo.find_file(snap, "link_templates.csv") == repo.find_file(
        repo.resolve("last"), "link_templates.csv"
    )


def test_mtime_mode_treats_racy_mtimes_as_unstable_even_without_cooldown(
    make_repo: MakeRepo, raw: Path
) -> None:
    repo = make_repo(mode="mtime_size", cooldown_sec=0)
    repo.begin()
    write(raw / "link_templates.csv", "same size edit!!!", age=0)
    status = repo.status()
    assert status.unstable == ("link_templates.csv",)
    assert status.changes == ChangeSet()


@pytest.fixture
def deep_cleanup(raw: Path) -> Iterator[None]:
    """Remove what the deep-tree tests made with ``rm -rf`` (pytest's own recursive
    cleanup of its temp folders hits Python's recursion limit on 2,000 levels)."""
    yield
    for child in raw.iterdir():
        subprocess.run(["rm", "-rf", str(child)], check=True)


def _make_deep(root: Path, names: list[bytes], leaf: bytes, data: bytes) -> None:
    """Nested folders made relative to their parent's descriptor (paths beyond PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        old = time.time_ns() - 60 * 10**9
        os.utime(out, ns=(old, old))
        os.close(out)
    finally:
        os.close(fd)


@pytest.mark.usefixtures("deep_cleanup")
def test_two_thousand_nested_folders(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    assert repo.begin().outcome == "baseline"
    _make_deep(raw, [b"d"] * 2000, b"deep.txt", b"at the bottom\n")
    status = repo.status()
    deep = "/".join(["d"] * 2000) + "/deep.txt"
    assert status.changes == ChangeSet(added=(deep,)) and status.problems == ()
    sid, changes = repo.snapshot(ref="last")
    assert changes.added == (deep,)
    assert repo.find_file(sid, deep) is not None
    assert deep in dict(repo.iter_files(sid))
    assert repo.diff("last@{1}", "last") == ChangeSet(added=(deep,))
    assert repo.status().changes == ChangeSet()


@pytest.mark.usefixtures("deep_cleanup")
def test_paths_longer_than_path_max_are_recorded(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo()
    repo.begin()
    names = [bytes([ord("a") + i % 26]) * 200 for i in range(30)]  # 6,000+ bytes of path
    _make_deep(raw, names, b"far.csv", b"x,y\n")
    status = repo.status()
    assert status.problems == ()
    (added,) = status.changes.added
    assert len(os.fsencode(added)) > 4096 and added.endswith("/far.csv")


def test_a_folder_swapped_for_a_symlink_mid_scan_is_not_followed(
    make_repo: MakeRepo, raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo()
    repo.begin()
    outside = tmp_path / "outside"
    write(outside / "secret.csv", "not under the root\n")
    folder = raw / "concepts"

    class Swapping(Scanner):
        def _list_dir(self, dir_fd: int, rel_dir: bytes) -> list[os.DirEntry[str]]:
            listing = super()._list_dir(dir_fd, rel_dir)
            if rel_dir == b"":  # listed as a folder; replaced before it is entered
                os.rename(folder, tmp_path / "moved")
                os.symlink(outside, folder)
            return listing

    monkeypatch.setattr(manifest.root.scan, "Scanner", Swapping)
    status = repo.status()
    assert [p.path for p in status.problems] == ["concepts"]
    assert status.changes == ChangeSet()  # its last entry is carried over, nothing from outside
    assert not any("secret" in p for p in status.changes.paths)


class _SlowScanner(Scanner):
    inline_fast_paths = False


@settings(max_examples=25, deadline=None)
@given(
    files=st.dictionaries(
        st.sampled_from(["a", "b", "d/c", "d/e/f", "g/h", "ü/i"]),
        st.tuples(st.binary(max_size=40), st.integers(min_value=10, max_value=10**6)),
        min_size=1,
    ),
    mode=st.sampled_from(["content_hash", "mtime_size"]),
    touched=st.sets(st.sampled_from(["a", "b", "d/c", "d/e/f", "g/h", "ü/i"])),
)
@pytest.mark.usefixtures("fine_timestamps")
def test_inlined_fast_paths_agree_with_the_general_path(
    tmp_path_factory: pytest.TempPathFactory,
    files: dict[str, tuple[bytes, int]],
    mode: str,
    touched: set[str],
) -> None:
    base = tmp_path_factory.mktemp("fast")
    root = base / "raw"
    now = time.time_ns()
    for rel, (data, age) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stamp = now - age * 10**6 - 10 * 10**9
        os.utime(path, ns=(stamp, stamp))

    def scan(scanner: type[Scanner], store: str) -> tuple[str, int, int, int]:
        (base / store).mkdir(exist_ok=True)  # the stat cache is saved only into a store
        repo = Repository(
            load_config(root=root, store=base / store, mode=mode, cooldown_sec=0, env={})
        )
        original = manifest.root.scan.Scanner
        manifest.root.scan.Scanner = scanner  # type: ignore[misc]
        try:
            result = repo.scan(base=None)
        finally:
            manifest.root.scan.Scanner = original  # type: ignore[misc]
        return result.root_id, result.files, result.hashed, result.bytes

    # first scans fill each store's stat cache; then some files are touched; then compare
    assert scan(Scanner, "fast") == scan(_SlowScanner, "slow")
    for rel in touched & files.keys():
        stamp = now - 5 * 10**9
        os.utime(root / rel, ns=(stamp, stamp))
    assert scan(Scanner, "fast") == scan(_SlowScanner, "slow")
    warm = scan(Scanner, "fast")
    assert warm == scan(_SlowScanner, "slow")
    if mode == "content_hash":
        assert warm[2] == 0  # every file a stat-cache hit, inlined on one side only


@pytest.mark.usefixtures("fine_timestamps")
def test_a_folder_without_a_signature_settles_its_unchanged_files_in_the_lean_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose record has no signature (a racy file in it last time) is stat'ed by
    the signature check, and its unchanged files are taken from the cache by the lean loop:
    only the racy, edited and new files are read, and the trees are the general path's."""
    root = tmp_path / "raw"
    for name in "abcde":
        write(root / "f" / f"{name}.csv", f"{name},1\n")
    racy = root / "f" / "z.csv"
    write(racy, "z,1\n")
    future = time.time_ns() + 3600 * 10**9  # racy at every scan of this test
    os.utime(racy, ns=(future, future))
    lean_calls: list[int] = []
    original = Scanner._scan_listing

    def spying(
        self: Scanner, folder: object, listing: list[os.DirEntry[str]], *args: object
    ) -> None:
        if len(args) >= 3 and args[2] is not None:
            lean_calls.append(len(listing))
        original(self, folder, listing, *args)  # type: ignore[arg-type]

    def scan(scanner: type[Scanner], store: str) -> tuple[str, int, int]:
        (tmp_path / store).mkdir(exist_ok=True)
        repo = Repository(
            load_config(
                root=root, store=tmp_path / store, mode="content_hash", cooldown_sec=0, env={}
            )
        )
        monkeypatch.setattr(manifest.root.scan, "Scanner", scanner)
        result = repo.scan(base=None)
        return result.root_id, result.files, result.hashed

    monkeypatch.setattr(Scanner, "_scan_listing", spying)
    assert scan(Scanner, "fast") == scan(_SlowScanner, "slow")
    lean_calls.clear()
    again = scan(Scanner, "fast")
    assert again[2] == 1  # the racy file alone is read again
    assert lean_calls == [6]  # the folder went through the lean loop
    assert again == (scan(_SlowScanner, "slow")[0], 6, 1)

    write(root / "f" / "b.csv", "B,2\n")  # same size, new bytes
    write(root / "f" / "g.csv", "g,1\n")
    os.unlink(root / "f" / "c.csv")
    os.symlink("a.csv", root / "f" / "l.csv")
    lean_calls.clear()
    fast = scan(Scanner, "fast")
    assert lean_calls == [7]
    assert fast[1:] == (7, 3)  # b, g and the racy z read; a, d, e from the cache
    assert fast[0] == scan(_SlowScanner, "slow")[0]
    assert fast[0] != again[0]
