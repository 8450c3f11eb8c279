"""The stat cache file: per-folder records, appended on small changes, compacted, damage-proof."""

from __future__ import annotations

import os
import time
from array import array
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifest import ChangeSet, Repository, load_config
from manifest.model import IndexEntry
from manifest.root.index import (
    INDEX_MAGIC,
    FolderHead,
    Row,
    StatCache,
    decode_payload,
    encode_head,
    encode_payload,
    encode_rows,
    frame,
    payload_of,
    scan_context,
)

from .conftest import write

FOLDERS = 30
FILES = 10


def _tree(root: Path) -> None:
    for d in range(FOLDERS):
        for f in range(FILES):
            write(root / f"d{d:02d}" / f"f{f}.csv", f"folder {d} file {f}\n" * 3)


def _repo(tmp_path: Path, **kw: object) -> Repository:
    """The store; new settings (mode, filters) are recorded in it first, as
    `manifest init --force` does (a store has one set)."""
    kw.setdefault("env", {"MANIFEST_JOBS": "1"})
    reconfigure = any(k in kw for k in ("mode", "include", "exclude"))
    config = load_config(
        root=tmp_path / "raw",
        store=tmp_path / "state",
        cooldown_sec=0,
        ignore_recorded=reconfigure,
        **kw,  # type: ignore[arg-type]
    )
    repo = Repository(config, lock_timeout=2.0)
    if reconfigure and (tmp_path / "state").is_dir():
        repo.init(force=True)
    return repo


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
        return payload_of([IndexEntry(name, 1, 1, 1, 1, b"d" * 32)])

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


# -- positional payloads ---------------------------------------------------------------------


def _rows(names: list[str], stamp: int = 1_600_000_000 * 10**9) -> list[Row]:
    return [
        (name,) if name.endswith("/") else (name, 0o100644, stamp + i, 300 + i, 1000 + i, stamp)
        for i, name in enumerate(names)
    ]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 100, 65535, 65536])
def test_encoded_rows_are_what_the_signature_hashes(n: int) -> None:
    rows = _rows([f"f{i}.csv" for i in range(n)])
    data, offsets, textual = encode_rows(rows)
    assert textual and data == msgspec.msgpack.encode(rows)
    at = array("I" if array("I").itemsize == 4 else "L")
    at.frombytes(offsets)
    assert len(at) == n + 1 and at[-1] == len(data)
    for i in (0, n // 2, n - 1) if n else ():
        assert msgspec.msgpack.decode(data[at[i] : at[i + 1]], type=tuple) == rows[i]


def test_a_name_that_is_not_utf8_is_recorded_as_bytes() -> None:
    rows = _rows(["a.csv", "b\udcff.csv"])
    assert not encode_rows(rows)[2]
    recorded = decode_payload(encode_payload(rows, [b"d" * 32, b"e" * 32], b"\x01\x01"))
    assert recorded is not None
    assert sorted(recorded.entries()) == [b"a.csv", os.fsencode("b\udcff.csv")]
    assert recorded.entries()[b"b\xff.csv"].digest == b"e" * 32


_EDITS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=39),
        st.sampled_from(["mtime", "size", "wide", "ino", "rename", "folder"]),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(edits=_EDITS, extra=st.integers(min_value=-1, max_value=1))
