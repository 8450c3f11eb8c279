"""The verbs both faces call: status, snapshot, diff, log, show, reset, begin, promote,
abandon, gc, fsck. All logic the CLI and the Dagster glue share lives here."""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar

import msgspec

from manifest import maintenance
from manifest.config import Config
from manifest.diff import EntryPair, diff_trees, iter_files, tree_reader
from manifest.errors import (
    AmbiguousRevisionError,
    ConfigError,
    DanglingRefError,
    InvalidRefNameError,
    ManifestError,
    ProtectedRefError,
    RefConflictError,
    UnknownRefError,
    UnknownRevisionError,
    UnsetRefError,
)
from manifest.maintenance import FsckProblem, FsckReport, GcResult
from manifest.model import (
    KIND_TREE,
    Change,
    ChangeSet,
    Counts,
    Failure,
    Fingerprint,
    Snapshot,
    SnapshotId,
    Tree,
    TreeEntry,
    path_to_text,
    text_to_path,
)
from manifest.root import Root, open_root
from manifest.scanresult import BaseTrees, ScanOptions, ScanProblem, ScanResult
from manifest.store import Store, open_store
from manifest.store.objects import is_id_prefix, is_object_id
from manifest.store.refs import REF_LAST, REF_PENDING, REF_UNFINISHED, validate_ref_name
from manifest.text import escape_path, escape_text

GC_GRACE_SECONDS: Final = 3600.0
FAILURE_FILE: Final = "pending.failed"
_REFLOG_REV_RE = re.compile(r"(?P<ref>.+)@\{(?P<n>\d+)\}")
_ANCESTRY_RE = re.compile(r"(?P<base>.+?)(?P<steps>(?:\^|~\d*)+)")


class Status(msgspec.Struct, frozen=True):
    root: str
    store: str
    mode: str
    last: str | None
    pending: str | None
    changes: ChangeSet
    unstable: tuple[str, ...]
    problems: tuple[ScanProblem, ...]
    skipped: tuple[str, ...]
    files: int
    hashed: int
    last_moved_ns: int | None = None
    pending_moved_ns: int | None = None
    stale_locks: tuple[str, ...] = ()
    details: tuple[Change, ...] = ()
    # set when the orchestrator gave up on ``pending`` (its runs kept failing)
    pending_failure: Failure | None = None
    # why ``pending`` was set (its reflog line): which tick took it, or that it was previewed
    pending_reason: str | None = None
    # ``scan``: the tree was walked; ``journal``: the watcher vouched nothing changed
    scan_source: str = "scan"
    scan_reason: str = ""


Outcome = Literal[
    "started",
    "unchanged",
    "in_flight",
    "baseline",  # begin
    "promoted",
    "abandoned",
    "already_done",
    "not_pending",  # promote / abandon
]


class CycleResult(msgspec.Struct, frozen=True):
    """The answer of ``begin``/``promote``/``abandon``.

    * ``started``: a new snapshot is now ``pending``; ``changes`` is what to process.
    * ``unchanged``: nothing to do (``unstable`` may list files still settling).
    * ``in_flight``: ``pending`` was already set; ``snapshot`` is it, ``changes`` its diff.
    * ``baseline``: first run; ``last`` now records the tree, nothing to process.
    * ``promoted``/``abandoned``: done now. ``already_done``: an earlier call did it.
    * ``not_pending``: ``pending`` holds another snapshot; nothing was changed.
    """

    outcome: Outcome
    snapshot: str | None
    last: str | None
    changes: ChangeSet = ChangeSet()
    unstable: tuple[str, ...] = ()
    problems: tuple[ScanProblem, ...] = ()
    message: str = ""


class LogEntry(msgspec.Struct, frozen=True):
    id: str | None
    previous: str | None
    time_ns: int
    reason: str
    counts: Counts | None
    runs: tuple[str, ...] = ()
    parent: str | None = None  # the snapshot's own parent (None if unknown or the first)


_F = TypeVar("_F", bound=Callable[..., Any])


def _writer(method: _F) -> _F:
    """Run a verb that writes objects or moves refs while holding the store shared."""

    @functools.wraps(method)
    def wrapper(self: Repository, *args: Any, **kwargs: Any) -> Any:
        with self._writing():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _describe(changes: ChangeSet) -> str:
    text = (
        f"{len(changes.added)} added, {len(changes.modified)} modified, "
        f"{len(changes.removed)} removed"
    )
    if changes.requeued:
        text += f", {len(changes.requeued)} requeued"
    return text


