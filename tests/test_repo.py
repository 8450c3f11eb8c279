from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec
import pytest

from manifest import ChangeSet, Repository, load_config
from manifest.errors import (
    AmbiguousRevisionError,
    ConfigError,
    DanglingRefError,
    FormatVersionError,
    RefConflictError,
    StoreError,
    UnknownRevisionError,
)

from .conftest import MakeRepo, write


def edit(raw: Path) -> None:
    write(raw / "link_templates.csv", "template_id,template_file\ncontrast,links/analogy.txt\n")


# -- begin / promote / abandon -------------------------------------------------------------


def test_baseline_then_change_then_promote(repo: Repository, raw: Path) -> None:
    first = repo.begin()
    assert first.outcome == "baseline" and first.last == first.snapshot
    assert repo.find_ref("pending") is None
    assert repo.begin().outcome == "unchanged"
    edit(raw)
    started = repo.begin()
    assert started.outcome == "started"
    assert started.changes == ChangeSet(modified=("link_templates.csv",))
    assert started.last == first.snapshot
    assert repo.find_ref("pending") == started.snapshot
    assert repo.read_snapshot(started.snapshot).parent == first.snapshot
    promoted = repo.promote(started.snapshot, reason="promoted after run r1")
    assert promoted.outcome == "promoted"
    assert repo.find_ref("last") == started.snapshot
    assert repo.find_ref("pending") is None
    assert repo.begin().outcome == "unchanged"
    assert repo.log()[0].reason == "promoted after run r1"


def test_second_begin_reports_the_pending_one(repo: Repository, raw: Path) -> None:
    repo.begin()
    edit(raw)
    started = repo.begin()
    again = repo.begin()
    assert again.outcome == "in_flight"
    assert again.snapshot == started.snapshot
    assert again.changes == started.changes


def test_abandon_keeps_last_and_the_next_begin_sees_the_same_changes(
    repo: Repository, raw: Path
) -> None:
    base = repo.begin().snapshot
    edit(raw)
    started = repo.begin()
    assert started.snapshot is not None
    assert repo.abandon(started.snapshot, reason="run failed").outcome == "abandoned"
    assert repo.find_ref("last") == base and repo.find_ref("pending") is None
    retry = repo.begin()
    assert retry.outcome == "started" and retry.changes == started.changes
    # Same tree, different moment: a different snapshot id, same root tree.
    assert retry.snapshot != started.snapshot
    assert retry.snapshot is not None
    assert repo.read_snapshot(retry.snapshot).root == repo.read_snapshot(started.snapshot).root


def test_promote_and_abandon_are_idempotent_and_guarded(repo: Repository, raw: Path) -> None:
    repo.begin()
    edit(raw)
    sid = repo.begin().snapshot
    assert sid is not None
    assert repo.abandon("f" * 64).outcome == "not_pending"
    assert repo.promote("f" * 64).outcome == "not_pending"
    assert repo.find_ref("pending") == sid
    assert repo.promote(sid).outcome == "promoted"
    assert repo.promote(sid).outcome == "already_done"
    assert repo.abandon(sid).outcome == "already_done"
    assert repo.find_ref("last") == sid
    assert len(repo.log("last")) == 2


def test_bootstrap_all_treats_every_file_as_added(make_repo: MakeRepo) -> None:
    repo = make_repo(bootstrap="all")
    result = repo.begin()
    assert result.outcome == "started" and len(result.changes.added) == 5
    assert repo.find_ref("last") is None


def test_removed_file(repo: Repository, raw: Path) -> None:
    repo.begin()
    (raw / "links" / "analogy.txt").unlink()
    assert repo.begin().changes == ChangeSet(removed=("links/analogy.txt",))


def _spawned_pool() -> ProcessPoolExecutor:
    """Four spawned processes. A ``concurrent.futures`` pool, not a ``multiprocessing`` one:
    a worker that dies breaks it (``BrokenProcessPool``) instead of hanging the suite, as a
    ``multiprocessing.Pool`` worker lost while holding its task queue's lock once did."""
    return ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn"))


