"""A data root in a local folder: the walk (``manifest.root.scan``), shared out over worker
processes for a big tree (``manifest.root.pool``), with the stat cache
(``manifest.root.index``) kept in the store's folder on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from manifest.globs import PathFilter
from manifest.root.base import Root
from manifest.scanresult import DEFAULT_SCAN, ScanOptions
from manifest.text import escape_path

if TYPE_CHECKING:
    import subprocess

    from manifest.config import Config
    from manifest.scanresult import BaseTrees, ScanResult
    from manifest.store import Store

STAT_CACHE = "index"


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
