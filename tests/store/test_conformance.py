"""One conformance suite for state stores (issue 23.4): every guarantee ``docs/operations.md``
makes of a store, asserted once and run against each backend ``open_store`` chooses: a local
folder and a bucket on a real S3 API (moto's server on 127.0.0.1). A new backend joins by
adding a parameter to ``store_at`` and a way to damage an object behind its back."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from manifest.errors import (
    ConfigError,
    CorruptObjectError,
    DanglingRefError,
    FormatVersionError,
    InvalidRefNameError,
    LockHeldError,
    ObjectNotFoundError,
    RefConflictError,
    StoreBusyError,
    StoreError,
)
from manifest.location import BucketURL, Location
from manifest.maintenance import fsck, gc
from manifest.model import Counts, Snapshot, Tree, TreeEntry, encode_object
from manifest.store import FORMAT_FILE, Store, open_store
from manifest.store.objects import object_id

A, B, C = "a" * 64, "b" * 64, "c" * 64
TREE = Tree(entries=(TreeEntry(b"a.csv", 0, 3, 0, b"\x01" * 32),))


def _snapshot(tree: str) -> Snapshot:
    return Snapshot(
        root=tree, parent=None, created_ns=1, mode="content_hash", data_root="x", counts=Counts()
    )


@dataclass
class Backend:
    kind: str
    location: Location
    # write ``data`` where the object ``oid`` is kept, behind the store's back
    damage: Callable[[str, bytes], None]

    def open(self, **kwargs: object) -> Store:
        store = open_store(self.location, **kwargs)  # type: ignore[arg-type]
        store.check_format(create=True)
        return store


@pytest.fixture(params=["local", "bucket"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        folder = tmp_path / "state"

        def damage_file(oid: str, data: bytes) -> None:
            path = folder / "objects" / oid[:2] / oid[2:]
            path.chmod(0o644)
            path.write_bytes(data)

        return Backend("local", folder, damage_file)
    s3 = request.getfixturevalue("s3")
    url = BucketURL("s3", s3.make_bucket("conformance"), "m")

    def damage_key(oid: str, data: bytes) -> None:
        from manifest.store.s3 import Bucket

        Bucket(url).put(f"objects/{oid[:2]}/{oid[2:]}", data)

    return Backend("bucket", url, damage_key)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open(lock_timeout=2.0)


# -- the format marker -------------------------------------------------------------------


def test_a_store_is_created_once_and_refuses_a_newer_format(backend: Backend) -> None:
    fresh = open_store(backend.location)
    assert not fresh.exists()
    fresh.check_format(create=False)  # reading a store that is not there creates nothing
    assert not fresh.exists()
    fresh.check_format(create=True)
    assert fresh.exists() and fresh.created
    second = backend.open()
    assert not second.created  # the marker was there: only its first writer created it
    second.files.write(FORMAT_FILE, b"999\n")
    with pytest.raises(FormatVersionError, match="999"):
        open_store(backend.location).check_format(create=False)
    second.files.write(FORMAT_FILE, b"garbage\n")
    with pytest.raises(StoreError, match="not a format version"):
        open_store(backend.location).check_format(create=False)


# -- objects -----------------------------------------------------------------------------


def test_objects_are_named_by_their_hash_written_once_and_read_back(store: Store) -> None:
    objects = store.objects
    oid = objects.write_object(TREE)
    assert oid == object_id(encode_object(TREE))
    assert objects.read_tree(oid) == TREE
    assert objects.write_object(TREE) == oid  # idempotent
    assert objects.contains(oid) and list(objects.iter_ids()) == [oid]
    assert list(objects.iter_ids(oid[:4])) == [oid] and not list(objects.iter_ids("f" * 4))
    assert [(i, size) for i, _, size in objects.iter_infos()] == [(oid, len(encode_object(TREE)))]
    assert objects.find_snapshot(oid) is None  # a tree is no snapshot
    with pytest.raises(CorruptObjectError, match="expected a snapshot"):
        objects.read_snapshot(oid)


def test_many_objects_are_written_together_and_counted_once(store: Store) -> None:
    trees = {
        object_id(data): data
        for data in (
            encode_object(Tree(entries=(TreeEntry(b"f%d" % i, 0, i, 0, b""),))) for i in range(40)
        )
    }
    assert store.objects.write_many(trees) == 40
    assert store.objects.write_many(trees) == 0  # all there: nothing new
    assert set(store.objects.iter_ids()) == set(trees)


def test_a_read_re_hashes_and_names_a_corrupt_or_missing_object(
    store: Store, backend: Backend
) -> None:
    oid = store.objects.write_object(TREE)
    backend.damage(oid, b"not the bytes")
    with pytest.raises(CorruptObjectError, match=f"corrupt object {oid}"):
        store.objects.read_object(oid)
    with pytest.raises(ObjectNotFoundError):
        store.objects.read_object("0" * 64)
    with pytest.raises(ObjectNotFoundError, match="not 64 hex"):
        store.objects.read_object("../../etc/passwd")
    assert store.objects.find_snapshot("0" * 64) is None


def test_writing_an_object_again_freshens_it(store: Store) -> None:
    """gc's grace period counts from an object's last write: a writer that reuses an old
    object writes it again, and its modified time moves (git's freshening)."""
    oid = store.objects.write_object(TREE)
    [(_, first, _)] = store.objects.iter_infos()
    time.sleep(1.1)  # a bucket's LastModified has whole seconds
    store.objects.write_object(TREE)
    [(_, again, _)] = store.objects.iter_infos()
    assert again > first and store.objects.contains(oid)


def test_delete_removes_an_object(store: Store) -> None:
    oid = store.objects.write_object(TREE)
    store.objects.delete(oid)
    store.objects.delete(oid)  # deleting what is gone is no error
    assert not store.objects.contains(oid) and list(store.objects.iter_ids()) == []


# -- refs --------------------------------------------------------------------------------


def test_a_ref_moves_by_compare_and_swap_with_its_reflog_line(store: Store) -> None:
    refs = store.refs
    assert refs.find_ref("last") is None and not refs.has_ref("last")
    assert refs.update_ref("last", A, reason="first", runs=("r1",)) is None
    assert refs.update_ref("last", B, reason="second", expected=A) == A
    with pytest.raises(RefConflictError) as info:
        refs.update_ref("last", C, reason="stale", expected=A)
    assert info.value.retryable and (info.value.expected, info.value.actual) == (A, B)
    with pytest.raises(RefConflictError):
        refs.update_ref("pending", C, reason="expected set, is unset", expected=A)
    assert refs.find_ref("last") == B and refs.find_ref("pending") is None
    log = refs.read_reflog("last")
    assert [(e.old, e.new, e.reason, e.runs) for e in log] == [
        (None, A, "first", ("r1",)),
        (A, B, "second", ()),
    ]
    assert refs.read_moves("last") == log  # every line is a move that happened
    assert log[0].time_ns <= log[1].time_ns


def test_a_move_to_the_value_held_writes_nothing(store: Store) -> None:
    store.refs.update_ref("last", A, reason="x")
    assert store.refs.update_ref("last", A, reason="again") == A
    assert len(store.refs.read_reflog("last")) == 1


def test_a_deleted_ref_keeps_its_reflog(store: Store) -> None:
    refs = store.refs
    refs.update_ref("pending", A, reason="begin")
    refs.update_ref("pending", None, reason="promoted")
    assert refs.find_ref("pending") is None and refs.has_log("pending")
    assert [(e.old, e.new) for e in refs.read_reflog("pending")] == [(None, A), (A, None)]
    assert "pending" in set(refs.iter_reflog_names())
    assert "pending" not in dict(refs.iter_refs())


def test_refs_are_listed_sorted_and_names_are_checked(store: Store) -> None:
    for name in ("pending", "keep/2026", "last"):
        store.refs.update_ref(name, A, reason="x")
    assert [n for n, _ in store.refs.iter_refs()] == ["keep/2026", "last", "pending"]
    for bad in ("../x", "a/../b", "x.lock", ""):
        with pytest.raises(InvalidRefNameError):
            store.refs.update_ref(bad, A, reason="x")
    with pytest.raises(DanglingRefError):
        store.refs.update_ref("last", "not-an-id", reason="x")
    assert store.refs.find_ref("last") == A


def test_a_transaction_sees_its_own_moves_and_loses_to_an_earlier_one(
    backend: Backend, store: Store
) -> None:
    other = backend.open(lock_timeout=0.2)
    store.refs.update_ref("last", A, reason="x")
    if store.caps.locks_reach_all_writers:
        # a ref's lock keeps every other writer out for the transaction's length
        with store.refs.transaction("last") as txn:
            txn.set(B, reason="mine", expected=A)
            assert txn.value == B
            with pytest.raises(LockHeldError):
                other.refs.update_ref("last", C, reason="theirs")
        assert store.refs.find_ref("last") == B
        return
    # no lock reaches the other writer: it wins the race, and this transaction's write of a
    # value read before that move is a conflict, never a lost move
    with store.refs.transaction("last") as txn:
        assert txn.value == A
        other.refs.update_ref("last", B, reason="theirs", expected=A)
        with pytest.raises(RefConflictError) as info:
            txn.set(C, reason="too late")
    assert (info.value.expected, info.value.actual) == (A, B)
    assert [(e.old, e.new) for e in store.refs.read_reflog("last")] == [(None, A), (A, B)]


def test_concurrent_compare_and_swaps_have_one_winner(backend: Backend) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def contend(value: str) -> None:
        refs = backend.open(lock_timeout=20.0).refs
        barrier.wait()
        try:
            refs.update_ref("pending", value, reason="begin", expected=None)
            outcomes.append("won")
        except RefConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=contend, args=(f"{i:x}" * 64,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert len(backend.open().refs.read_reflog("pending")) == 1


def test_expiry_rewrites_a_reflog_and_keeps_the_ref(store: Store) -> None:
    store.refs.update_ref("last", A, reason="old")
    store.refs.update_ref("last", B, reason="new")
    with store.refs.transaction("last") as txn:
        txn.rewrite_reflog(txn.read_reflog()[-1:])
    assert store.refs.find_ref("last") == B
    assert [e.reason for e in store.refs.read_reflog("last")] == ["new"]


# -- small files ---------------------------------------------------------------------------


def test_small_files_are_created_once_and_replaced_whole(store: Store) -> None:
    files = store.files
    assert files.read("pending.failed") is None
    assert files.create("pending.failed", b"one")
    assert not files.create("pending.failed", b"two")  # another writer got there first
    assert files.read("pending.failed") == b"one"
    files.write("pending.failed", b"three")
    assert files.read("pending.failed") == b"three"
    assert files.where("pending.failed").endswith("pending.failed")
    assert store.text in files.where("pending.failed")
    # a bucket root's hash cache is about 100 bytes a key: several MiB at 50,000 keys
    big = os.urandom(1 << 16) * 48  # 3 MiB
    files.write("root-hashes", big)
    assert files.read("root-hashes") == big


def test_a_small_file_is_replaced_by_compare_and_swap(store: Store) -> None:
    files = store.files
    assert files.read_tagged("root-events") == (None, None)
    assert files.replace("root-events", b"one", None)  # None: only if it does not exist
    assert not files.replace("root-events", b"two", None)
    data, tag = files.read_tagged("root-events")
    assert data == b"one" and tag is not None
    files.write("root-events", b"three")  # another writer since the read
    assert not files.replace("root-events", b"four", tag)
    assert files.read("root-events") == b"three"
    data, tag = files.read_tagged("root-events")
    assert data == b"three" and files.replace("root-events", b"five", tag)
    assert files.read("root-events") == b"five"
    assert files.read_tagged("root-events")[1] != tag


def test_concurrent_replaces_of_a_small_file_have_one_winner(backend: Backend) -> None:
    backend.open().files.write("root-events", b"base")
    _, tag = backend.open().files.read_tagged("root-events")
    outcomes: list[bytes] = []
    barrier = threading.Barrier(6)

    def contend(value: bytes) -> None:
        files = backend.open(lock_timeout=20.0).files
        barrier.wait()
        if files.replace("root-events", value, tag):
            outcomes.append(value)

    threads = [threading.Thread(target=contend, args=(b"%d" % i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 1
    assert backend.open().files.read("root-events") == outcomes[0]


# -- the store lock, gc and fsck -----------------------------------------------------------


def test_gc_holds_the_store_against_this_hosts_writers(backend: Backend, store: Store) -> None:
    other = backend.open(lock_timeout=0.2)
    with store.lock(exclusive=True), pytest.raises(StoreBusyError):
        other.lock(exclusive=False).__enter__()
    with store.lock(exclusive=False), other.lock(exclusive=False):
        pass  # writers share it


def test_gc_keeps_what_refs_reach_and_deletes_the_rest(store: Store) -> None:
    tree = store.objects.write_object(TREE)
    snap = store.objects.write_object(_snapshot(tree))
    loose = store.objects.write_object(Tree(entries=()))
    store.refs.update_ref("last", snap, reason="x")
    alone = not store.caps.locks_reach_all_writers
    kept = gc(store, grace_seconds=3600, alone=alone)
    assert (kept.kept, kept.removed) == (3, 0)  # everything is younger than the grace
    result = gc(store, grace_seconds=0, alone=alone)
    assert (result.kept, result.removed) == (2, 1)
    assert not store.objects.contains(loose) and store.objects.contains(tree)
    assert fsck(store).ok


def test_gc_keeps_a_grace_writers_it_cannot_lock_out_rely_on(store: Store) -> None:
    if store.caps.locks_reach_all_writers:
        assert gc(store, grace_seconds=0).removed == 0  # a lock keeps writers out: any grace
        return
    with pytest.raises(ConfigError, match="at least 900 seconds"):
        gc(store, grace_seconds=60)
    assert gc(store, grace_seconds=60, alone=True).removed == 0


def test_gc_fails_closed_and_fsck_names_what_is_wrong(store: Store, backend: Backend) -> None:
    tree = store.objects.write_object(TREE)
    snap = store.objects.write_object(_snapshot(tree))
    store.refs.update_ref("last", snap, reason="x")
    store.objects.write_object(Tree(entries=()))
    backend.damage(tree, b"garbage")
    alone = not store.caps.locks_reach_all_writers
    with pytest.raises(StoreError, match="gc stopped"):
        gc(store, grace_seconds=0, alone=alone)
    assert len(list(store.objects.iter_ids())) == 3  # nothing was deleted
    report = fsck(store)
    assert not report.ok
    assert any(p.subject == f"object {tree}" and "corrupt" in p.message for p in report.problems)


def test_the_capabilities_say_what_a_caller_may_rely_on(store: Store, backend: Backend) -> None:
    oid = store.objects.write_object(TREE)
    if store.caps.local_objects is not None:  # scan workers read objects from this folder
        assert (store.caps.local_objects / oid[:2] / oid[2:]).is_file()
        assert not store.caps.remote
    else:
        assert store.caps.remote and backend.kind == "bucket"
    assert store.ready_cache_dir() and store.cache_dir.is_dir()