def _begin_in_process(args: tuple[str, str]) -> tuple[str, str | None]:
    root, store = args
    repo = Repository(load_config(root=root, store=store, cooldown_sec=0, env={}), lock_timeout=30)
    result = repo.begin()
    return result.outcome, result.snapshot


def test_two_processes_begin_at_once_one_wins(repo: Repository, raw: Path, tmp_path: Path) -> None:
    repo.begin()
    edit(raw)
    with _spawned_pool() as pool:
        results = list(
            pool.map(_begin_in_process, [(str(raw), str(tmp_path / "state"))] * 4, timeout=120)
        )
    outcomes = sorted(o for o, _ in results)
    assert outcomes.count("started") == 1
    assert outcomes.count("in_flight") == 3
    assert {s for _, s in results} == {repo.find_ref("pending")}


def _promote_in_process(args: tuple[str, str, str]) -> str:
    root, store, sid = args
    repo = Repository(load_config(root=root, store=store, cooldown_sec=0, env={}), lock_timeout=30)
    return repo.promote(sid).outcome


def test_two_processes_promote_at_once(repo: Repository, raw: Path, tmp_path: Path) -> None:
    repo.begin()
    edit(raw)
    sid = repo.begin().snapshot
    assert sid is not None
    with _spawned_pool() as pool:
        outcomes = list(
            pool.map(
                _promote_in_process, [(str(raw), str(tmp_path / "state"), sid)] * 4, timeout=120
            )
        )
    assert sorted(outcomes) == ["already_done"] * 3 + ["promoted"]
    assert repo.log("last")[0].reason == "promoted"
    assert len(repo.log("last")) == 2


# -- snapshots, revisions, reset ------------------------------------------------------------


def test_one_file_change_writes_only_the_changed_folders(
    make_repo: MakeRepo, raw: Path, tmp_path: Path
) -> None:
    for d in range(20):
        for f in range(20):
            write(raw / "bulk" / f"d{d:02d}" / f"f{f:02d}.csv", f"{d},{f}\n")
    repo = make_repo()
    repo.begin()
    objects = tmp_path / "state" / "objects"
    before = {p for p in objects.rglob("*") if p.is_file()}
    write(raw / "bulk" / "d07" / "f03.csv", "changed\n")
    repo.begin()
    new = {p for p in objects.rglob("*") if p.is_file()} - before
    # root tree, bulk/, bulk/d07/ and the snapshot object: nothing else.
    assert len(new) == 4
    assert sum(p.stat().st_size for p in new) < 16 * 1024


def test_revisions(repo: Repository, raw: Path) -> None:
    base = repo.begin().snapshot
    assert base is not None
    edit(raw)
    second = repo.begin().snapshot
    assert second is not None
    repo.promote(second)
    assert repo.resolve("last") == second
    assert repo.resolve("last@{0}") == second
    assert repo.resolve("last@{1}") == base
    assert repo.resolve(second) == second
    assert repo.resolve(second[:8]) == second
    assert repo.resolve(second[:8].upper()) == second
    with pytest.raises(UnknownRevisionError, match="only 2 reflog entries"):
        repo.resolve("last@{5}")
    with pytest.raises(UnknownRevisionError, match="unset at that point"):
        repo.resolve("pending@{0}")
    with pytest.raises(UnknownRevisionError):
        repo.resolve("nosuchref")
    with pytest.raises(UnknownRevisionError, match="no snapshot with that id"):
        repo.resolve("0" * 64)
    tree_id = repo.read_snapshot(second).root
    with pytest.raises(UnknownRevisionError):
        repo.resolve(tree_id)  # a tree is not a snapshot


