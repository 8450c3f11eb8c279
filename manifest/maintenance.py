"""Maintenance, apart from the verbs (as dulwich keeps gc apart from the repository): reflog
expiry, gc and fsck.

gc **fails closed**: it holds the store exclusively (no snapshot is half written, no ref
moves while it marks and sweeps), and anything it cannot read — a ref, a reflog line, an
object it must follow, a folder it must list — stops it with a ``StoreError`` before
anything is deleted. What cannot be proven unreachable stays.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from manifest.errors import (
    ConfigError,
    CorruptObjectError,
    ManifestError,
    ObjectNotFoundError,
    StoreError,
)
from manifest.fsutil import lock_age, lock_owner
from manifest.model import FORMAT_VERSION, KIND_TREE, ReflogEntry, Snapshot, Tree

if TYPE_CHECKING:
    from manifest.store import Store

DEFAULT_EXPIRE: Final = "90d"  # reflog lines older than this are dropped by `manifest gc`
TEMP_PREFIX: Final = ".tmp-"


class GcResult(msgspec.Struct, frozen=True):
    kept: int
    removed: int
    removed_bytes: int
    temp_files_removed: int
    reflog_lines_expired: int = 0


class FsckProblem(msgspec.Struct, frozen=True):
    severity: Literal["error", "warning"]
    subject: str
    message: str


class FsckReport(msgspec.Struct, frozen=True):
    objects: int
    snapshots: int
    refs: int
    problems: tuple[FsckProblem, ...]

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def _seconds(value: float, name: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(name, value, "a finite number of seconds >= 0")
    return float(value)


# -- reachability ------------------------------------------------------------------------


def collect_roots(store: Store) -> set[str]:
    """Every snapshot a ref or a reflog line names. Strict: raises on anything unreadable."""
    refs = store.refs
    roots = {v for _, v in refs.iter_refs(strict=True) if v is not None}
    for name in refs.iter_reflog_names(strict=True):
        for entry in refs.read_reflog(name, strict=True):
            roots.update(x for x in (entry.old, entry.new) if x is not None)
    return roots


def mark(store: Store, roots: set[str], missing: list[tuple[str, str]] | None = None) -> set[str]:
    """Snapshots in ``roots`` and every tree below them (parents are history, not followed).

    With ``missing`` (fsck), missing and corrupt objects are collected; without it (gc), a
    missing, corrupt or unreadable object raises: its children are unknown."""
    seen: set[str] = set()
    stack: list[tuple[str, str]] = [(r, "ref") for r in sorted(roots)]
    while stack:
        oid, wanted_by = stack.pop()
        if oid in seen:
            continue
        try:
            obj = store.objects.read_object(oid)
        except ObjectNotFoundError as exc:
            if missing is None:
                # what it references is unknown: deleting anything could delete what a
                # restored copy of it needs, so gc fails closed (as on a damaged ref)
                raise StoreError(
                    store.objects.where,
                    f"gc stopped: object {oid} (wanted by {wanted_by}) is missing, so what "
                    "it references is unknown and nothing was deleted; restore it from a "
                    "backup, or run `manifest fsck` and move the refs that use it "
                    "(`manifest reset`)",
                ) from exc
            missing.append((oid, wanted_by))
            continue
        except StoreError:
            if missing is None:
                raise
            missing.append((oid, f"{wanted_by}, and unreadable"))
            continue
        except CorruptObjectError as exc:
            if missing is None:
                raise StoreError(
                    store.objects.where,
                    f"gc stopped: object {oid} (wanted by {wanted_by}) is corrupt, so what it "
                    f"references is unknown ({exc.detail}); run `manifest fsck`, then "
                    "`manifest reset` the refs that use it",
                ) from exc
            seen.add(oid)
            continue
        seen.add(oid)
        if isinstance(obj, Snapshot):
            stack.append((obj.root, f"snapshot {oid}"))
        elif isinstance(obj, Tree):
            stack.extend(
                (e.digest.hex(), f"tree {oid}") for e in obj.entries if e.kind == KIND_TREE
            )
    return seen


# -- expiry ------------------------------------------------------------------------------


def expire_reflogs(store: Store, expire_seconds: float, now_ns: int | None = None) -> int:
    """Drop reflog lines older than ``expire_seconds``. The newest line of every reflog and
    every line that set a ref's current value are kept. Returns the lines dropped."""
    refs = store.refs
    cutoff = (now_ns if now_ns is not None else time.time_ns()) - int(expire_seconds * 1e9)
    dropped = 0
    for name in list(refs.iter_reflog_names(strict=True)):
        with refs.transaction(name) as txn:
            current = txn.value if refs.has_ref(name) else None
            entries = txn.read_reflog(strict=True)
            keep = [
                e
                for i, e in enumerate(entries)
                if e.time_ns >= cutoff
                or i == len(entries) - 1
                or (current is not None and e.new == current)
            ]
            if len(keep) < len(entries):
                txn.rewrite_reflog(keep)
                dropped += len(entries) - len(keep)
    return dropped