class Repository:
    """A data root and the state store that records its snapshots.

    ``Repository(config)`` builds its parts from the settings (``open_store``,
    ``open_root``); ``Repository(store, root, settings)`` is given them."""

    def __init__(
        self,
        config: Config | Store,
        root: Root | None = None,
        settings: Config | None = None,
        *,
        sync: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        if isinstance(config, Config):
            settings = config
            timeout = config.lock_timeout_sec if lock_timeout is None else lock_timeout
            store = open_store(config.store_location, sync=sync, lock_timeout=timeout)
            root = open_root(config.root_location, config, store)
        else:
            store = config
            if root is None or settings is None:
                raise TypeError("Repository(store, root, settings): give all three")
        self.config = settings
        self.store = store
        self.root = root
        self.objects = store.objects
        self.refs = store.refs
        self.files = store.files
        self.sync = store.sync
        self._renames = settings.mode == "content_hash"  # renames are content-mode only
        self._settings_recorded = False

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the store shared while writing objects and moving refs: gc (exclusive)
        then never deletes an object between its write and the ref that protects it."""
        self.store.check_format(create=True)
        self._record_settings()
        with self.store.lock(exclusive=False):
            yield

    def _record_settings(self, *, force: bool = False) -> None:
        """The store describes itself: its first writer records the root, mode and filters
        in ``config.toml`` (read back by every later reader, see ``load_config``). A store
        made before stores recorded their settings gets them from a writer that was given
        its root (the Dagster glue always is), never from a default root."""
        if self._settings_recorded and not force:
            return
        from manifest.config import CONFIG_FILE, settings_of, store_file_text

        if force or (
            not self.config.recorded
            and (self.store.created or self.config.root_source != "default")
        ):
            data = store_file_text(settings_of(self.config))
            if force:
                self.files.write(CONFIG_FILE, data)
            elif not self.files.create(CONFIG_FILE, data):
                self._check_recorded_settings()
        self._settings_recorded = True

    def _check_recorded_settings(self) -> None:
        """Another first writer recorded the settings at the same moment: they must be
        ours (the same check ``load_config`` makes)."""
        from manifest.config import load_config

        c = self.config
        load_config(
            root=c.root_text,
            store=c.store_text,
            mode=c.mode,
            include=c.include,
            exclude=c.exclude,
            env={},
            origin="this process's",
        )

    def init(self, *, force: bool = False) -> None:
        """Create the store (if needed) and record its settings. An initialised store is
        refused unless ``force``, which records these settings instead of its own."""
        from manifest.config import CONFIG_FILE

        if not force and self.files.read(CONFIG_FILE) is not None:
            raise ConfigError(
                "init",
                self.config.store_text,
                f"a store not yet initialised (it has {self.files.where(CONFIG_FILE)}; "
                "pass --force to record new settings)",
            )
        self.root.check()
        self.store.check_format(create=True)
        self.store.make_cache_dir()
        self._record_settings(force=True)

    def _check_format(self, *, create: bool) -> None:
        self.store.check_format(create=create)

    def exists(self) -> bool:
        """The store has been created (its FORMAT marker is there)."""
        return self.store.exists()

    # -- reading ------------------------------------------------------------------------

    def find_ref(self, name: str) -> str | None:
        self._check_format(create=False)
        return self.refs.find_ref(name)

    def read_snapshot(self, snapshot_id: str) -> Snapshot:
        return self.objects.read_snapshot(snapshot_id)

    def _ref_snapshot(self, name: str) -> str | None:
        """The ref's value, checked to name a stored snapshot."""
        value = self.find_ref(name)
        if value is not None and self.objects.find_snapshot(value) is None:
            raise DanglingRefError(name, value, "which is not a snapshot in the store")
        return value

    def resolve(self, revision: str) -> SnapshotId:
        """A full id, a unique id prefix (4+ hex), a ref name, ``REF@{n}``, any of them
        followed by ``^`` (the parent) or ``~N`` (the N-th parent), repeatable."""
        self._check_format(create=False)
        rev = revision.strip()
        ancestry = _ANCESTRY_RE.fullmatch(rev)
        if ancestry:
            sid = self.resolve(ancestry["base"])
            for step in re.findall(r"\^|~\d*", ancestry["steps"]):
                count = 1 if step in ("^", "~") else _count(revision, step[1:])
                for _ in range(count):
                    parent = self.read_snapshot(sid).parent
                    if parent is None:
                        raise UnknownRevisionError(
                            revision, f"snapshot {sid[:12]} has no parent (it is the first)"
                        )
                    if self.objects.find_snapshot(parent) is None:
                        raise UnknownRevisionError(
                            revision, f"parent {parent[:12]} is no longer stored (gc)"
                        )
                    sid = SnapshotId(parent)
            return sid
        match = _REFLOG_REV_RE.fullmatch(rev)
        if match:
            return self._resolve_reflog(rev, match["ref"], _count(revision, match["n"]))
        try:
            value = self.refs.find_ref(validate_ref_name(rev))
        except InvalidRefNameError:
            value = None
        if value is not None:
            if self.objects.find_snapshot(value) is None:
                raise DanglingRefError(rev, value, "which is not a snapshot in the store")
            return SnapshotId(value)
        if not is_id_prefix(rev.lower()) and self._is_known_ref(rev):
            raise UnsetRefError(rev)
        lowered = rev.lower()
        if is_object_id(lowered):
            if self.objects.find_snapshot(lowered) is None:
                raise UnknownRevisionError(revision, "no snapshot with that id")
            return SnapshotId(lowered)
        if is_id_prefix(lowered):
            candidates = [
                oid
                for oid in self.objects.iter_ids(lowered)
                if self.objects.find_snapshot(oid) is not None
            ]
            if len(candidates) == 1:
                return SnapshotId(candidates[0])
            if len(candidates) > 1:
                raise AmbiguousRevisionError(revision, candidates)
        raise UnknownRevisionError(revision)

    def _is_known_ref(self, name: str) -> bool:
        if name in (REF_LAST, REF_PENDING):
            return True
        try:
            return self.refs.has_log(name)
        except InvalidRefNameError:
            return False

    def _resolve_reflog(self, revision: str, ref: str, n: int) -> SnapshotId:
        validate_ref_name(ref)
        values = [e.new for e in reversed(self.refs.read_moves(ref))]
        if not values:
            raise UnknownRevisionError(revision, f"ref {ref} has no reflog")
        if n >= len(values):
            raise UnknownRevisionError(revision, f"ref {ref} has only {len(values)} reflog entries")
        value = values[n]
        if value is None:
            raise UnknownRevisionError(revision, f"{ref} was unset at that point")
        if self.objects.find_snapshot(value) is None:
            raise UnknownRevisionError(revision, f"snapshot {value[:12]} is no longer stored")
        return SnapshotId(value)

    def iter_files(self, snapshot_id: str) -> Iterator[tuple[str, TreeEntry]]:
        """Every file of a snapshot as ``(path, entry)``, sorted by path bytes."""
        snap = self.read_snapshot(snapshot_id)
        read = tree_reader(self.objects)
        for path, entry in iter_files(read, snap.root):
            yield path_to_text(path), entry

    def find_file(self, snapshot_id: str, path: str) -> TreeEntry | None:
        """The entry of one file in a snapshot, or None."""
        return _find_entry(self.objects.read_tree, self.read_snapshot(snapshot_id).root, path)

    # -- scanning -----------------------------------------------------------------------

    def scan(
        self,
        *,
        base: str | None,
        rehash_all: bool = False,
        on_hash: Callable[[int], None] | None = None,
        save_cache: bool = True,
        on_walk: Callable[[int, int], None] | None = None,
        consume: bool = False,
    ) -> ScanResult:
        """Scan the data root; unstable and unreadable files keep their ``base`` entry.
        ``consume``: the caller records the result and calls :func:`settle` on it."""
        base_snap = self.read_snapshot(base) if base else None
        return self.root.scan(
            BaseTrees(self.objects, base_snap.root if base_snap is not None else None),
            ScanOptions(
                expected_files=base_snap.counts.files if base_snap is not None else None,
                rehash_all=rehash_all,
                on_hash=on_hash,
                on_walk=on_walk,
                save_cache=save_cache,
                consume=consume,
            ),
        )

    def _diff_scan(
        self,
        base: str | None,
        result: ScanResult,
        entries: dict[str, EntryPair] | None = None,
    ) -> ChangeSet:
        old_root = self.read_snapshot(base).root if base else None
        read = tree_reader(self.objects, result.trees)
        return diff_trees(read, old_root, result.root_id, renames=self._renames, entries=entries)

    def warm(self) -> Status | None:
        """Import and read now what a status needs first, writing nothing: the modules a
        scan imports (``Root.warm``), the format marker, the refs, their reflogs, the locks
        and a recorded failure, then the status of a quiet tree when the root can tell
        without walking (:meth:`rehearse_status`, returned). A long-lived process that forks
        its commands (the watcher's command server) calls this once, and again in each child
        it forks ahead of a command: a forked child shares its parent's pages until it
        writes them, and a page touched before the command came is one the command does not
        wait for."""
        from manifest import diff  # noqa: F401

        self.root.warm()
        self._check_format(create=False)
        last = self._ref_snapshot(REF_LAST)
        pending = self.find_ref(REF_PENDING)
        self._moved_ns(REF_LAST)
        maintenance.stale_locks(self.store)
        self.find_failure()
        return self.rehearse_status(last, pending)

    def rehearse_status(self, last: str | None, pending: str | None) -> Status | None:
        """The status a quiet tree would give, when the root can tell without walking or
        asking anyone (``Root.rehearse``: a recorded clean scan of ``last``'s tree), writing
        nothing; None otherwise. Part of :meth:`warm`: what a status writes in memory, it
        writes now."""
        base_snap = self.read_snapshot(last) if last else None
        base = BaseTrees(self.objects, base_snap.root if base_snap is not None else None)
        result = self.root.rehearse(base)
        return self._status_of(last, pending, last, result) if result is not None else None

    def status(
        self,
        *,
        against: str | None = None,
        on_hash: Callable[[int], None] | None = None,
        details: bool = False,
        on_walk: Callable[[int, int], None] | None = None,
    ) -> Status:
        """The working tree against ``against`` (default: ``last``); with ``details``, each
        change with its old and new fingerprint (``Status.details``)."""
        self._check_format(create=False)
        last = self._ref_snapshot(REF_LAST)
        pending = self.find_ref(REF_PENDING)
        base = self.resolve(against) if against is not None else last
        result = self.scan(base=base, on_hash=on_hash, on_walk=on_walk)
        return self._status_of(last, pending, base, result, against=against, details=details)

    def _status_of(
        self,
        last: str | None,
        pending: str | None,
        base: str | None,
        result: ScanResult,
        *,
        against: str | None = None,
        details: bool = False,
    ) -> Status:
        pairs: dict[str, EntryPair] | None = {} if details else None
        changes = self._diff_scan(base, result, pairs)
        unfinished = self._ref_snapshot(REF_UNFINISHED) if against is None else None
        if unfinished is not None and pending is None:
            # what the next tick processes: the paths a superseded pending carries too
            changes, _ = self._carry(changes, unfinished, last, result)
        return Status(
            root=self.config.root_text,
            store=self.config.store_text,
            mode=self.config.mode,
            last=last,
            pending=pending,
            changes=changes,
            unstable=tuple(result.unstable),
            problems=tuple(result.problems),
            skipped=tuple(result.skipped),
            files=result.files,
            hashed=result.hashed,
            last_moved_ns=self._moved_ns(REF_LAST),
            pending_moved_ns=self._moved_ns(REF_PENDING),
            stale_locks=tuple(str(p) for p in maintenance.stale_locks(self.store)),
            details=_details(changes, pairs) if pairs is not None else (),
            pending_failure=self.find_failure(),
            pending_reason=self._moved_reason(REF_PENDING) if pending else None,
            scan_source=result.source,
            scan_reason=result.reason,
        )

    def _moved_reason(self, ref: str) -> str | None:
        log = self.refs.read_moves(ref)
        return log[-1].reason if log else None

    def _moved_ns(self, ref: str) -> int | None:
        log = self.refs.read_moves(ref)
        return log[-1].time_ns if log else None

    # -- writing ------------------------------------------------------------------------

    def _write_snapshot(
        self,
        result: ScanResult,
        parent: str | None,
        changes: ChangeSet,
        message: str,
        *,
        requested: tuple[str, ...] = (),
        labels: tuple[tuple[str, str], ...] = (),
        done: tuple[str, ...] = (),
        done_own: tuple[str, ...] = (),
    ) -> SnapshotId:
        self._check_format(create=True)
        self.objects.write_many(result.trees)
        snap = Snapshot(
            root=result.root_id,
            parent=parent,
            created_ns=time.time_ns(),
            mode=self.config.mode,
            data_root=self.root.describe(),
            counts=Counts(
                files=result.files,
                bytes=result.bytes,
                added=len(changes.added),
                modified=len(changes.modified),
                removed=len(changes.removed),
                requeued=len(changes.requeued),
            ),
            message=escape_text(message),  # as reflog reasons: any bytes, one printable line
            requested=requested,
            labels=labels,
            done=done,
            done_own=done_own,
        )
        return SnapshotId(self.objects.write_object(snap))

    @_writer
    def snapshot(
        self,
        *,
        message: str = "",
        ref: str | None = None,
        on_hash: Callable[[int], None] | None = None,
        on_walk: Callable[[int, int], None] | None = None,
        on_scan: Callable[[ScanResult], None] | None = None,
    ) -> tuple[SnapshotId, ChangeSet]:
        """Scan and store a snapshot and, with ``ref``, move ``ref`` to it.

        The parent (and diff base) is ``ref``'s value (``last`` without a ref), and the ref
        moves by compare-and-swap against exactly that value: under concurrency a
        snapshot's parent is always the value it replaced (else ``RefConflictError``)."""
        self._check_format(create=True)
        if ref is not None:
            validate_ref_name(ref)
        parent = self._ref_snapshot(ref if ref is not None else REF_LAST)
        result = self.scan(base=parent, on_hash=on_hash, on_walk=on_walk, consume=True)
        durable = False
        try:
            if on_scan is not None:
                on_scan(result)  # problems and settling paths, for the caller to report
            changes = self._diff_scan(parent, result)
            snap_id = self._write_snapshot(result, parent, changes, message)
            if ref is not None:
                self.refs.update_ref(
                    ref,
                    snap_id,
                    expected=parent,
                    reason=f"snapshot: {message or _describe(changes)}",
                )
            durable = True
        finally:
            settle(result, durable)
        return snap_id, changes

    @_writer
    def reset(
        self, ref: str, revision: str, *, message: str = "", create: bool = False
    ) -> tuple[str | None, str]:
        """Move ``ref`` to ``revision`` by hand (recorded in the reflog). Returns (old, new).
        A ref that does not exist is refused unless ``create`` (a typo never makes one)."""
        validate_ref_name(ref)
        if not create:
            self.require_ref(ref, hint="; pass --create to make a new ref")
        target = self.resolve(revision)
        reason = f"reset by hand: {message}" if message else f"reset by hand to {revision}"
        old = self.refs.update_ref(ref, target, reason=reason)
        return old, target

    def processed_by(self, revision: str) -> tuple[str, ...]:
        """The paths processing ``revision`` covered: its diff against its parent (the
        ``last`` it was taken against) and the paths it carried over (requeued)."""
        sid = self.resolve(revision)
        snap = self.read_snapshot(sid)
        return tuple(sorted({*self.diff_snapshots(snap.parent, sid).paths, *snap.requested}))

    @_writer
    def requeue(
        self, paths: tuple[str, ...], *, message: str = "", check: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        """Have the next ``begin`` process ``paths`` again although they do not differ from
        ``last`` (e.g. what a promotion of restored files processed, where rolling ``last``
        back changes nothing). Kept in ``unfinished`` with what it already carries. Refused
        while ``pending`` is in flight (checked under its lock, so no tick begins meanwhile),
        and for a path of ``check`` that is not a file in ``last``. Returns every path now
        carried."""
        self._check_format(create=True)
        if not paths:
            raise ConfigError("requeue", "", "one or more paths, or --of REV")
        last = self._ref_snapshot(REF_LAST)
        if last is None:
            raise UnsetRefError(REF_LAST)
        unknown = [p for p in check if self.find_file(last, p) is None]
        if unknown:
            raise ConfigError(
                "requeue",
                ", ".join(escape_path(p) for p in unknown),
                "paths of files in last, relative to the root, as `manifest show last` lists them",
            )
        with self.refs.transaction(REF_PENDING) as pending_txn:
            pending = pending_txn.value
            if pending is not None:
                raise ConfigError(
                    "requeue",
                    " ".join(paths),
                    f"no pending run (pending {pending[:12]} is in flight; requeue once it "
                    "is promoted, or after `manifest reset --delete --force pending`)",
                )
            with self.refs.transaction(REF_UNFINISHED) as txn:
                carried = set(paths)
                if txn.value is not None:
                    carried |= set(self._carried_paths(txn.value, last))
                copy = msgspec.structs.replace(
                    self.read_snapshot(last),
                    parent=last,
                    created_ns=time.time_ns(),
                    message=message or "requeued by hand",
                    requested=tuple(sorted(carried)),
                    done=(),
                    done_own=(),
                    labels=(),
                )
                sid = self.objects.write_object(copy)
                txn.set(
                    sid, reason=f"requeued by hand: {message}" if message else "requeued by hand"
                )
        return tuple(sorted(carried))

    @_writer
    def delete_ref(self, ref: str, *, message: str = "", force: bool = False) -> str | None:
        """Unset ``ref``; ``last`` and ``pending`` only with ``force``."""
        validate_ref_name(ref)
        if ref in (REF_LAST, REF_PENDING) and not force:
            raise ProtectedRefError(ref)
        self.require_ref(ref)
        reason = f"deleted by hand: {message}" if message else "deleted by hand"
        return self.refs.update_ref(ref, None, reason=reason)

    def ref_names(self) -> list[str]:
        """Every ref that exists or has a reflog (ever existed)."""
        names = {name for name, _ in self.refs.iter_refs()}
        names.update(self.refs.iter_reflog_names())
        return sorted(names)

    def require_ref(self, ref: str, hint: str = "") -> None:
        """Raise ``UnknownRefError`` (with the closest names) unless ``ref`` ever existed.
        ``last`` and ``pending`` always exist (perhaps unset)."""
        if ref in (REF_LAST, REF_PENDING):
            return
        if self.refs.has_ref(ref) or self.refs.has_log(ref):
            return
        import difflib  # only on this error path

        known = sorted({*self.ref_names(), REF_LAST, REF_PENDING})
        raise UnknownRefError(ref, difflib.get_close_matches(ref, known, n=2, cutoff=0.5), hint)

    def diff(self, old: str, new: str | None = None) -> ChangeSet:
        """Between two revisions, or a revision and the working tree when ``new`` is None."""
        return self.diff_details(old, new)[0]

    def diff_details(
        self,
        old: str,
        new: str | None = None,
        on_scan: Callable[[ScanResult], None] | None = None,
    ) -> tuple[ChangeSet, tuple[Change, ...]]:
        """``diff``, and each change with its old and new fingerprint. Against the working
        tree, ``on_scan`` receives the scan (its problems and settling paths)."""
        old_id = self.resolve(old)
        pairs: dict[str, EntryPair] = {}
        if new is None:
            result = self.scan(base=old_id)
            if on_scan is not None:
                on_scan(result)
            changes = self._diff_scan(old_id, result, pairs)
        else:
            new_id = self.resolve(new)
            changes = diff_trees(
                tree_reader(self.objects),
                self.read_snapshot(old_id).root,
                self.read_snapshot(new_id).root,
                renames=self._renames,
                entries=pairs,
            )
        return changes, _details(changes, pairs)

    def diff_snapshots(self, old_id: str | None, new_id: str) -> ChangeSet:
        old_root = self.read_snapshot(old_id).root if old_id else None
        new_root = self.read_snapshot(new_id).root
        return diff_trees(tree_reader(self.objects), old_root, new_root, renames=self._renames)

    def expected_size(self) -> tuple[int, int] | None:
        """``last``'s file and byte counts: what the next walk will likely find."""
        try:
            last = self.find_ref(REF_LAST)
            return (
                None
                if last is None
                else (lambda c: (c.files, c.bytes))(self.read_snapshot(last).counts)
            )
        except ManifestError:
            return None

    def record_failure(self, snapshot_id: str, runs: tuple[str, ...], message: str) -> None:
        """The orchestrator stopped retrying ``snapshot_id`` (still ``pending``): keep why,
        for ``status``. Replaced by the next failure; ignored once pending moves on."""
        self._check_format(create=True)
        failure = Failure(snapshot_id, tuple(runs), message, time.time_ns())
        self.files.write(FAILURE_FILE, msgspec.json.encode(failure))

    def find_failure(self) -> Failure | None:
        """The recorded failure of the current ``pending``, if the orchestrator gave up."""
        try:
            data = self.files.read(FAILURE_FILE)
            if data is None:
                return None
            failure = msgspec.json.decode(data, type=Failure)
        except (ManifestError, msgspec.DecodeError):
            return None
        try:
            pending = self.find_ref(REF_PENDING)
        except ManifestError:
            return None
        return failure if failure.snapshot == pending else None

    def pending_changes(self, snapshot_id: str, last: str | None) -> ChangeSet:
        """What processing ``snapshot_id`` covers: its diff against ``last`` plus the paths it
        carried over from a superseded pending (``requeued``), with those already processed
        by the superseded pending's runs (``done``, ``done_own``)."""
        changes = self.diff_snapshots(last, snapshot_id)
        snap = self.read_snapshot(snapshot_id)
        differing = set(changes.paths)
        extra = tuple(p for p in snap.requested if p not in differing)
        if extra:
            changes = msgspec.structs.replace(changes, requeued=extra)
        if snap.done or snap.done_own:
            paths = set(changes.paths)
            changes = msgspec.structs.replace(
                changes,
                done=tuple(p for p in snap.done if p in paths),
                done_own=tuple(p for p in snap.done_own if p in paths),
            )
        return changes

    def log(self, ref: str = REF_LAST, limit: int | None = None) -> list[LogEntry]:
        """The moves of ``ref``, newest first. ``last`` and ``pending`` always exist (maybe
        never moved); any other ref that never existed is an ``UnknownRefError``."""
        validate_ref_name(ref)
        self._check_format(create=False)
        self.require_ref(ref)
        entries = list(reversed(self.refs.read_moves(ref)))
        if limit is not None:
            entries = entries[:limit]

        def find(snapshot_id: str | None) -> Snapshot | None:
            if snapshot_id is None:
                return None
            try:
                return self.objects.find_snapshot(snapshot_id)
            except ManifestError:
                return None

        ids = list(dict.fromkeys(e.new for e in entries if e.new is not None))
        if self.store.caps.remote and len(ids) > 1:
            from concurrent.futures import ThreadPoolExecutor  # a request each, on a bucket

            with ThreadPoolExecutor(min(8, len(ids))) as pool:
                snaps = dict(zip(ids, pool.map(find, ids), strict=True))
        else:
            snaps = {i: find(i) for i in ids}
        out = []
        for e in entries:
            snap = snaps.get(e.new) if e.new is not None else None
            out.append(
                LogEntry(
                    e.new,
                    e.old,
                    e.time_ns,
                    e.reason,
                    snap.counts if snap is not None else None,
                    e.runs,
                    parent=snap.parent if snap is not None else None,
                )
            )
        return out

    def count_moves(self, ref: str = REF_LAST) -> int:
        """How many moves ``ref``'s log holds (no snapshot is read)."""
        return len(self.refs.read_moves(ref))

    # -- the processing cycle -----------------------------------------------------------

    @_writer
    def begin(
        self,
        *,
        rehash_all: bool = False,
        reason_prefix: str = "begin",
        labels: dict[str, str] | None = None,
    ) -> CycleResult:
        """Scan and diff against ``last``; if something changed, set ``pending`` to a new
        snapshot. If ``pending`` is already set, report it instead of starting another.

        If ``unfinished`` names a superseded pending snapshot, its requested paths are carried
        over (``changes.requeued`` for those that no longer differ) and ``unfinished`` is
        cleared once the new ``pending`` holds them. ``labels`` are stored on the snapshot."""
        self._check_format(create=True)
        pending = self._ref_snapshot(REF_PENDING)
        last = self._ref_snapshot(REF_LAST)
        if pending is not None:
            return self._in_flight(pending, last)
        result = self.scan(base=last, rehash_all=rehash_all, consume=True)
        durable = False
        try:
            cycle = self._begin_from(result, last, rehash_all, reason_prefix, labels)
            durable = cycle.outcome in ("started", "baseline", "unchanged")
            return cycle
        finally:
            settle(result, durable)

    def _begin_from(
        self,
        result: ScanResult,
        last: str | None,
        rehash_all: bool,
        reason_prefix: str,
        labels: dict[str, str] | None,
    ) -> CycleResult:
        """``begin`` once the tree is scanned."""
        unstable, problems = tuple(result.unstable), tuple(result.problems)
        if last is None and self.config.bootstrap == "baseline":
            snap_id = self._write_snapshot(result, None, ChangeSet(), "baseline")
            with self.refs.transaction(REF_LAST) as txn:
                current = txn.value
                if current is not None:
                    return CycleResult(
                        "unchanged",
                        None,
                        current,
                        unstable=unstable,
                        problems=problems,
                        message="another process recorded the baseline",
                    )
                txn.set(
                    snap_id,
                    reason=f"baseline: first scan, {result.files} "
                    f"file{'' if result.files == 1 else 's'}",
                )
            return CycleResult(
                "baseline",
                snap_id,
                snap_id,
                unstable=unstable,
                problems=problems,
                message=f"recorded a baseline of {result.files} "
                f"file{'' if result.files == 1 else 's'}; nothing to process",
            )
        scanned = self._diff_scan(last, result)
        unfinished = self._ref_snapshot(REF_UNFINISHED)
        changes, carried = (
            self._carry(scanned, unfinished, last, result) if unfinished else (scanned, ())
        )
        if not changes and rehash_all and last is not None:
            self._record_hashes(result, last)
        unchanged = CycleResult(
            "unchanged",
            None,
            last,
            unstable=unstable,
            problems=problems,
            message="no changes since last"
            + (f"; {len(unstable)} file(s) still settling" if unstable else ""),
        )
        if not changes:
            return unchanged

        def write(changes: ChangeSet, carried: tuple[str, ...]) -> SnapshotId:
            return self._write_snapshot(
                result,
                last,
                changes,
                "",
                requested=tuple(sorted(set(carried) | set(changes.paths))) if carried else (),
                labels=tuple(sorted((labels or {}).items())),
                done=changes.done,
                done_own=changes.done_own,
            )

        snap_id = write(changes, carried)
        # Setting pending and taking over what unfinished carries are one step, under both
        # locks (abandon takes them in the same order): if another cycle moved unfinished
        # since it was read (it abandoned a pending, or carried one), what it holds now is
        # carried instead, so no superseded change is ever dropped.
        with self.refs.transaction(REF_PENDING) as txn:
            current = txn.value
            if current is not None:
                return self._in_flight(current, last)
            moved = self.refs.find_ref(REF_LAST)
            if moved != last:
                # another cycle promoted (or someone reset last) during this scan: this
                # snapshot's diff base is stale; the next tick scans against the new last
                raise RefConflictError(REF_LAST, last, moved)
            with self.refs.transaction(REF_UNFINISHED) as carry_txn:
                now = carry_txn.value
                if now != unfinished:
                    unfinished = now
                    changes, carried = (
                        self._carry(scanned, now, last, result) if now else (scanned, ())
                    )
                    if not changes:  # another cycle took over all there was to do
                        return unchanged
                    snap_id = write(changes, carried)
                txn.set(snap_id, expected=None, reason=f"{reason_prefix}: {_describe(changes)}")
                if unfinished is not None:
                    carry_txn.set(None, reason=f"carried over into pending {snap_id[:12]}")
        return CycleResult(
            "started",
            snap_id,
            last,
            changes,
            unstable,
            problems,
            message=f"pending {snap_id[:12]}: {_describe(changes)}",
        )

    def _carry(
        self, changes: ChangeSet, unfinished: str, last: str | None, result: ScanResult
    ) -> tuple[ChangeSet, tuple[str, ...]]:
        """``changes`` plus what the superseded ``unfinished`` asked to process (``requeued``
        where it no longer differs), and of its paths those its successful runs processed
        for the very content scanned now (``done``/``done_own``): never requested again."""
        carried = self._carried_paths(unfinished, last)
        differing = set(changes.paths)
        changes = msgspec.structs.replace(
            changes, requeued=tuple(p for p in carried if p not in differing)
        )
        snap = self.read_snapshot(unfinished)
        if snap.done or snap.done_own:
            read_new = tree_reader(self.objects, result.trees)
            read_old = tree_reader(self.objects)
            paths = set(changes.paths)

            def same(path: str) -> bool:
                return path in paths and _find_entry(read_old, snap.root, path) == _find_entry(
                    read_new, result.root_id, path
                )

            changes = msgspec.structs.replace(
                changes,
                done=tuple(p for p in snap.done if same(p)),
                done_own=tuple(p for p in snap.done_own if same(p)),
            )
        return changes, carried

    def _carried_paths(self, unfinished: str, last: str | None) -> tuple[str, ...]:
        """What a superseded pending snapshot asked to process: its diff against its own
        parent (the ``last`` it was begun from: a ``last`` moved by hand since does not
        shrink the request its runs failed to finish), its diff against ``last``, and the
        paths it had carried itself."""
        snap = self.read_snapshot(unfinished)
        paths = set(snap.requested) | set(self.diff_snapshots(last, unfinished).paths)
        if snap.parent != last:
            paths |= set(self.diff_snapshots(snap.parent, unfinished).paths)
        return tuple(sorted(paths))

    def _record_hashes(self, result: ScanResult, last: str) -> None:
        """After a full-hash check that found no change: if the tree differs from ``last``
        only by newly known digests (``mtime_size`` mode), store it as ``last`` so the next
        check has content to compare against. Same files, same content: nothing to process."""
        if result.root_id == self.read_snapshot(last).root or self.find_ref(REF_PENDING):
            return
        snap_id = self._write_snapshot(result, last, ChangeSet(), "content hashes recorded")
        with contextlib.suppress(RefConflictError):
            self.refs.update_ref(
                REF_LAST,
                snap_id,
                expected=last,
                reason="full-hash check: recorded content hashes, no content changed",
            )

    def _in_flight(self, pending: str, last: str | None) -> CycleResult:
        changes = self.pending_changes(pending, last)
        return CycleResult(
            "in_flight",
            pending,
            last,
            changes,
            message=f"pending {pending[:12]} is already in flight ({_describe(changes)})",
        )

    @_writer
    def promote(
        self, snapshot_id: str, *, reason: str = "promoted", runs: tuple[str, ...] = ()
    ) -> CycleResult:
        """Only if ``pending == snapshot_id``: move ``last`` to it and clear ``pending``."""
        self._check_format(create=True)
        with self.refs.transaction(REF_PENDING) as pending_txn:
            pending = pending_txn.value
            if pending != snapshot_id:
                last = self.refs.find_ref(REF_LAST)
                if last == snapshot_id:
                    return CycleResult(
                        "already_done",
                        snapshot_id,
                        last,
                        message=f"{snapshot_id[:12]} is already last",
                    )
                return CycleResult(
                    "not_pending",
                    pending,
                    last,
                    message=f"pending is {pending[:12] if pending else 'unset'}, not "
                    f"{snapshot_id[:12]}; nothing promoted",
                )
            with self.refs.transaction(REF_LAST) as last_txn:
                last_txn.set(snapshot_id, reason=reason, runs=runs)
            pending_txn.set(None, reason=reason, runs=runs)
        return CycleResult(
            "promoted", snapshot_id, snapshot_id, message=f"last is now {snapshot_id[:12]}"
        )

    @_writer
    def abandon(
        self,
        snapshot_id: str,
        *,
        reason: str = "abandoned",
        carry: bool = True,
        done: tuple[str, ...] = (),
        done_own: tuple[str, ...] = (),
    ) -> CycleResult:
        """Only if ``pending == snapshot_id``: clear it and keep ``last``.

        With ``carry`` (the default) ``unfinished`` is pointed at it first, so the next
        ``begin`` requests its paths again even if they no longer differ from ``last``.
        ``done``/``done_own``: of its paths, those its successful runs processed (nothing
        left to run / only the fan-in left); the next ``begin`` skips them while their
        content is the same. They are kept on a copy of the snapshot that ``unfinished``
        points at (same tree and parent)."""
        self._check_format(create=True)
        with self.refs.transaction(REF_PENDING) as txn:
            pending = txn.value
            last = self.refs.find_ref(REF_LAST)
            if pending is None:
                return CycleResult("already_done", snapshot_id, last, message="nothing pending")
            if pending != snapshot_id:
                return CycleResult(
                    "not_pending",
                    pending,
                    last,
                    message=f"pending is {pending[:12]}, not {snapshot_id[:12]}; kept",
                )
            if carry:
                kept = snapshot_id
                if done or done_own:
                    snap = self.read_snapshot(snapshot_id)
                    kept = self.objects.write_object(
                        msgspec.structs.replace(snap, done=tuple(done), done_own=tuple(done_own))
                    )
                self.refs.update_ref(REF_UNFINISHED, kept, reason=reason)
            txn.set(None, reason=reason)
        return CycleResult(
            "abandoned",
            snapshot_id,
            last,
            message=f"abandoned {snapshot_id[:12]}; last stays {last[:12] if last else 'unset'}",
        )

    # -- maintenance (manifest/maintenance.py) ------------------------------------------

    def gc(
        self,
        *,
        grace_seconds: float = GC_GRACE_SECONDS,
        expire_seconds: float | None = None,
        alone: bool = False,
    ) -> GcResult:
        """Expire reflog lines older than ``expire_seconds`` (if given), then delete what no
        ref or reflog line reaches. ``alone``: no other host writes to this store (a bucket
        store then allows a grace below the floor). See :func:`manifest.maintenance.gc`."""
        return maintenance.gc(
            self.store, grace_seconds=grace_seconds, expire_seconds=expire_seconds, alone=alone
        )

    def fsck(self) -> FsckReport:
        """Verify every object, ref and reflog; list what is wrong."""
        return maintenance.fsck(self.store)


def settle(result: ScanResult, durable: bool) -> None:
    """Tell the root whether a snapshot recording ``result`` is durable (``ScanResult.settle``:
    a bucket root deletes the event messages it applied only then, else hands them back)."""
    if result.settle is not None:
        result.settle(durable)


def _details(changes: ChangeSet, pairs: dict[str, EntryPair]) -> tuple[Change, ...]:
    """Each changed *file* with its old and new fingerprint; a folder on one side is no
    fingerprint (an added or removed folder is its files, listed each)."""
    out = []
    for path in sorted(pairs):
        old, new = (e if e is not None and e.kind != KIND_TREE else None for e in pairs[path])
        if old is None and new is None:
            continue
        out.append(
            Change(
                path,
                changes.kind(path),
                Fingerprint.of(old) if old is not None else None,
                Fingerprint.of(new) if new is not None else None,
            )
        )
    return tuple(out)


def _count(revision: str, digits: str) -> int:
    """A count in ``REV~N`` or ``REF@{N}``: any number of digits is refused beyond what a
    history can hold, with a message, not a ``ValueError``."""
    if len(digits) > 9:
        raise UnknownRevisionError(
            escape_text(revision[:40]) + ("..." if len(revision) > 40 else ""),
            f"a count of at most 9 digits ({len(digits)} given)",
        )
    return int(digits)


def _find_entry(read: Callable[[str], Tree], root: str, path: str) -> TreeEntry | None:
    """A file's entry under the tree ``root`` (None if absent or a folder)."""
    tree_id = root
    *dirs, name = text_to_path(path).split(b"/")
    for part in dirs:
        entry = _lookup(read(tree_id), part)
        if entry is None or entry.kind != KIND_TREE:
            return None
        tree_id = entry.digest.hex()
    entry = _lookup(read(tree_id), name)
    return None if entry is None or entry.kind == KIND_TREE else entry


def _lookup(tree: Tree, name: bytes) -> TreeEntry | None:
    for entry in tree.entries:
        if entry.name == name:
            return entry
    return None


__all__ = [
    "REF_LAST",
    "REF_PENDING",
    "CycleResult",
    "FsckProblem",
    "FsckReport",
    "GcResult",
    "LogEntry",
    "Repository",
    "Status",
]
