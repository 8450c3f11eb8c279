"""A data root in a local folder: the walk (``manifest.root.scan``), shared out over worker
processes for a big tree (``manifest.root.pool``), with the stat cache
(``manifest.root.index``) kept in the store's folder on this machine."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from manifest.globs import PathFilter
from manifest.model import KIND_FILE, KIND_TREE, TreeEntry
from manifest.root.base import Root
from manifest.scanresult import DEFAULT_SCAN, ScanOptions, ScanResult
from manifest.text import escape_path

if TYPE_CHECKING:
    import subprocess

    from manifest.config import Config
    from manifest.root.scan import Scanner, _Folder
    from manifest.scanresult import BaseTrees
    from manifest.store import Store

STAT_CACHE = "index"
JOURNAL_STATE = "journal"  # the last clean scan and the watcher's token before it
# more changed paths than this since the last clean scan: a (parallel) walk is quicker
MAX_JOURNALED = 200_000


class LocalRoot(Root):
    def __init__(self, path: Path, settings: Config | None, store: Store | None) -> None:
        super().__init__(settings, store)
        self.location = self.path = self.local_path = path

    def describe(self) -> str:
        return escape_path(os.fsdecode(os.fsencode(self.path)))

    def check(self) -> None:
        from manifest.errors import RootError

        if not self.path.is_dir():
            raise RootError(str(self.path), "is not an existing folder; create it or pass --root")

    def warm(self) -> None:
        from manifest import fingerprint  # noqa: F401
        from manifest.root import index, scan, watch  # noqa: F401

    def scan(self, base: BaseTrees, options: ScanOptions = DEFAULT_SCAN) -> ScanResult:
        answer = self._ask_journal(base, options)
        if answer.result is not None:
            return answer.result
        result: ScanResult | None = None
        if answer.changed is not None and answer.state is not None:
            result = self._walk_changed(base, options, answer.state, answer.changed)
            if result is None:
                answer.reason = "the base snapshot does not match the last clean scan"
        if result is None:
            result = self._walk(base, options)
            result.reason = answer.reason
            if answer.token is not None:  # a watcher answered: tell it why it was not enough
                from manifest.root import watch

                watch.ask(
                    self.path, self.store.cache_dir, {"op": "walked", "reason": answer.reason}
                )
        if options.save_cache:
            self._record(answer, base, result)
        if options.consume and answer.token is not None:
            result.settle = functools.partial(self._settled, answer.token, result)
        return result

    def _settled(self, token: str, result: ScanResult, durable: bool) -> None:
        # a durable snapshot records the result now, its trees in the store: the next scan
        # may start from it, whatever that scan's base
        if durable:
            self._write_clean(token, result)

    # -- the watcher's journal (manifest.root.watch) ---------------------------------------

    def _context(self) -> str:
        from manifest.root.index import scan_context

        return scan_context(self.settings).hex()

    def _ask_journal(self, base: BaseTrees, options: ScanOptions) -> _Answer:
        """What the watcher says changed since the last clean scan, and whether that scan's
        result can be reused whole (nothing changed: no walk at all) or patched (only the
        changed paths' folders are listed again); else why the tree is walked."""
        from manifest.root import watch

        state = self._recorded()
        request = {
            "op": "since",
            "token": state["token"] if state is not None else None,
            "limit": MAX_JOURNALED,
        }
        reply = watch.ask(self.path, self.store.cache_dir, request)
        if reply is None:
            return _Answer(None, "no watcher")
        return self._read_reply(reply, state, base, options)

    def rehearse(self, base: BaseTrees) -> ScanResult | None:
        """What :meth:`scan` returns when the watcher says nothing changed since the
        recorded clean scan, asking no watcher and writing nothing; None when no clean scan
        is recorded (or it is not ``base``'s tree). The command server's spare children run
        it (``Repository.warm``): a child forked from the watcher shares its pages until it
        writes them, and each first write costs a page copy (~10 µs here), so the pages a
        status writes are better copied before its command comes."""
        state = self._recorded()
        if state is None:
            return None
        reply = {"token": state["token"], "paths": []}
        quiet = ScanOptions(save_cache=False)
        result = self._read_reply(reply, state, base, quiet).result
        if result is not None and len(base.entries_at(b"") or ()) <= REHEARSED_LISTING:
            # and what a scan after an edit runs: the walk guided by the journal, here
            # through the root folder alone (every subfolder kept), its result dropped
            self._walk_changed(base, quiet, state, [])
        return result

    def _read_reply(
        self,
        reply: dict[str, Any],
        state: dict[str, Any] | None,
        base: BaseTrees,
        options: ScanOptions,
    ) -> _Answer:
        token = reply.get("token") if isinstance(reply.get("token"), str) else None
        if state is None:
            return _Answer(token, "no clean scan recorded with a token yet")
        if reply.get("full"):
            return _Answer(token, f"the watcher cannot vouch: {reply.get('reason')}")
        if options.rehash_all:
            return _Answer(token, "a full-hash check reads every file")
        if state["context"] != self._context() or state["mode"] != self.settings.mode:
            return _Answer(token, "the mode or the filters changed")
        if state["root_id"] != base.root_id:
            return _Answer(token, "the last clean scan is not the base snapshot's tree")
        paths = [p for p in reply.get("paths", []) if isinstance(p, str)]
        wanted = PathFilter(self.settings.include, self.settings.exclude)
        changed = [p for p in paths if wanted.wants_file(p) or (self.path / p).is_dir()]
        if changed:
            answer = _Answer(token, f"{len(changed)} path(s) changed, e.g. {changed[0]}")
            answer.state, answer.changed = state, paths
            return answer
        from manifest.scanresult import TreeSource

        result = ScanResult(
            root_id=state["root_id"],
            trees=TreeSource({}, {}, None, self.settings.mode == "content_hash"),
            files=state["files"],
            bytes=state["bytes"],
            unstable=[],
            problems=[],
            skipped=list(state["skipped"]),
            hashed=0,
            started_ns=time.time_ns(),
            jobs=0,
            source="journal",
            reason=f"no change since token {state['token']}",
        )
        if options.save_cache and token is not None and token != state["token"]:
            self._write_state({**state, "token": token})  # a quiet tree's token: unchanged
        return _Answer(token, "", result)

    def _walk_changed(
        self, base: BaseTrees, options: ScanOptions, state: dict[str, Any], paths: list[str]
    ) -> ScanResult | None:
        """The last clean scan (the base snapshot's tree) with only the folders of the
        changed paths listed again (a changed path that is a folder is walked whole); every
        other subfolder keeps its base entry without being entered. None when the base
        snapshot's counts do not add up to the recorded ones (then the tree is walked)."""
        changed = _Changed(paths, base)
        result = self._walk(base, options, changed)
        kept_files, kept_bytes = changed.outside_reused()
        if state["files"] - kept_files != changed.reused_files:
            return None
        result.bytes += state["bytes"] - kept_bytes
        listed = changed.listed
        result.skipped = sorted(
            {*result.skipped, *(s for s in state["skipped"] if _folder_of(s) not in listed)}
        )
        result.source = "journal"
        result.reason = (
            f"{len(paths)} path(s) changed since token {state['token']}: listed "
            f"{len(listed)} folder(s) again, kept {len(changed.reused)} as they were"
        )
        return result

    def _recorded(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.store.cache_dir / JOURNAL_STATE).read_bytes())
        except (OSError, ValueError):
            return None
        keys = {"token", "root_id", "files", "bytes", "skipped", "context", "mode"}
        return data if isinstance(data, dict) and keys <= data.keys() else None

    def _record(self, answer: _Answer, base: BaseTrees, result: ScanResult) -> None:
        """Keep a clean result with the token taken before its scan, when the next scan can
        start from it: its tree is the base snapshot's (a snapshot's trees are in the store;
        see ``_settled`` for a result that becomes one). Anything else leaves the recorded
        state as it is: it still holds (its older token answers with more paths), and a scan
        uses it only when its tree is that scan's base."""
        if answer.token is not None and result.root_id == base.root_id:
            self._write_clean(answer.token, result)

    def _write_clean(self, token: str, result: ScanResult) -> None:
        if result.unstable or result.problems:
            return
        self._write_state(
            {
                "token": token,
                "root_id": result.root_id,
                "files": result.files,
                "bytes": result.bytes,
                "skipped": list(result.skipped),
                "context": self._context(),
                "mode": self.settings.mode,
            }
        )

    def _write_state(self, state: dict[str, Any]) -> None:
        from manifest.fsutil import atomic_write

        if self.store.ready_cache_dir():
            with contextlib.suppress(OSError):
                atomic_write(
                    self.store.cache_dir / JOURNAL_STATE, json.dumps(state).encode(), sync=False
                )

    # -- the walk --------------------------------------------------------------------------

    def _walk(
        self, base: BaseTrees, options: ScanOptions, changed: _Changed | None = None
    ) -> ScanResult:
        from manifest.root.index import StatCache, open_index, scan_context
        from manifest.root.scan import Scanner

        config, store = self.settings, self.store

        def jobs_for(expected: int | None) -> int:
            # scan workers read base trees from a local object store only
            if store.caps.local_objects is None:
                return 1
            from manifest.root.pool import choose_jobs  # (the workers' module: not for one)

            return choose_jobs(expected, config.jobs)

        expected = options.expected_files
        jobs = 1 if changed is not None else jobs_for(expected)
        index_path = store.cache_dir / STAT_CACHE
        index_fd = open_index(index_path)
        spares: list[subprocess.Popen[bytes]] = []
        if jobs > 1 and (expected is not None or config.jobs is not None):
            # A big tree, known from its last snapshot: start the workers now, so their
            # start-up overlaps loading the stat cache.
            from manifest.root.pool import start_spares

            spares = start_spares(jobs - 1, index_fd)
        try:
            cache = StatCache(
                index_path, config.mode, scan_context(config), fd=index_fd, lazy=changed is not None
            )
            if cache.records and changed is None:
                expected = len(cache)
                jobs = jobs_for(expected)
            skip = frozenset({os.fsencode(store.cache_dir)})
            scanner = Scanner(
                os.fsencode(self.path),
                mode=config.mode,
                cooldown_ns=int(config.cooldown_sec * 1e9),
                path_filter=PathFilter(config.include, config.exclude),
                skip_dirs=skip,
                cache=cache,
                base=base,
                rehash_all=options.rehash_all,
                on_hash=options.on_hash,
                on_walk=options.on_walk,
                jobs=jobs,
                expected_files=expected,
                jobs_forced=config.jobs is not None,
            )
            scanner.spares = spares
            scanner.parallel = _scan_in_parallel
            scanner.reuse = changed
            result = scanner.scan()
        finally:
            if spares:
                from manifest.root.pool import stop_spares

                stop_spares(spares)
        save = options.save_cache and store.ready_cache_dir()
        if changed is not None:
            # The folders not listed keep their records; a cache that was not loaded whole
            # (absent, damaged, another layout) is not rewritten from the few listed.
            save = save and cache.trusted and not cache.rewrite
            cache.keep_all()
        if save:
            cache.save()
        return result

    def read_bytes(self, rel_path: str) -> bytes:
        return (self.path / rel_path).read_bytes()

    def list_files(self, prefix: str = "") -> list[str]:
        base = self.path
        top = base / prefix if prefix else base
        return sorted(p.relative_to(base).as_posix() for p in top.rglob("*") if p.is_file())