def test_changed_rows_are_exactly_the_rows_that_differ(
    edits: list[tuple[int, str]], extra: int
) -> None:
    """Byte by byte or decoded, ``Recorded.changed`` names the rows that differ from the
    recorded ones at the same place, whatever changed in them (even the width of a number
    in the encoding, which shifts every row after it)."""
    old = _rows([f"f{i:02d}.csv" if i % 7 else f"d{i:02d}/" for i in range(40)])
    digests = [b"" if len(r) == 1 else bytes([i]) * 32 for i, r in enumerate(old)]
    flags = bytes(0 if len(r) == 1 else 1 for r in old)
    recorded = decode_payload(encode_payload(old, digests, flags))
    assert recorded is not None
    new = list(old)
    for i, kind in edits:
        row = new[i]
        if len(row) == 1:
            new[i] = (row[0].replace("d", "e"),)
            continue
        name, mode, mtime, size, ino, ctime = row
        if kind == "mtime":
            new[i] = (name, mode, mtime + 10**9, size, ino, ctime + 1)
        elif kind == "size":
            new[i] = (name, mode, mtime, size + 1, ino, ctime)
        elif kind == "wide":  # a size that takes more bytes to encode
            new[i] = (name, mode, mtime, size + 10**6, ino, ctime)
        elif kind == "ino":
            new[i] = (name, mode, mtime, size, ino + 1, ctime)
        elif kind == "rename":
            new[i] = (name.replace("f", "g"), mode, mtime, size, ino, ctime)
        else:
            new[i] = (name[:3] + "/",)
    if extra > 0:
        new.append(("z.csv", 0o100644, 1, 1, 1, 1))
    elif extra < 0:
        new.pop()
    encoded = msgspec.msgpack.encode(new)
    got = recorded.changed(encoded, new)
    if len(new) != len(old):
        assert got is None
        return
    assert got is not None
    found, offsets_hold = got
    assert found == [i for i in range(len(old)) if new[i] != old[i]]
    if offsets_hold:  # then the recorded offsets cut the new encoding into the new rows
        again = decode_payload(
            encode_payload(new, digests, flags, (encoded, recorded.offsets_bytes))
        )
        assert again is not None and again.rows() == new
    assert recorded.changed(None, new) == (found, False)


def _index_bytes(layout: int, mode: str, context: bytes, records: list[bytes]) -> bytes:
    import struct
    import zlib

    header = msgspec.msgpack.encode([layout, mode, context])
    return b"".join(
        [INDEX_MAGIC, struct.pack("<II", len(header), zlib.crc32(header)), header, *records]
    )


@pytest.mark.usefixtures("fine_timestamps")
def test_an_index_of_a_much_older_layout_is_rebuilt_once(repo: Repository, tmp_path: Path) -> None:
    """A stat cache of a layout before 2 is read as empty: every file is hashed once more,
    and the cache is rewritten in today's layout."""
    index = tmp_path / "state" / "index"
    stale = _index_bytes(1, "content_hash", b"", [b"junk" * 9])
    index.write_bytes(stale)
    status = repo.status()
    assert status.hashed == FOLDERS * FILES and not status.changes.paths
    assert index.read_bytes() != stale and StatCache(index, "content_hash").records
    assert repo.status().hashed == 0


@pytest.mark.usefixtures("fine_timestamps")
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_index_of_the_previous_layout_spares_rehashing(tmp_path: Path, jobs: str) -> None:
    """Upgrading from layout 2 (payloads of ``IndexEntry`` lists) costs no re-hash: its
    digests are used by name (its tree ids are not trusted), and the file is rewritten in
    today's layout by the first scan, in this process and in scan workers alike."""
    _tree(tmp_path / "raw")
    repo = _repo(tmp_path, env={"MANIFEST_JOBS": jobs})
    repo.snapshot(ref="last")
    index = tmp_path / "state" / "index"
    current = StatCache(index, "content_hash", scan_context(repo.config))
    assert current.trusted and len(current.records) == FOLDERS + 1
    records = [
        frame(
            encode_head(loaded.head),
            msgspec.msgpack.encode(list(current.entries(path).values())),
        )
        for path, loaded in current.records.items()
    ]
    digest = current.entries(b"d04/")[b"f2.csv"].digest
    index.write_bytes(_index_bytes(2, "content_hash", current.context, records))
    legacy = StatCache(index, "content_hash", scan_context(repo.config))
    assert legacy.legacy and not legacy.trusted and len(legacy.records) == FOLDERS + 1
    assert legacy.entries(b"d04/")[b"f2.csv"].digest == digest
    write(tmp_path / "raw" / "d04" / "f2.csv", "edited\n")
    status = repo.status()
    assert status.changes == ChangeSet(modified=("d04/f2.csv",)) and status.hashed == 1
    rewritten = StatCache(index, "content_hash", scan_context(repo.config))
    assert rewritten.trusted and not rewritten.legacy
    assert repo.status().hashed == 0