# -- gc ----------------------------------------------------------------------------------


def iter_temp_files(folder: Path) -> Iterator[Path]:
    """Leftovers of interrupted writes anywhere in the store (``.tmp-*``)."""
    for dirpath, _dirnames, filenames in os.walk(folder):
        for filename in filenames:
            if filename.startswith(TEMP_PREFIX):
                yield Path(dirpath, filename)


BUCKET_GRACE_FLOOR = 900.0  # seconds; see gc()


def gc(
    store: Store,
    *,
    grace_seconds: float,
    expire_seconds: float | None = None,
    alone: bool = False,
) -> GcResult:
    """Expire old reflog lines (if ``expire_seconds``), then delete objects no ref or reflog
    line reaches and older than ``grace_seconds``, and temp files older than that.

    Holds the store exclusively: writers hold it shared from their first object to the ref
    that protects it, so even a zero grace cannot delete something about to be referenced.
    """
    grace = _seconds(grace_seconds, "--grace")
    expire = _seconds(expire_seconds, "--expire") if expire_seconds is not None else None
    if not store.caps.locks_reach_all_writers and grace < BUCKET_GRACE_FLOOR and not alone:
        from manifest.errors import ConfigError

        raise ConfigError(
            "--grace",
            grace,
            f"at least {BUCKET_GRACE_FLOOR:g} seconds on a bucket store: no lock reaches "
            "writers on other hosts, so only the grace period (writers freshen every object "
            "they reuse) protects what a snapshot elsewhere is about to reference; a shorter "
            "grace only with --alone, when no other host writes to this store",
        )
    store.check_format(create=False)
    if not store.exists():
        return GcResult(0, 0, 0, 0)
    lock = store.lock(exclusive=True)
    with lock:
        expired = expire_reflogs(store, expire) if expire is not None else 0
        try:
            roots = collect_roots(store)
            reachable = mark(store, roots)
        except StoreError as exc:
            if exc.problem.startswith("gc stopped"):
                raise
            raise StoreError(
                exc.path, f"{exc.problem}; gc stopped and deleted nothing (fix or remove it)"
            ) from exc
        cutoff = time.time() - grace
        kept = removed = removed_bytes = temps = 0
        doomed = []
        for oid, mtime, size in list(store.objects.iter_infos(strict=True)):
            if oid in reachable or mtime > cutoff:
                kept += 1
            else:
                doomed.append((oid, size))
        # A second look at the refs right before deleting: a writer that no lock reaches (on
        # another host) may have pointed a ref at an old object since the first (a `reset
        # --create` to an old snapshot); what the refs reach now is never deleted.
        # And again at least every second while deleting (a bucket deletes one request at
        # a time): the window for a ref moved by a writer no lock reaches stays that short.
        looked = 0.0
        for oid, size in doomed:
            if time.monotonic() - looked >= 1.0:
                again = collect_roots(store) - roots
                if again:
                    reachable |= mark(store, again)
                    roots |= again
                looked = time.monotonic()
            if oid in reachable:
                kept += 1
                continue
            store.objects.delete(oid)
            removed += 1
            removed_bytes += size
        for tmp in iter_temp_files(store.cache_dir):
            age = lock_age(tmp)
            if age is not None and age >= grace:
                tmp.unlink(missing_ok=True)
                temps += 1
    return GcResult(kept, removed, removed_bytes, temps, expired)


# -- fsck --------------------------------------------------------------------------------