def test_ambiguous_prefix(make_repo: MakeRepo) -> None:
    repo = make_repo(sync=False)  # some 300 objects, one by one: no fsync each
    sid = repo.begin().snapshot
    assert sid is not None
    template = repo.read_snapshot(sid)
    seen: dict[str, str] = {}
    created = 0
    while True:  # write snapshots until two share a 4-digit prefix (birthday: ~300 tries)
        created += 1
        oid = repo.objects.write_object(msgspec.structs.replace(template, created_ns=created))
        if oid[:4] in seen:
            break
        seen[oid[:4]] = oid
    with pytest.raises(AmbiguousRevisionError, match="ambiguous") as info:
        repo.resolve(oid[:4])
    assert set(info.value.candidates) == {oid, seen[oid[:4]]}
    assert repo.resolve(oid) == oid


def test_reset_moves_last_by_hand_and_refuses_unknown_revisions(
    repo: Repository, raw: Path
) -> None:
    base = repo.begin().snapshot
    edit(raw)
    sid = repo.begin().snapshot
    assert sid is not None and base is not None
    repo.promote(sid)
    old, new = repo.reset("last", "last@{1}", message="reprocess link templates")
    assert (old, new) == (sid, base)
    assert repo.log()[0].reason == "reset by hand: reprocess link templates"
    with pytest.raises(UnknownRevisionError):
        repo.reset("last", "deadbeef")
    assert repo.find_ref("last") == base
    assert repo.begin().changes == ChangeSet(modified=("link_templates.csv",))


def test_dangling_ref_is_a_clear_error(repo: Repository, tmp_path: Path) -> None:
    repo.begin()
    (tmp_path / "state" / "refs" / "last").write_text("e" * 64 + "\n")
    with pytest.raises(DanglingRefError, match="manifest reset last"):
        repo.status()


def test_store_that_is_a_file(make_repo: MakeRepo, tmp_path: Path) -> None:
    write(tmp_path / "notadir", "x")
    with pytest.raises(StoreError, match="not a directory"):
        make_repo(store=tmp_path / "notadir").begin()


def test_store_from_the_future(repo: Repository, tmp_path: Path) -> None:
    repo.begin()
    (tmp_path / "state" / "FORMAT").write_text("99\n")
    fresh = Repository(repo.config)
    with pytest.raises(FormatVersionError, match="upgrade manifest"):
        fresh.begin()


# -- gc and fsck ---------------------------------------------------------------------------


def test_gc_removes_only_unreachable_objects(repo: Repository, raw: Path, tmp_path: Path) -> None:
    repo.begin()
    edit(raw)
    orphan, _ = repo.snapshot(message="never referenced")
    assert repo.gc(grace_seconds=3600).removed == 0  # too young
    result = repo.gc(grace_seconds=0)
    assert result.removed >= 1
    with pytest.raises(UnknownRevisionError):
        repo.resolve(orphan)
    assert repo.fsck().problems == ()
    assert repo.status().changes == ChangeSet(modified=("link_templates.csv",))


def test_gc_keeps_what_reflogs_reference(repo: Repository, raw: Path) -> None:
    base = repo.begin().snapshot
    edit(raw)
    sid = repo.begin().snapshot
    assert sid is not None and base is not None
    repo.promote(sid)
    repo.gc(grace_seconds=0)
    assert repo.resolve("last@{1}") == base
    assert repo.diff("last@{1}", "last") == ChangeSet(modified=("link_templates.csv",))


def test_fsck_reports_corruption_missing_objects_and_locks(
    repo: Repository, tmp_path: Path
) -> None:
    sid = repo.begin().snapshot
    assert sid is not None
    assert repo.fsck().ok
    root = repo.read_snapshot(sid).root
    objects = tmp_path / "state" / "objects"
    tree_path = objects / root[:2] / root[2:]
    tree_path.write_bytes(b"garbage")
    (tmp_path / "state" / "refs" / "pending.lock").write_text("1 host\n")
    report = repo.fsck()
    assert not report.ok
    subjects = {p.subject for p in report.problems}
    assert f"object {root}" in subjects
    assert any(s.endswith("pending.lock") for s in subjects)
    tree_path.unlink()
    report = repo.fsck()
    assert any("missing, wanted by snapshot" in p.message for p in report.problems)