@pytest.mark.usefixtures("fine_timestamps")
@pytest.mark.parametrize(
    "edit",
    ["touch", "same_size", "wider", "rename", "file_to_folder", "racy_touch"],
)
def test_a_changed_row_is_looked_at_and_the_others_are_not(
    repo: Repository, tmp_path: Path, edit: str
) -> None:
    """With as many rows as recorded, only the changed rows of a folder are looked at: the
    result is what a scan without any cache finds, and the next scan hashes nothing (or, for
    a racy file, that file alone)."""
    folder = tmp_path / "raw" / "d03"
    target = folder / "f4.csv"
    old = (target.read_bytes(), target.stat())
    stamp = time.time_ns() - 3600 * 10**9
    if edit == "touch":
        os.utime(target, ns=(stamp, stamp))
    elif edit == "racy_touch":  # racy at every scan: hashed again each time
        future = time.time_ns() + 3600 * 10**9
        os.utime(target, ns=(future, future))
    elif edit == "same_size":
        target.write_bytes(old[0].upper())
        os.utime(target, ns=(stamp, stamp))
    elif edit == "wider":  # its size takes more bytes in the encoding: every row after shifts
        target.write_bytes(old[0] * 100)
        os.utime(target, ns=(stamp, stamp))
    elif edit == "rename":  # a name of the same length in the same slot
        target.rename(folder / "g4.csv")
    else:
        target.unlink()
        (folder / "f4.csv").mkdir()
        write(folder / "f4.csv" / "inner.csv", "inner\n")
    result = repo.scan(base=None)
    (tmp_path / "fresh").mkdir()
    config = load_config(root=tmp_path / "raw", store=tmp_path / "fresh", cooldown_sec=0, env={})
    fresh = Repository(config).scan(base=None)
    assert (result.root_id, result.files, result.bytes) == (fresh.root_id, fresh.files, fresh.bytes)
    assert result.hashed == 1  # the changed file (or the new folder's one file) alone
    racy = edit == "racy_touch"
    assert repo.scan(base=None).hashed == (1 if racy else 0)


