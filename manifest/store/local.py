"""The state store in a local folder: ``FORMAT``, ``objects/``, ``refs/``, ``logs/refs/``
and the small files, each written atomically (temp file, fsync, rename, fsync the folder).
Locks are ``flock`` plus lock files, and reach every process on this host."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from manifest.errors import LockHeldError, StaleLockError, StoreError
from manifest.fsutil import LockFile, atomic_write, read_small_file
from manifest.store.base import Capabilities, Files, Store
from manifest.store.objects import ObjectStore
from manifest.store.refs import RefStore

# The store's files are read whole; a bucket root's hash cache (``root-hashes``, about 100
# bytes a key) and its events listing outgrow the 1 MiB of the store's own state files.
FILES_LIMIT: Final = 1 << 30


class LocalFiles(Files):
    """Each file written whole through a temporary file and a rename; a compare-and-swap
    (:meth:`replace`) holds ``<name>.lock`` (:class:`manifest.fsutil.LockFile`, as a ref's
    move does) around its compare and its rename. The tag is the bytes' BLAKE3: equal
    bytes are the same state, whoever wrote them."""

    def __init__(self, store: Path, *, sync: bool = True, lock_timeout: float = 5.0) -> None:
        self.store = store
        self.sync = sync
        self.lock_timeout = lock_timeout

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

    def read_tagged(self, name: str) -> tuple[bytes | None, str | None]:
        data = self.read(name)
        return (data, _tag(data)) if data is not None else (None, None)

    def replace(self, name: str, data: bytes, tag: str | None) -> bool:
        if tag is None:
            return self.create(name, data)
        path = self.store / name
        try:
            with LockFile(path, timeout=self.lock_timeout):
                now = self.read(name)
                if now is None or _tag(now) != tag:
                    return False
                atomic_write(path, data, sync=self.sync)
                return True
        except (LockHeldError, StaleLockError) as exc:
            raise StoreError(str(path), f"cannot write: {exc}") from exc
        except OSError as exc:
            raise StoreError(str(path), f"cannot write: {exc.strerror or exc}") from exc

    def where(self, name: str) -> str:
        return str(self.store / name)


def _tag(data: bytes) -> str:
    from blake3 import blake3

    return blake3(data).hexdigest()


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
        self.files = LocalFiles(path, sync=sync, lock_timeout=lock_timeout)
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