def test_log_is_newest_first_with_counts(repo: Repository, raw: Path) -> None:
    repo.begin()
    edit(raw)
    sid = repo.begin().snapshot
    assert sid is not None
    repo.promote(sid, reason="promoted after run abc")
    log = repo.log()
    assert [e.reason for e in log] == ["promoted after run abc", "baseline: first scan, 5 files"]
    assert log[0].counts is not None and log[0].counts.modified == 1
    assert log[0].previous == log[1].id
    assert log[0].time_ns >= log[1].time_ns
    assert len(repo.log(limit=1)) == 1
    assert time.time_ns() - log[0].time_ns < 60 * 10**9


def test_abandoned_pending_is_carried_into_the_next_begin(repo: Repository, raw: Path) -> None:
    """A change that was requested is never dropped: the file is restored after a failed
    run, so it no longer differs from last, yet the next begin requests it again."""
    assert repo.begin().outcome == "baseline"
    csv = raw / "link_templates.csv"
    good = csv.read_bytes()
    write(csv, good + b"broken,row\n")
    first = repo.begin()
    assert first.changes == ChangeSet(modified=("link_templates.csv",))
    write(csv, good)  # restored; the diff against last is empty now
    assert repo.status().changes == ChangeSet()
    assert first.snapshot is not None
    assert repo.abandon(first.snapshot, reason="superseded").outcome == "abandoned"
    assert repo.find_ref("unfinished") == first.snapshot
    second = repo.begin()
    assert second.outcome == "started"
    assert second.changes == ChangeSet(requeued=("link_templates.csv",))
    assert second.snapshot is not None
    assert repo.read_snapshot(second.snapshot).requested == ("link_templates.csv",)
    assert repo.find_ref("unfinished") is None
    # superseded again with a new edit elsewhere: the union of both requests
    write(raw / "concepts" / "descriptions" / "c1.txt", "A new tide.\n")
    repo.abandon(second.snapshot)
    third = repo.begin()
    assert third.changes == ChangeSet(
        modified=("concepts/descriptions/c1.txt",), requeued=("link_templates.csv",)
    )
    assert third.snapshot is not None
    repo.promote(third.snapshot, runs=("run-1", "run-2"))
    assert repo.log("last")[0].runs == ("run-1", "run-2")
    assert repo.begin().outcome == "unchanged"


def test_abandon_without_carry_drops_the_request(repo: Repository, raw: Path) -> None:
    repo.begin()
    write(raw / "link_templates.csv", "template_id\n")
    started = repo.begin()
    assert started.snapshot is not None
    repo.abandon(started.snapshot, carry=False)
    assert repo.find_ref("unfinished") is None
    assert repo.begin().changes == ChangeSet(modified=("link_templates.csv",))


def test_begin_records_labels(repo: Repository, raw: Path) -> None:
    repo.begin()
    write(raw / "link_templates.csv", "template_id\n")
    started = repo.begin(labels={"tick": "raw_schedule@t1", "asset_mode": "observe"})
    assert started.snapshot is not None
    snap = repo.read_snapshot(started.snapshot)
    assert snap.labels == (("asset_mode", "observe"), ("tick", "raw_schedule@t1"))
    assert snap.label("tick") == "raw_schedule@t1" and snap.label("nope") is None


def _snapshot_loop(raw: str, store: str, n: int) -> None:
    repo = Repository(load_config(root=raw, store=store, cooldown_sec=0, env={}), lock_timeout=30)
    for i in range(n):
        write(Path(raw) / f"p{os.getpid()}.csv", f"{i}\n")
        # losing the compare-and-swap leaves the snapshot unreferenced, and that is all
        with contextlib.suppress(RefConflictError):
            repo.snapshot(ref="last", message=f"{os.getpid()} {i}")


def test_concurrent_snapshots_record_the_value_they_replaced(repo: Repository, raw: Path) -> None:
    repo.snapshot(ref="last", message="start")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_snapshot_loop, args=(str(raw), repo.store.text, 15)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    moves = repo.log("last")
    assert len(moves) > 3
    for move in moves:
        assert move.id is not None
        assert repo.read_snapshot(move.id).parent == move.previous


