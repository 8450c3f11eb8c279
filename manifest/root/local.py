"""A data root in a local folder: the walk (``manifest.root.scan``), shared out over worker
processes for a big tree (``manifest.root.pool``), with the stat cache
(``manifest.root.index``) kept in the store's folder on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manifest.globs import PathFilter
from manifest.root.base import Root
from manifest.scanresult import DEFAULT_SCAN, ScanOptions, ScanResult
from manifest.text import escape_path

if TYPE_CHECKING:
    import subprocess

    from manifest.config import Config
    from manifest.scanresult import BaseTrees
    from manifest.store import Store

STAT_CACHE = "index"
JOURNAL_STATE = "journal"  # the last clean scan and the watcher's token before it


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

    def scan(self, base: BaseTrees, options: ScanOptions = DEFAULT_SCAN) -> ScanResult:
        quiet, token, reason = self._ask_journal(base, options)
        if quiet is not None:
            return quiet
        result = self._walk(base, options)
        result.reason = reason
        if options.save_cache:
            self._record(token, result)
        return result

    # -- the watcher's journal (manifest.root.watch) ---------------------------------------

    def _context(self) -> str:
        from manifest.root.index import scan_context

        return scan_context(self.settings).hex()

    def _ask_journal(
        self, base: BaseTrees, options: ScanOptions
    ) -> tuple[ScanResult | None, str | None, str]:
        """The last clean scan's result when the watcher vouches that nothing changed since
        (then no walk at all); else None, the token to record with this scan, and why it
        walks."""
        from manifest.root import watch

        state = self._recorded()
        request = {"op": "since", "token": state["token"] if state is not None else None}
        answer = watch.ask(self.path, self.store.cache_dir, request)
        if answer is None:
            return None, None, "no watcher"
        token = answer.get("token") if isinstance(answer.get("token"), str) else None
        if state is None:
            return None, token, "no clean scan recorded with a token yet"
        if answer.get("full"):
            return None, token, f"the watcher cannot vouch: {answer.get('reason')}"
        wanted = PathFilter(self.settings.include, self.settings.exclude)
        changed = [p for p in answer.get("paths", []) if wanted.wants_file(p)]
        if changed:
            return None, token, f"{len(changed)} path(s) changed, e.g. {changed[0]}"
        if options.rehash_all:
            return None, token, "a full-hash check reads every file"
        if state["context"] != self._context() or state["mode"] != self.settings.mode:
            return None, token, "the mode or the filters changed"
        if state["root_id"] != base.root_id:
            return None, token, "the last clean scan is not the base snapshot's tree"
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
        if options.save_cache and token is not None:
            self._write_state({**state, "token": token})
        return result, token, ""

    def _recorded(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.store.cache_dir / JOURNAL_STATE).read_bytes())
        except (OSError, ValueError):
            return None
        keys = {"token", "root_id", "files", "bytes", "skipped", "context", "mode"}
        return data if isinstance(data, dict) and keys <= data.keys() else None

    def _record(self, token: str | None, result: ScanResult) -> None:
        """Keep a clean result with the token taken before its walk; anything else (no
        watcher, files settling, problems) leaves nothing to reuse."""
        clean = not result.unstable and not result.problems
        if token is None or not clean:
            with contextlib.suppress(OSError):
                (self.store.cache_dir / JOURNAL_STATE).unlink()
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

    def _walk(self, base: BaseTrees, options: ScanOptions) -> ScanResult:
        from manifest.root.index import StatCache, open_index, scan_context
        from manifest.root.pool import choose_jobs, scan_in_parallel, start_spares, stop_spares
        from manifest.root.scan import Scanner

        config, store = self.settings, self.store

        def jobs_for(expected: int | None) -> int:
            # scan workers read base trees from a local object store only
            if store.caps.local_objects is None:
                return 1
            return choose_jobs(expected, config.jobs)

        expected = options.expected_files
        jobs = jobs_for(expected)
        index_path = store.cache_dir / STAT_CACHE
        index_fd = open_index(index_path)
        spares: list[subprocess.Popen[bytes]] = []
        if jobs > 1 and (expected is not None or config.jobs is not None):
            # A big tree, known from its last snapshot: start the workers now, so their
            # start-up overlaps loading the stat cache.
            spares = start_spares(jobs - 1, index_fd)
        try:
            cache = StatCache(index_path, config.mode, scan_context(config), fd=index_fd)
            if cache.records:
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
            scanner.parallel = scan_in_parallel
            result = scanner.scan()
        finally:
            stop_spares(spares)
        if options.save_cache and store.ready_cache_dir():
            cache.save()
        return result

    def read_bytes(self, rel_path: str) -> bytes:
        return (self.path / rel_path).read_bytes()

    def list_files(self, prefix: str = "") -> list[str]:
        base = self.path
        top = base / prefix if prefix else base
        return sorted(p.relative_to(base).as_posix() for p in top.rglob("*") if p.is_file())
