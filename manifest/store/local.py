"""The state store in a local folder: ``FORMAT``, ``objects/``, ``refs/``, ``logs/refs/``
and the small files, each written atomically (temp file, fsync, rename, fsync the folder).
Locks are ``flock`` plus lock files, and reach every process on this host."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from manifest.errors import StoreError
from manifest.fsutil import atomic_write, read_small_file
from manifest.store.base import Capabilities, Files, Store
from manifest.store.objects import ObjectStore
from manifest.store.refs import RefStore

# The store's files are read whole; a bucket root's hash cache (``root-hashes``, about 100
# bytes a key) and its events listing outgrow the 1 MiB of the store's own state files.
FILES_LIMIT: Final = 1 << 30


class LocalFiles(Files):
    def __init__(self, store: Path, *, sync: bool = True) -> None:
        self.store = store
        self.sync = sync

    def read(self, name: str) -> bytes | None:
        try:
            return read_small_file(self.store / name, limit=FILES_LIMIT)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(str(self.store / name), f"cannot read: {exc.strerror}") from exc

    def write(self, name: str, data: bytes) -> None:
        try:
            atomic_write(self.store / name, data, sync=self.sync)
        except OSError as exc:
            raise StoreError(str(self.store / name), f"cannot write: {exc.strerror}") from exc

    def create(self, name: str, data: bytes) -> bool:
        try:
            return atomic_write(self.store / name, data, sync=self.sync, exclusive=True)
        except OSError as exc:
            raise StoreError(str(self.store / name), f"cannot write: {exc.strerror}") from exc

    def where(self, name: str) -> str:
        return str(self.store / name)


class LocalStore(Store):
    def __init__(self, path: Path, *, sync: bool = True, lock_timeout: float = 5.0) -> None:
        super().__init__()
        self.location = path
        self.path = path
        self.cache_dir = path
        self.sync = sync
        self.lock_timeout = lock_timeout
        self.objects = ObjectStore(path / "objects", sync=sync)
        self.refs = RefStore(path, sync=sync, lock_timeout=lock_timeout)
        self.files = LocalFiles(path, sync=sync)
        self.caps = Capabilities(
            local_objects=path / "objects", remote=False, locks_reach_all_writers=True
        )

    def ready_cache_dir(self) -> bool:
        return self.path.is_dir()  # a status never creates the store

    def _check_reachable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(str(self.path), "exists and is not a directory")

    def _prepare(self) -> None:
        try:
            for sub in ("objects", "refs", "logs/refs"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(str(self.path), f"cannot be created ({exc.strerror})") from exc