def fsck(store: Store) -> FsckReport:
    """Verify every object, ref and reflog; list what is wrong (never stops at the first)."""
    store.check_format(create=False)
    problems: list[FsckProblem] = []
    snapshots = 0
    count = 0
    try:
        ids = list(store.objects.iter_ids(problems=problems_sink(problems)))
    except StoreError as exc:
        problems.append(FsckProblem("error", exc.path, f"{exc.problem}; no object was checked"))
        ids = []
    for oid in ids:
        count += 1
        try:
            obj = store.objects.read_object(oid)
        except CorruptObjectError as exc:
            problems.append(
                FsckProblem(
                    "error",
                    f"object {oid}",
                    f"corrupt: {exc.detail}; move the refs whose snapshots use it to an earlier "
                    "snapshot (`manifest log <ref>`, `manifest reset <ref> <rev>`), then "
                    "`manifest gc` removes it",
                )
            )
            continue
        except ManifestError as exc:
            problems.append(FsckProblem("error", f"object {oid}", str(exc)))
            continue
        if isinstance(obj, Snapshot):
            snapshots += 1
            if obj.format > FORMAT_VERSION:
                problems.append(
                    FsckProblem("error", f"snapshot {oid}", f"format {obj.format} is too new")
                )
        elif isinstance(obj, Tree):
            for detail in tree_problems(obj):
                problems.append(FsckProblem("error", f"tree {oid}", detail))
    missing: list[tuple[str, str]] = []
    try:
        roots = collect_roots(store)
    except StoreError as exc:
        problems.append(FsckProblem("error", exc.path, exc.problem))
        roots = {v for _, v in store.refs.iter_refs() if v is not None}
    mark(store, roots, missing)
    for oid, wanted_by in missing:
        problems.append(FsckProblem("error", f"object {oid}", f"missing, wanted by {wanted_by}"))
    refs = 0
    for name, value in store.refs.iter_refs():
        refs += 1
        if value is None:
            problems.append(FsckProblem("error", f"ref {name}", "does not hold a snapshot id"))
            continue
        try:
            found = store.objects.find_snapshot(value) is not None
            detail = "which is not a stored snapshot"
        except ManifestError as exc:
            found, detail = False, f"which cannot be read ({exc})"
        if not found:
            problems.append(FsckProblem("error", f"ref {name}", f"points at {value}, {detail}"))
        if _reflog_or_none(store, name) == []:
            problems.append(
                FsckProblem("warning", f"ref {name}", f"holds {value[:12]} with no reflog line")
            )
    for name in store.refs.iter_reflog_names():
        for detail in store.refs.iter_reflog_problems(name):
            problems.append(FsckProblem("warning", f"reflog {name}", detail))
        for detail in _moves_that_never_happened(store, name):
            problems.append(FsckProblem("warning", f"reflog {name}", detail))
    for lock in iter_locks(store):
        owner = lock_owner(lock)
        age = lock_age(lock)
        if owner is not None and owner.gone:
            problems.append(
                FsckProblem(
                    "warning",
                    str(lock),
                    f"left by a crash: process {owner.pid} on {owner.host} is gone; the next "
                    "writer takes it over (nothing is lost)",
                )
            )
            continue
        if owner is not None and owner.stale:
            problems.append(
                FsckProblem(
                    "error",
                    str(lock),
                    f"stale lock: process {owner.pid} on {owner.host} is gone but still "
                    f"holds it, or wrote it without the kernel lock; remove it: rm '{lock}'",
                )
            )
            continue
        problems.append(
            FsckProblem(
                "warning",
                str(lock),
                f"lock file present ({age:.0f}s old); if no manifest process or "
                f"Dagster tick is running, remove it: rm '{lock}'"
                if age is not None
                else "lock file present",
            )
        )
    for tmp in iter_temp_files(store.cache_dir) if store.cache_dir.is_dir() else ():
        problems.append(
            FsckProblem(
                "warning", str(tmp), "leftover of an interrupted write; `manifest gc` removes it"
            )
        )
    return FsckReport(count, snapshots, refs, tuple(problems))


def iter_locks(store: Store) -> Iterator[Path]:
    """Every ``.lock`` file: the refs' and the stat cache's."""
    yield from store.refs.iter_lock_files()
    index_lock = store.cache_dir / "index.lock"
    if index_lock.exists():
        yield index_lock


def stale_locks(store: Store) -> list[Path]:
    """Locks whose process is gone (on this host): they never clear by themselves."""
    return [lock for lock in iter_locks(store) if (o := lock_owner(lock)) is not None and o.stale]


def _moves_that_never_happened(store: Store, name: str) -> Iterator[str]:
    """Lines whose ``new`` is not what the ref held next: written, then the ref update
    failed or was interrupted (the line is written first, so a ref never moves unlogged)."""
    entries = _reflog_or_none(store, name)
    if not entries:
        return
    try:
        current = store.refs.find_ref(name)
    except ManifestError:
        return
    for number, entry in enumerate(entries, 1):
        following = entries[number].old if number < len(entries) else current
        if entry.new != following:
            target = entry.new[:12] if entry.new else "unset"
            yield (
                f"line {number}: the move to {target} never happened (the ref update failed "
                "or was interrupted); readers skip it"
            )


def _reflog_or_none(store: Store, name: str) -> list[ReflogEntry] | None:
    try:
        return list(store.refs.read_reflog(name))
    except ManifestError:
        return None


def problems_sink(problems: list[FsckProblem]):  # type: ignore[no-untyped-def]
    def report(path: str, message: str) -> None:
        problems.append(FsckProblem("error", path, message))

    return report


def tree_problems(tree: Tree) -> Iterator[str]:
    """The invariants the code relies on: sorted unique names, valid names, known kinds,
    32-byte digests for trees and symlinks (and content-mode files)."""
    previous: bytes | None = None
    for entry in tree.entries:
        name = entry.name
        if not name or b"/" in name or name in (b".", b"..") or b"\0" in name:
            yield f"invalid entry name {name!r}"
        if previous is not None and name <= previous:
            yield f"entries not sorted or not unique at {name!r}"
        previous = name
        if entry.kind not in (0, 1, 2):
            yield f"unknown kind {entry.kind} for {name!r}"
        elif entry.kind != 0 and len(entry.digest) != 32:
            yield f"{name!r}: digest of {len(entry.digest)} bytes, expected 32"
        elif entry.kind == 0 and len(entry.digest) not in (0, 32):
            yield f"{name!r}: digest of {len(entry.digest)} bytes, expected 0 or 32"
        if entry.size < 0:
            yield f"{name!r}: negative size"