def _scan_in_parallel(scanner: Scanner, root: _Folder) -> tuple[str, int]:
    from manifest.root.pool import scan_in_parallel

    return scan_in_parallel(scanner, root)


# A rehearsal lists the root folder when it holds at most this many entries (a few ms).
REHEARSED_LISTING: Final = 2000


class _Answer:
    """The watcher's answer for one scan: its token, and either the last clean result
    (nothing changed), the changed paths with the state they changed from, or why the tree
    is walked."""

    def __init__(self, token: str | None, reason: str, result: ScanResult | None = None) -> None:
        self.token = token
        self.reason = reason
        self.result = result
        self.state: dict[str, Any] | None = None
        self.changed: list[str] | None = None


class _Changed:
    """The walk's guide through a tree of which the journal names the changed paths
    (``Scanner.reuse``): the folders above a changed path are listed again, a changed path
    that is a folder is walked whole, and every other subfolder keeps its base entry without
    being entered. Records what it listed and what it kept, to settle the counts."""

    def __init__(self, paths: list[str], base: BaseTrees) -> None:
        self.base = base
        self.changed = {os.fsencode(p) for p in paths}
        self.above: set[bytes] = set()  # folders holding a changed path, at any depth
        for path in self.changed:
            parts = path.split(b"/")
            for depth in range(1, len(parts)):
                self.above.add(b"/".join(parts[:depth]) + b"/")
        self.whole: set[bytes] = set()  # folders walked whole
        self.listed: set[bytes] = {b""}
        self.reused: set[bytes] = set()
        self.reused_files = 0

    def __call__(self, parent: bytes, name: bytes) -> TreeEntry | bool | None:
        rel = parent + name
        folder = rel + b"/"
        if parent in self.whole or rel in self.changed:
            self.whole.add(folder)
        elif folder not in self.above:
            old = self.base.entry(parent, name)
            if old is None:
                return False  # it recorded nothing, and nothing in it changed
            if old.kind == KIND_TREE:
                self.reused.add(folder)
                self.reused_files += old.size
                return old
            self.whole.add(folder)  # a file then, a folder now: cannot be, unless missed
        self.listed.add(folder)
        return None

    def outside_reused(self) -> tuple[int, int]:
        """The base tree's files and bytes outside the subfolders kept as they were."""
        files = nbytes = 0
        stack = [b""]
        while stack:
            folder = stack.pop()
            for name, entry in (self.base.entries_at(folder) or {}).items():
                if entry.kind == KIND_TREE:
                    sub = folder + name + b"/"
                    if sub not in self.reused:
                        stack.append(sub)
                    continue
                files += 1
                if entry.kind == KIND_FILE:
                    nbytes += entry.size
        return files, nbytes


def _folder_of(path: str) -> bytes:
    folder = path.rpartition("/")[0]
    return os.fsencode(folder) + b"/" if folder else b""