@pytest.mark.parametrize(
    ("kwargs", "variable"),
    [
        ({"root": ""}, "--root"),
        ({"store": ""}, "--store"),
        ({"store": "SAME"}, "--store"),
        ({"store": "PARENT"}, "--store"),
    ],
)
def test_store_and_root_that_would_scan_themselves_are_refused(
    raw: Path, kwargs: dict[str, str], variable: str
) -> None:
    values = {
        k: str(raw) if v == "SAME" else str(raw.parent) if v == "PARENT" else v
        for k, v in kwargs.items()
    }
    with pytest.raises(ConfigError, match=re.escape(variable)):
        load_config(**{"root": str(raw), **values}, env={})  # type: ignore[arg-type]


def test_store_inside_the_root_is_skipped(raw: Path) -> None:
    repo = Repository(load_config(root=raw, store=raw / ".manifest", cooldown_sec=0, env={}))
    repo.begin()
    assert repo.status().files == 5


def test_a_root_whose_path_is_not_utf8(tmp_path: Path) -> None:
    root = os.fsdecode(os.fsencode(tmp_path) + b"/raw-\xff\xfe")
    write(Path(root) / "a.csv", "x\n")
    repo = Repository(load_config(root=root, store=tmp_path / "state", cooldown_sec=0, env={}))
    assert repo.begin().outcome == "baseline"
    write(Path(root) / "a.csv", "y\n")
    assert repo.status().changes == ChangeSet(modified=("a.csv",))
    sid, _ = repo.snapshot(ref="last")
    assert repo.read_snapshot(sid).data_root.endswith("raw-\\xff\\xfe")


def test_two_overlapping_cycles_drop_no_change(make_repo: MakeRepo, raw: Path) -> None:
    """Issue 22.10: while one cycle is between reading `unfinished` and setting `pending`,
    another begins, is abandoned, and its file is restored: the first cycle's pending
    carries the restored path, and `unfinished` is taken over in the same step."""
    one, two = make_repo(), make_repo()
    one.begin()  # the baseline
    path = raw / "link_templates.csv"
    good = path.read_text()
    write(path, "broken\n")
    write(raw / "other.csv", "unrelated\n")
    real = Repository._write_snapshot
    interleaved = []

    def between_read_and_set(self: Repository, *args: object, **kwargs: object) -> object:
        if self is one and not interleaved:
            interleaved.append(True)
            write(raw / "other.csv", "hidden from two\n")
            started = two.begin()  # the other cycle: requests the broken file...
            assert started.snapshot is not None
            two.abandon(started.snapshot)  # ...whose run failed; the file is restored
            write(path, good)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Repository, "_write_snapshot", between_read_and_set)
        started = one.begin()
    assert interleaved and started.outcome == "started"
    assert "link_templates.csv" in started.changes.paths  # carried: never dropped
    assert one.find_ref("unfinished") is None


def test_a_begin_whose_last_moved_during_its_scan_sets_no_stale_pending(
    make_repo: MakeRepo, raw: Path
) -> None:
    """Review of issue 22.10: another cycle promotes while this begin scans; its snapshot's
    diff base is then stale, so it sets nothing (retryable) and the next begin is exact."""
    from manifest.errors import RefConflictError

    one, two = make_repo(), make_repo()
    one.begin()
    write(raw / "x.csv", "v1\n")
    real = Repository._write_snapshot
    interleaved: list[bool] = []

    def full_cycle_meanwhile(self: Repository, *args: object, **kwargs: object) -> object:
        if self is one and not interleaved:
            interleaved.append(True)
            started = two.begin()
            assert started.snapshot is not None
            two.promote(started.snapshot)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Repository, "_write_snapshot", full_cycle_meanwhile)
        with pytest.raises(RefConflictError):
            one.begin()
    assert one.find_ref("pending") is None
    assert one.begin().outcome == "unchanged"  # x.csv was processed by the other cycle
