"""gc, reflog expiry and fsck: nothing reachable is ever deleted, even with writers racing
gc, and anything gc cannot read stops it (fail closed)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from manifest import ChangeSet, Repository, load_config
from manifest.errors import ConfigError, ManifestError, StoreError

from .conftest import MakeRepo, write


def _writer(raw: str, store: str, name: str, rounds: int) -> None:
    repo = Repository(load_config(root=raw, store=store, cooldown_sec=0, env={}), lock_timeout=30)
    for i in range(rounds):
        # flip between two contents, so snapshots keep reusing trees written long ago
        write(Path(raw) / f"{name}.csv", f"{name},{i % 2}\n")
        for _attempt in range(50):
            try:
                repo.snapshot(ref="last", message=f"{name} {i}")
                break
            except ManifestError as exc:
                if not exc.retryable:
                    raise
                time.sleep(0.01)


def _collector(raw: str, store: str, stop_after: float) -> None:
    repo = Repository(load_config(root=raw, store=store, cooldown_sec=0, env={}), lock_timeout=30)
    deadline = time.monotonic() + stop_after
    objects = Path(store) / "objects"
    while time.monotonic() < deadline:
        old = time.time() - 7200  # every object looks old: only reachability protects it
        for fan in objects.iterdir() if objects.exists() else ():
            for obj in fan.iterdir():
                if not obj.name.startswith(".tmp-"):
                    os.utime(obj, (old, old))
        try:
            repo.gc(grace_seconds=0)
        except ManifestError as exc:
            if not exc.retryable:
                raise


def test_gc_racing_snapshots_never_leaves_a_dangling_ref(repo: Repository, raw: Path) -> None:
    repo.snapshot(ref="last", message="start")
    store = repo.store.text
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(raw), store, f"w{n}", 40)) for n in range(2)] + [
        ctx.Process(target=_collector, args=(str(raw), store, 8.0))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    report = repo.fsck()
    assert report.ok, report.problems
    for entry in repo.log("last"):
        assert entry.id is not None
        assert list(repo.iter_files(entry.id))  # every tree of every logged snapshot is there


def test_gc_grace_must_be_finite_and_not_negative(repo: Repository) -> None:
    repo.begin()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError, match="grace"):
            repo.gc(grace_seconds=bad)


@pytest.mark.parametrize(
    "damage", ["garbage ref", "ref is a folder", "garbage reflog line", "reflog is a folder"]
)
def test_gc_fails_closed_on_what_it_cannot_read(
    make_repo: MakeRepo, raw: Path, tmp_path: Path, damage: str
) -> None:
    repo = make_repo()
    repo.begin()
    write(raw / "link_templates.csv", "template_id\n")
    started = repo.begin().snapshot
    assert started
    repo.promote(started)
    store = tmp_path / "state"
    objects_before = sorted(p.name for p in (store / "objects").rglob("*") if p.is_file())
    if damage == "garbage ref":
        (store / "refs" / "keep").write_text("not a snapshot id\n")
    elif damage == "ref is a folder":
        (store / "refs" / "unfinished").mkdir()
    elif damage == "garbage reflog line":
        log = store / "logs" / "refs" / "last"
        log.write_bytes(b"{not json}\n" + log.read_bytes())
    else:
        (store / "logs" / "refs" / "pending").unlink()
        (store / "logs" / "refs" / "pending").mkdir()
    with pytest.raises(StoreError) as info:
        repo.gc(grace_seconds=0)
    assert "gc stopped and deleted nothing" in str(info.value)
    objects_after = sorted(p.name for p in (store / "objects").rglob("*") if p.is_file())
    assert objects_after == objects_before


def test_expiry_lets_gc_reclaim_old_cycles(repo: Repository, raw: Path) -> None:
    """20 cycles: without expiry gc keeps everything any reflog line ever named; with it,
    only recent history and current values stay."""
    repo.begin()
    for i in range(20):
        write(raw / "link_templates.csv", f"template_id\nt{i}\n")
        started = repo.begin().snapshot
        assert started
        repo.promote(started)
    assert repo.gc(grace_seconds=0).removed == 0  # every old snapshot is in a reflog
    last = repo.find_ref("last")
    future = time.time_ns() + 10 * 86400 * 10**9
    from manifest.maintenance import expire_reflogs

    assert expire_reflogs(repo, 86400, now_ns=future) > 0
    result = repo.gc(grace_seconds=0)
    assert result.removed >= 20
    assert repo.find_ref("last") == last
    assert len(repo.log("last")) == 1 and repo.log("last")[0].id == last
    assert repo.fsck().ok
    assert repo.status().changes == ChangeSet()


def test_gc_removes_temp_files_anywhere_and_fsck_lists_them(
    repo: Repository, tmp_path: Path
) -> None:
    repo.begin()
    store = tmp_path / "state"
    leftovers = [
        store / "refs" / ".tmp-last-abc",
        store / "logs" / "refs" / ".tmp-x",
        store / ".tmp-index-1",
    ]
    for path in leftovers:
        path.write_text("partial")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    listed = {p.subject for p in repo.fsck().problems if "interrupted write" in p.message}
    assert listed == {str(p) for p in leftovers}
    assert repo.gc(grace_seconds=3600).temp_files_removed == 3
    assert not any(p.exists() for p in leftovers)


def test_fsck_reports_broken_tree_invariants_and_unlistable_folders(
    repo: Repository, tmp_path: Path
) -> None:
    from manifest.model import Tree, TreeEntry

    repo.begin()
    bad = Tree(entries=(TreeEntry(b"b", 0, 1, 0, b""), TreeEntry(b"a/x", 7, 1, 0, b"12")))
    oid = repo.objects.write_object(bad)
    report = repo.fsck()
    messages = [p.message for p in report.problems if p.subject == f"tree {oid}"]
    assert any("not sorted" in m for m in messages)
    assert any("invalid entry name" in m for m in messages)
    assert any("unknown kind 7" in m for m in messages)
    assert not report.ok
    # a file where an object fan-out folder should be is skipped; a folder named like a ref
    # is an error, not "ok"
    (tmp_path / "state" / "refs" / "last").unlink()
    (tmp_path / "state" / "refs" / "last").mkdir()
    report = repo.fsck()
    assert any("is a folder" in p.message for p in report.problems)


def test_gc_fails_closed_when_a_reachable_tree_is_missing(
    make_repo: MakeRepo, raw: Path, tmp_path: Path
) -> None:
    """Issue 22.11: one tree of `last` lost: gc deletes nothing (what it reached is
    unknown), so restoring the lost object from a backup still repairs the store."""
    repo = make_repo()
    repo.begin()
    write(raw / "sub" / "deep" / "x.csv", "x\n")
    repo.snapshot(ref="keep")
    last = repo.find_ref("last")
    assert last is not None
    root = repo.read_snapshot(last).root
    sub = next(e for e in repo.objects.read_tree(root).entries if e.kind == 1).digest.hex()
    objects = tmp_path / "state" / "objects"
    lost = next(p for p in objects.rglob("*") if p.is_file() and sub.endswith(p.name[-8:]))
    backup = lost.read_bytes()
    lost.unlink()
    for obj in objects.rglob("*"):
        if obj.is_file():
            os.utime(obj, (time.time() - 7200,) * 2)
    before = sorted(p.name for p in objects.rglob("*") if p.is_file())
    with pytest.raises(StoreError, match="is missing, so what it references is unknown"):
        repo.gc(grace_seconds=0)
    assert sorted(p.name for p in objects.rglob("*") if p.is_file()) == before
    lost.write_bytes(backup)  # the restore repairs the store
    assert repo.fsck().ok


def test_a_reused_object_is_freshened_and_gc_looks_at_the_refs_again(
    make_repo: MakeRepo, raw: Path, tmp_path: Path
) -> None:
    """Issue 22.12: a tree a scan builds again (content flipped back to an old state) gets a
    new mtime, so the grace protects it; a ref moved to an old unreferenced snapshot while
    gc runs (a writer on another host, outside our lock) keeps it and its trees."""
    repo = make_repo()
    repo.begin()
    objects = tmp_path / "state" / "objects"

    def age_all() -> None:
        for obj in objects.rglob("*"):
            if obj.is_file():
                os.utime(obj, (time.time() - 7200,) * 2)

    write(raw / "flip" / "f.csv", "A\n")
    old, _ = repo.snapshot(message="state A, never referenced")
    tree_a = repo.read_snapshot(old).root
    write(raw / "flip" / "f.csv", "B\n")
    repo.snapshot(ref="last")
    age_all()
    write(raw / "flip" / "f.csv", "A\n")  # back to state A: its trees are built again
    repo.snapshot(ref="last")
    path = objects / tree_a[:2] / tree_a[2:]
    assert time.time() - path.stat().st_mtime < 60  # freshened
    # gc racing a ref move to the old, unreferenced snapshot `old`
    age_all()
    from manifest.store.objects import ObjectStore

    listing = ObjectStore.iter_infos

    def listing_while_another_host_resets(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        yield from listing(self, *args, **kwargs)
        repo.refs.update_ref("keep", old, reason="reset by hand on another host")

    ObjectStore.iter_infos = listing_while_another_host_resets  # type: ignore[method-assign]
    try:
        repo.gc(grace_seconds=0)
    finally:
        ObjectStore.iter_infos = listing  # type: ignore[method-assign]
    assert repo.objects.find_snapshot(old) is not None
    assert repo.fsck().ok