@pytest.mark.usefixtures("fine_timestamps")
def test_files_touched_just_before_a_scan_leave_the_cache_as_it_was(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose changed stat is racy would be hashed again by the next scan whatever is
    recorded, so a folder whose only changes are such files keeps its record: touching one
    file in every folder just before a scan (a sync, a checkout) writes nothing. Once the
    stats have settled, the next scan records them, and the one after hashes nothing."""
    import manifest.fingerprint

    index = tmp_path / "state" / "index"
    assert repo.status().hashed == 0
    before = index.read_bytes()
    touched = [tmp_path / "raw" / f"d{d:02d}" / "f3.csv" for d in range(FOLDERS)]
    for path in touched:
        os.utime(path)  # now: racy under a 2 s granularity
    monkeypatch.setattr(manifest.fingerprint, "RACY_NS", 2_000_000_000)
    racy = repo.status()
    assert racy.hashed == FOLDERS and not racy.changes.paths
    assert index.read_bytes() == before
    assert repo.status().hashed == FOLDERS  # still racy: hashed again, as it would be anyway
    monkeypatch.setattr(manifest.fingerprint, "RACY_NS", 1)  # settled
    assert repo.status().hashed == FOLDERS
    assert len(index.read_bytes()) > len(before)  # recorded now
    assert repo.status().hashed == 0


def _fresh_scan(tmp_path: Path, name: str, **kw: object) -> tuple[str, int, int]:
    (tmp_path / name).mkdir()
    config = load_config(
        root=tmp_path / "raw",
        store=tmp_path / name,
        cooldown_sec=0,
        env={"MANIFEST_JOBS": "1"},
        **kw,  # type: ignore[arg-type]
    )
    result = Repository(config).scan(base=None)
    return result.root_id, result.files, result.bytes


@pytest.mark.usefixtures("fine_timestamps")
@pytest.mark.parametrize(
    ("first", "then"), [("mtime_size", "content_hash"), ("content_hash", "mtime_size")]
)
def test_a_cache_of_another_mode_lends_no_digest(tmp_path: Path, first: str, then: str) -> None:
    """A store scanned in one mode, then in the other: no recorded digest is used (an
    mtime_size cache records none; a content_hash one records digests an mtime_size tree
    must not hold), so the result is a scan without a cache's, and the cache is rebuilt."""
    _tree(tmp_path / "raw")
    _repo(tmp_path, mode=first).snapshot(ref="last")
    switched = _repo(tmp_path, mode=then)
    got = switched.scan(base=None)
    assert (got.root_id, got.files, got.bytes) == _fresh_scan(tmp_path, "fresh", mode=then)
    assert got.hashed == (FOLDERS * FILES if then == "content_hash" else 0)
    assert StatCache(tmp_path / "state" / "index", then, scan_context(switched.config)).trusted
    assert switched.scan(base=None).hashed == 0


def _deny(monkeypatch: pytest.MonkeyPatch, rel_dir: bytes) -> None:
    import manifest.root.scan
    from manifest.root.scan import Scanner

    class Denied(Scanner):
        def _list_dir(self, dir_fd: int, rel: bytes) -> list[os.DirEntry[str]]:
            if rel == rel_dir:
                raise PermissionError(13, "Permission denied")
            return super()._list_dir(dir_fd, rel)

    monkeypatch.setattr(manifest.root.scan, "Scanner", Denied)


@pytest.mark.usefixtures("fine_timestamps")
def test_an_unreadable_folder_keeps_no_record_of_other_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder carried over (unreadable) while the filters changed: its records were
    written under the old filters, so the rewritten cache must not keep them (they would be
    trusted under the new header, and their tree ids are the old filters')."""
    _tree(tmp_path / "raw")
    write(tmp_path / "raw" / "d05" / "notes.txt", "left out, then in\n")
    _repo(tmp_path, exclude=("**/*.txt",)).snapshot(ref="last")
    widened = _repo(tmp_path, exclude=())
    with monkeypatch.context() as patch:
        _deny(patch, b"d05/")
        status = widened.status()
    assert [p.path for p in status.problems] == ["d05"]
    got = widened.scan(base=None)  # d05 readable again
    assert (got.root_id, got.files, got.bytes) == _fresh_scan(tmp_path, "fresh")
    assert got.files == FOLDERS * FILES + 1


@pytest.mark.usefixtures("fine_timestamps")
def test_an_unreadable_folder_during_the_upgrade_keeps_no_old_layout_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrading a layout-2 cache while a folder is unreadable: the rewritten (trusted)
    file holds only today's records, each of which decodes; the folder is simply scanned
    again once readable, with the result of a scan without a cache."""
    _tree(tmp_path / "raw")
    repo = _repo(tmp_path)
    repo.snapshot(ref="last")
    index = tmp_path / "state" / "index"
    current = StatCache(index, "content_hash", scan_context(repo.config))
    records = [
        frame(
            encode_head(loaded.head),
            msgspec.msgpack.encode(list(current.entries(path).values())),
        )
        for path, loaded in current.records.items()
    ]
    index.write_bytes(_index_bytes(2, "content_hash", current.context, records))
    with monkeypatch.context() as patch:
        _deny(patch, b"d07/")
        status = repo.status()
    assert [p.path for p in status.problems] == ["d07"]
    rewritten = StatCache(index, "content_hash", scan_context(repo.config))
    assert rewritten.trusted and not rewritten.legacy
    for path in rewritten.records:
        assert rewritten.recorded(path) is not None, path
    assert b"d07/" not in rewritten.records
    write(tmp_path / "raw" / "d07" / "f1.csv", "edited while unreadable\n")
    got = repo.scan(base=None)
    assert (got.root_id, got.files, got.bytes) == _fresh_scan(tmp_path, "fresh")
    assert got.hashed == FILES  # the folder that was carried, read again


def test_an_index_cut_short_while_read_is_a_cache_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file truncated under the reader (its size taken before, its records read after):
    a cache miss (rebuilt by the next save), never a traceback."""
    path = tmp_path / "index"
    head = FolderHead(b"a/", b"s" * 32, b"t" * 32, 1, 1, 0, 0, ())
    record = frame(encode_head(head), payload_of([IndexEntry(b"x", 1, 1, 1, 1, b"d" * 32)]))
    path.write_bytes(_index_bytes(3, "content_hash", b"", [record]))
    real_fstat = os.fstat

    def fstat_before_the_cut(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        fields = list(st)
        fields[6] += 4096  # st_size: what it was before someone cut it short
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", fstat_before_the_cut)
    cache = StatCache(path, "content_hash")
    monkeypatch.undo()
    assert cache.rewrite and cache.entries(b"a/") == {}


@pytest.mark.usefixtures("fine_timestamps")
def test_a_lazy_cache_gives_what_a_loaded_one_gives(repo: Repository, tmp_path: Path) -> None:
    """The watcher's patched scan decodes only the heads it asks for: each is the head a
    full load gives (a later appended record winning), a damaged one is a miss, and keeping
    every record and appending one keeps them all."""
    index = tmp_path / "state" / "index"
    write(tmp_path / "raw" / "d03" / "f1.csv", "edited\n")
    repo.status()  # appends d03's record and the root's: two paths recorded twice
    mode, context = "content_hash", scan_context(repo.config)
    eager = StatCache(index, mode, context)
    lazy = StatCache(index, mode, context, lazy=True)
    assert eager.trusted and lazy.trusted and not lazy.rewrite
    assert len(lazy.records) == 0 and set(lazy.raw) == set(eager.records)
    for path in eager.records:
        assert lazy.head(path) == eager.head(path)
        assert lazy.payload(path) == eager.payload(path)
    assert lazy.head(b"nowhere/") is None

    lazy = StatCache(index, mode, context, lazy=True)
    lazy.head(b"d05/")
    lazy.keep_all()
    recorded = eager.records[b"d05/"]
    lazy.put(msgspec.structs.replace(recorded.head, files=99), eager.payload(b"d05/") or b"")
    assert lazy.save()  # an append, its table of contents made from the one it read
    again = StatCache(index, mode, context)
    assert set(again.records) == set(eager.records) and again.head(b"d05/").files == 99  # type: ignore[union-attr]
    _same_places(StatCache(index, mode, context, lazy=True), _walked(index, mode, context))

    # a lazy cache that finds the file mostly dead (counted from its table) rewrites it
    lazy = StatCache(index, mode, context, lazy=True)
    lazy.keep_all()
    lazy.total += 10 * index.stat().st_size  # as if most of the file were dead records
    lazy.put(msgspec.structs.replace(recorded.head, files=98), eager.payload(b"d05/") or b"")
    before = index.stat().st_ino
    assert lazy.save() and index.stat().st_ino != before
    again = StatCache(index, mode, context)
    assert set(again.records) == set(eager.records) and again.head(b"d05/").files == 98  # type: ignore[union-attr]
    for path in eager.records:
        if path != b"d05/":
            assert again.head(path) == eager.head(path)
    _same_places(StatCache(index, mode, context, lazy=True), _walked(index, mode, context))

    start, hlen, *_ = StatCache(index, mode, context, lazy=True).raw[b"d09/"]
    with open(index, "r+b") as fh:  # one head's bytes damaged
        fh.seek(start + hlen - 1)
        fh.write(b"\xff")
    damaged = StatCache(index, mode, context, lazy=True)
    assert damaged.head(b"d09/") is None and damaged.rewrite
    assert damaged.head(b"d10/") == eager.head(b"d10/")


def _walked(index: Path, mode: str, context: bytes) -> StatCache:
    """A lazy load that walks the file (its table of contents moved aside)."""
    toc = index.with_name("index.toc")
    aside = toc.with_name("toc.aside")
    toc.rename(aside)
    try:
        return StatCache(index, mode, context, lazy=True)
    finally:
        aside.rename(toc)


def _same_places(a: StatCache, b: StatCache) -> None:
    assert a.where == b.where and a.raw == b.raw
    assert a.sizes == b.sizes
    assert (a.total, a.end, a.trusted, a.rewrite) == (b.total, b.end, b.trusted, b.rewrite)


@pytest.mark.usefixtures("fine_timestamps")
def test_the_table_of_contents_is_read_only_for_the_file_it_describes(
    repo: Repository, tmp_path: Path
) -> None:
    """Every save (an append, a rewrite) writes ``index.toc``; a lazy load takes the
    records' places from it, exactly what walking the file gives, and walks the file instead
    when it describes another (stale after a save it missed, or garbage), or is missing;
    then it writes the table of the file it walked."""
    index = tmp_path / "state" / "index"
    toc = tmp_path / "state" / "index.toc"
    mode, context = "content_hash", scan_context(repo.config)
    assert toc.is_file()  # the snapshot's save (a new file) wrote one
    write(tmp_path / "raw" / "d03" / "f1.csv", "edited\n")
    before = index.stat()
    repo.status()  # appends d03's record and the root's
    assert index.stat().st_ino == before.st_ino and index.stat().st_size > before.st_size
    eager = StatCache(index, mode, context)
    from_toc = StatCache(index, mode, context, lazy=True)
    _same_places(from_toc, _walked(index, mode, context))
    assert from_toc.where == eager.where and from_toc.total == eager.total
    for path in eager.records:
        assert from_toc.head(path) == eager.head(path)
        assert from_toc.payload(path) == eager.payload(path)

    # it is what a lazy load reads: a table naming one folder fewer loads one fewer
    good = toc.read_bytes()
    table = msgspec.msgpack.decode(good)
    names, places = table[4], table[5]  # five int64 per name
    gone = names.index(b"d05/")
    table[4] = names[:gone] + names[gone + 1 :]
    table[5] = places[: 40 * gone] + places[40 * (gone + 1) :]
    toc.write_bytes(msgspec.msgpack.encode(table))
    assert b"d05/" not in StatCache(index, mode, context, lazy=True).raw
    # a place past the file's end (a table that is not this file's, though its inode, size
    # and mtime match): that folder is a miss, the others are read, the cache is rebuilt
    table = msgspec.msgpack.decode(good)
    at = table[4].index(b"d05/")
    row = array("q", table[5][40 * at : 40 * at + 40])
    row[1] = index.stat().st_size  # the head's length
    table[5] = table[5][: 40 * at] + row.tobytes() + table[5][40 * at + 40 :]
    toc.write_bytes(msgspec.msgpack.encode(table))
    off = StatCache(index, mode, context, lazy=True)
    assert off.head(b"d05/") is None and off.rewrite
    assert off.head(b"d06/") == eager.head(b"d06/")
    toc.write_bytes(good)

    # stale: a save it missed (the table put back from before it) is walked past
    write(tmp_path / "raw" / "d04" / "f2.csv", "edited\n")
    repo.status()
    toc.write_bytes(good)
    stale = StatCache(index, mode, context, lazy=True)
    assert stale.where == StatCache(index, mode, context).where
    assert stale.head(b"d04/") == StatCache(index, mode, context).head(b"d04/")
    for garbage in (b"", b"\x93\x01\x02", os.urandom(64)):
        toc.write_bytes(garbage)
        _same_places(StatCache(index, mode, context, lazy=True), _walked(index, mode, context))

    # a lazy load that had to walk writes the table (a store from before tables)
    toc.unlink()
    walked = StatCache(index, mode, context, lazy=True)
    assert toc.is_file()
    _same_places(StatCache(index, mode, context, lazy=True), walked)

    # a rewrite (compaction) writes the new file's table
    cache = StatCache(index, mode, context)
    cache.rewrite = True
    cache.keep_all()
    cache.put(msgspec.structs.replace(cache.records[b"d05/"].head, files=99), b"x")
    assert cache.save() and index.stat().st_ino != before.st_ino
    rewritten = StatCache(index, mode, context, lazy=True)
    _same_places(rewritten, _walked(index, mode, context))
    assert rewritten.head(b"d05/").files == 99  # type: ignore[union-attr]
    assert rewritten.payload(b"d05/") == b"x"
    assert rewritten.head(b"d06/") == eager.head(b"d06/")
