"""The stat cache file: per-folder records, appended on small changes, compacted, damage-proof."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manifest import ChangeSet, Repository, load_config
from manifest.index import INDEX_MAGIC, FolderHead, StatCache, encode_payload
from manifest.model import IndexEntry

from .conftest import write

FOLDERS = 30
FILES = 10


def _tree(root: Path) -> None:
    for d in range(FOLDERS):
        for f in range(FILES):
            write(root / f"d{d:02d}" / f"f{f}.csv", f"folder {d} file {f}\n" * 3)


def _repo(tmp_path: Path, **kw: object) -> Repository:
    config = load_config(
        root=tmp_path / "raw",
        store=tmp_path / "state",
        cooldown_sec=0,
        env={"MANIFEST_JOBS": "1"},
        **kw,  # type: ignore[arg-type]
    )
    return Repository(config, lock_timeout=2.0)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    _tree(tmp_path / "raw")
    repo = _repo(tmp_path)
    repo.snapshot(ref="last")
    return repo


@pytest.mark.usefixtures("fine_timestamps")
def test_a_one_file_edit_appends_one_folder_record(repo: Repository, tmp_path: Path) -> None:
    index = tmp_path / "state" / "index"
    before = index.stat()
    assert repo.status().hashed == 0
    assert index.stat().st_mtime_ns == before.st_mtime_ns  # a clean status writes nothing
    write(tmp_path / "raw" / "d07" / "f3.csv", "edited\n")
    status = repo.status()
    assert status.changes == ChangeSet(modified=("d07/f3.csv",)) and status.hashed == 1
    after = index.stat()
    assert after.st_ino == before.st_ino  # appended, not rewritten
    grown = after.st_size - before.st_size
    # the edited folder's record and its parent's (the root: a subtree id changed), not the
    # other 29 folders'
    assert 0 < grown < 0.15 * before.st_size
    # the appended record wins: nothing is re-read, the change is still seen
    again = repo.status()
    assert again.hashed == 0 and again.changes == status.changes


@pytest.mark.usefixtures("fine_timestamps")
def test_the_file_is_compacted_when_most_of_it_is_dead(repo: Repository, tmp_path: Path) -> None:
    index = tmp_path / "state" / "index"
    compact = index.stat().st_size
    sizes = []
    for round_ in range(4):
        for d in range(FOLDERS):
            write(tmp_path / "raw" / f"d{d:02d}" / "f0.csv", f"round {round_}\n")
            repo.status()
            sizes.append(index.stat().st_size)
    assert max(sizes) < 2.5 * compact  # rewritten whenever dead records outweigh live ones
    assert repo.status().hashed == 0


@pytest.mark.usefixtures("fine_timestamps")
def test_a_torn_append_costs_one_folder_and_is_repaired(repo: Repository, tmp_path: Path) -> None:
    index = tmp_path / "state" / "index"
    write(tmp_path / "raw" / "d11" / "f1.csv", "edited\n")
    repo.status()
    with open(index, "r+b") as fh:  # a crash in the middle of the append
        fh.truncate(index.stat().st_size - 7)
    status = repo.status()
    assert status.changes == ChangeSet(modified=("d11/f1.csv",))
    # the torn record (the root's, written last) falls back to the one before it; at most
    # one folder's files are read again
    assert status.hashed <= FILES
    assert repo.status().hashed == 0  # and the file was rewritten whole, valid again
    assert index.read_bytes().startswith(INDEX_MAGIC)


@pytest.mark.usefixtures("fine_timestamps")
def test_tree_ids_are_not_reused_under_other_filters(repo: Repository, tmp_path: Path) -> None:
    narrowed = _repo(tmp_path, include=("d0*/**",))
    fresh_store = load_config(
        root=tmp_path / "raw",
        store=tmp_path / "other",
        cooldown_sec=0,
        include=("d0*/**",),
        env={"MANIFEST_JOBS": "1"},
    )
    (tmp_path / "other").mkdir()
    expected = Repository(fresh_store).scan(base=None)
    got = narrowed.scan(base=None)
    assert (got.root_id, got.files) == (expected.root_id, expected.files) == (got.root_id, 100)
    assert got.hashed == 0  # the digests are still used: only the tree ids depend on filters


def test_a_concurrent_writer_makes_the_append_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "index"

    def head(name: bytes) -> FolderHead:
        return FolderHead(name, b"s" * 32, b"t" * 32, 1, 1, 0, 0, ())

    def entry(name: bytes) -> bytes:
        return encode_payload([IndexEntry(name, 1, 1, 1, 1, b"d" * 32)])

    first = StatCache(path, "content_hash")
    first.put(head(b"a/"), entry(b"x"))
    assert first.save()
    one, two = StatCache(path, "content_hash"), StatCache(path, "content_hash")
    one.kept.add(b"a/")
    two.kept.add(b"a/")
    one.put(head(b"b/"), entry(b"y"))
    two.put(head(b"c/"), entry(b"z"))
    ino = path.stat().st_ino
    assert one.save() and path.stat().st_ino == ino  # appended
    assert two.save() and path.stat().st_ino != ino  # the file changed under it: rewritten
    final = StatCache(path, "content_hash")
    assert sorted(final.records) == [b"a/", b"c/"]  # whole and valid; b/ is only a cache miss
    assert final.entries(b"c/")[b"z"].digest == b"d" * 32


def test_a_newer_index_format_is_refused_with_a_message(tmp_path: Path) -> None:
    import struct
    import zlib

    import msgspec

    from manifest.errors import FormatVersionError

    header = msgspec.msgpack.encode([99, "content_hash", b""])
    path = tmp_path / "index"
    path.write_bytes(INDEX_MAGIC + struct.pack("<II", len(header), zlib.crc32(header)) + header)
    with pytest.raises(FormatVersionError) as info:
        StatCache(path, "content_hash")
    assert str(path) in str(info.value)


def test_unreadable_index_is_only_a_cache_miss(tmp_path: Path) -> None:
    path = tmp_path / "index"
    os.mkdir(path)  # a folder in its place
    cache = StatCache(path, "content_hash")
    assert cache.records == {} and cache.entries(b"") == {}
    assert cache.save() is False  # cannot be written either; nothing raised


@pytest.mark.usefixtures("fine_timestamps")
def test_a_touch_in_content_mode_reuses_the_recorded_tree(repo: Repository, tmp_path: Path) -> None:
    from .conftest import touch

    base = repo.resolve("last")
    touch(tmp_path / "raw" / "d03" / "f2.csv")
    result = repo.scan(base=base)
    assert result.hashed == 1  # the stat changed, so the file was read again...
    assert result.root_id == repo.read_snapshot(base).root  # ...and nothing else changed
    assert not result.trees.built  # no tree was built for it: the recorded one is reused
    _snap, changes = repo.snapshot(ref="last")
    assert changes == ChangeSet() and repo.fsck().ok


@pytest.mark.usefixtures("fine_timestamps")
def test_a_removed_symlink_is_not_hidden_by_a_reused_tree(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _tree(raw)
    (raw / "d01" / "link.csv").symlink_to("f1.csv")
    repo = _repo(tmp_path)
    repo.snapshot(ref="last")
    os.unlink(raw / "d01" / "link.csv")
    from .conftest import touch

    touch(raw / "d01" / "f2.csv")  # and a stat change in the same folder
    assert repo.status().changes == ChangeSet(removed=("d01/link.csv",))


@pytest.mark.usefixtures("fine_timestamps")
def test_a_touch_in_mtime_mode_is_a_change(tmp_path: Path) -> None:
    from .conftest import touch

    _tree(tmp_path / "raw")
    repo = _repo(tmp_path, mode="mtime_size")
    repo.snapshot(ref="last")
    touch(tmp_path / "raw" / "d05" / "f0.csv")
    assert repo.status().changes == ChangeSet(modified=("d05/f0.csv",))
    assert repo.status().changes == ChangeSet(modified=("d05/f0.csv",))  # cache warm
