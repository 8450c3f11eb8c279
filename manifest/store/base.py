"""What every state store is and does (``Store``, ``Files``, ``Capabilities``); the two
implementations are ``manifest.store.local`` and ``manifest.store.bucket``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from manifest.errors import FormatVersionError, StoreError
from manifest.model import FORMAT_VERSION

if TYPE_CHECKING:
    from manifest.location import Location
    from manifest.store.objects import Objects
    from manifest.store.refs import Refs

FORMAT_FILE: Final = "FORMAT"
STORE_LOCK: Final = "store.flock"


class Capabilities(msgspec.Struct, frozen=True):
    """What a caller may rely on, as data."""

    # the folder holding the objects, readable by this host's scan workers (None: remote)
    local_objects: Path | None
    # every request is a network round trip: independent reads are worth doing in parallel
    remote: bool
    # the store's locks reach every writer; if not (a bucket: writers on other hosts), gc
    # keeps a grace period those writers can rely on instead
    locks_reach_all_writers: bool


class Files(ABC):
    """The store's small files (``FORMAT``, ``config.toml``, ``pending.failed``, a bucket
    root's hash cache), each read and replaced whole."""

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Replace the file atomically (a reader sees the old or the new bytes)."""

    @abstractmethod
    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` only if it does not exist; False if another writer got there."""

    @abstractmethod
    def read_tagged(self, name: str) -> tuple[bytes | None, str | None]:
        """The file's bytes and its tag, which differs whenever its bytes do; ``(None,
        None)`` when it does not exist. :meth:`replace` compares against the tag."""

    @abstractmethod
    def replace(self, name: str, data: bytes, tag: str | None) -> bool:
        """Compare-and-swap: replace the file (atomically, as :meth:`write`) only if it
        still has ``tag`` (None: only if it does not exist); False when another writer
        changed it first, and then nothing was written."""

    @abstractmethod
    def where(self, name: str) -> str:
        """The file's location, for messages."""


class Store(ABC):
    """A state store. ``objects``, ``refs`` and ``files`` are its parts; ``cache_dir`` is a
    folder on this machine (the store itself when local; for a bucket, this machine's cache
    of it) for the stat cache and the same-host lock."""

    location: Location
    objects: Objects
    refs: Refs
    files: Files
    caps: Capabilities
    cache_dir: Path
    lock_timeout: float
    sync: bool

    def __init__(self) -> None:
        self.created = False  # this process created the store (wrote its FORMAT marker)
        self._format_checked = False

    @property
    def text(self) -> str:
        """The location as the user gives it."""
        return str(self.location)

    def __str__(self) -> str:
        return self.text  # what ``str(repo.store)`` gave when it was the store's folder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    # -- the format marker -------------------------------------------------------------

    @abstractmethod
    def _prepare(self) -> None:
        """Make what a new store needs before its marker is written (folders)."""

    @abstractmethod
    def _check_reachable(self) -> None:
        """Raise ``StoreError`` when the store's place cannot be used at all (a file where
        the folder should be, a bucket that does not exist)."""

    def exists(self) -> bool:
        """The store has been created (its FORMAT marker is there)."""
        if self.files.read(FORMAT_FILE) is not None:
            return True
        self._check_reachable()
        return False

    def check_format(self, *, create: bool) -> None:
        """Refuse a store of a newer format; with ``create``, make a missing store."""
        if self._format_checked:
            return
        data = self.files.read(FORMAT_FILE)
        if data is None:
            self._check_reachable()
        if data is None and create:
            self._prepare()
            self.created = self.files.create(FORMAT_FILE, f"{FORMAT_VERSION}\n".encode())
            data = self.files.read(FORMAT_FILE)
        if data is None:
            return
        text = data.decode("utf-8", "replace").strip()
        marker = self.files.where(FORMAT_FILE)
        if not text.isdigit():
            raise StoreError(marker, f"holds {text[:40]!r}, not a format version")
        if int(text) > FORMAT_VERSION:
            raise FormatVersionError(f"store {self.text}", text, FORMAT_VERSION)
        self._format_checked = True

    # -- this machine's folder and lock ------------------------------------------------

    def make_cache_dir(self) -> None:
        """Create ``cache_dir`` (a bucket store's folder on this machine)."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                str(self.cache_dir),
                f"this machine's cache folder for {self.text} cannot be created "
                f"({exc.strerror}); set MANIFEST_CACHE_DIR to a writable folder",
            ) from exc

    def ready_cache_dir(self) -> bool:
        """``cache_dir`` is there for a cache to be saved in: a bucket store's is made
        (False if it cannot be: a cache is only a cache, a read-only home reads without
        it); a local store's is the store, which only its writers create."""
        try:
            self.make_cache_dir()
        except StoreError:
            return False
        return True

    def lock(self, *, exclusive: bool) -> AbstractContextManager[object]:
        """The store held shared (writers: from their first object to the ref that protects
        it) or exclusively (gc). It reaches the processes of this host; see
        ``caps.locks_reach_all_writers``."""
        from manifest.fsutil import StoreLock

        self.make_cache_dir()
        return StoreLock(
            self.cache_dir / STORE_LOCK, exclusive=exclusive, timeout=self.lock_timeout
        )
