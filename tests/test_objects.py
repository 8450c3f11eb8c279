from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifest.model import (
    Counts,
    Snapshot,
    Tree,
    TreeEntry,
    decode_object,
    encode_object,
)
from manifest.store.objects import ObjectStore, object_id

entries = st.builds(
    TreeEntry,
    name=st.binary(min_size=1, max_size=20),
    kind=st.integers(0, 2),
    size=st.integers(0, 2**40),
    mtime_ns=st.integers(0, 2**62),
    digest=st.binary(max_size=32),
)
trees = st.builds(Tree, entries=st.lists(entries, max_size=8).map(tuple))
snapshots = st.builds(
    Snapshot,
    root=st.text("0123456789abcdef", min_size=64, max_size=64),
    parent=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    created_ns=st.integers(0, 2**62),
    mode=st.sampled_from(["content_hash", "mtime_size"]),
    data_root=st.text(max_size=30),
    counts=st.builds(Counts, *(st.integers(0, 10**9) for _ in range(5))),
    message=st.text(max_size=30),
)


@given(obj=trees | snapshots)
def test_codec_round_trip(obj: Tree | Snapshot) -> None:
    data = encode_object(obj)
    assert decode_object(data) == obj
    assert encode_object(decode_object(data)) == data  # canonical


@pytest.mark.parametrize("syncfs_available", [True, False])
def test_bulk_writes_are_complete_and_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs_available: bool
) -> None:
    import manifest.store.objects

    calls: list[Path] = []

    def fake_syncfs(folder: Path) -> bool:
        calls.append(folder)
        return syncfs_available

    monkeypatch.setattr(manifest.store.objects, "sync_filesystem", fake_syncfs)
    store = ObjectStore(tmp_path / "objects")
    trees = [
        Tree(entries=(TreeEntry(f"f{i}".encode(), 0, i, 0, bytes([i % 256]) * 32),))
        for i in range(manifest.store.objects.BULK_WRITE_THRESHOLD + 5)
    ]
    encoded = {object_id(encode_object(t)): encode_object(t) for t in trees}
    assert store.write_many(encoded) == len(trees)
    # one syncfs before the renames, one after (each falls back to fsyncs when unavailable)
    assert calls == [tmp_path / "objects"] * 2
    assert {oid: store.read_tree(oid) for oid in encoded} == {
        object_id(encode_object(t)): t for t in trees
    }
    assert store.write_many(encoded) == 0
    from manifest.maintenance import iter_temp_files

    assert list(iter_temp_files(tmp_path / "objects")) == []


def test_sync_filesystem_works_here(tmp_path: Path) -> None:
    from manifest.fsutil import sync_filesystem

    assert sync_filesystem(tmp_path) in (True, False)  # never raises; True on Linux
    if sys.platform.startswith("linux"):
        assert sync_filesystem(tmp_path) is True
