"""What every data root is and does (``Root``); the two implementations are
``manifest.root.local`` and ``manifest.root.bucket``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from manifest.scanresult import DEFAULT_SCAN, ScanOptions

if TYPE_CHECKING:
    from manifest.config import Config
    from manifest.location import Location
    from manifest.scanresult import BaseTrees, ScanResult
    from manifest.store import Store


class Root(ABC):
    """A data root, scanned with ``settings`` (mode, cooldown, filters, jobs) into ``store``
    (whose objects hold the base trees, and whose cache folder or files keep the root's
    caches). A root opened without them reads and lists files only."""

    location: Location
    # the folder, for code that opens files itself (None: the root is not a local folder)
    local_path: Path | None

    def __init__(self, settings: Config | None, store: Store | None) -> None:
        self._settings = settings
        self._store = store

    @property
    def settings(self) -> Config:
        if self._settings is None:
            raise TypeError("this root was opened to read files only (open_root without settings)")
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            raise TypeError("this root was opened to read files only (open_root without a store)")
        return self._store

    @property
    def text(self) -> str:
        """The location as the user gives it."""
        return str(self.location)

    def warm(self) -> None:
        """Import now what a scan of this root will need (a long-lived process that forks
        its commands, the watcher's command server, calls this once). Nothing by default."""
        return None

    def rehearse(self, base: BaseTrees) -> ScanResult | None:
        """The result a scan gives when it learns, without walking, that nothing changed
        since ``base`` (a watcher's journal), built asking no one and writing nothing; None
        when this root cannot know that (the default). ``Repository.warm`` runs a status
        on it, to touch what a status touches before one is asked for."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """What a snapshot records as its data root (one printable line)."""

    @abstractmethod
    def check(self) -> None:
        """Raise ``RootError`` unless the root can be read."""

    @abstractmethod
    def scan(self, base: BaseTrees, options: ScanOptions = DEFAULT_SCAN) -> ScanResult:
        """Every file's fingerprint, as trees; files still settling or unreadable keep
        their ``base`` entry."""

    @abstractmethod
    def read_bytes(self, rel_path: str) -> bytes:
        """A file's bytes (``FileNotFoundError`` naming it when absent)."""

    @abstractmethod
    def list_files(self, prefix: str = "") -> list[str]:
        """Relative paths of the files under ``prefix`` (a folder under the root), sorted."""

    def location_of(self, rel_path: str) -> str:
        """Where a file under the root is, as text."""
        return f"{self.text}/{rel_path}"
