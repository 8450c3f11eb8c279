"""What a scan of a data root produces, whatever the root: the result, its problems, the
trees it built (``TreeSource``) and lazy access to the base snapshot's trees it compares
against (``BaseTrees``). The object stores write these trees; the roots produce them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Final

import msgspec
from blake3 import blake3

from manifest.model import KIND_TREE, Tree, TreeEntry, encode_object

if TYPE_CHECKING:
    from manifest.root.index import CacheView, Recorded
    from manifest.store.objects import Objects

_by_name: Final = attrgetter("name")


class ScanProblem(msgspec.Struct, frozen=True):
    path: str
    message: str


class TreeSource:
    """The trees of a scan, by id: those built in this scan, and those of folders whose
    stat signature matched the cache (rebuilt from the cache's entries only if asked for:
    a diff or a snapshot needs the few that are not in the object store yet)."""

    def __init__(
        self,
        built: dict[str, bytes],
        clean: dict[str, bytes],
        cache: CacheView | None,
        content: bool,
    ) -> None:
        self.built = built
        self.clean = clean  # tree id -> folder path, for folders reused from the cache
        self.cache = cache
        self.content = content

    def get(self, oid: str) -> bytes | None:
        data = self.built.get(oid)
        if data is not None:
            return data
        folder = self.clean.get(oid)
        if folder is None or self.cache is None:
            return None
        head = self.cache.head(folder)
        files = recorded_files(self.cache.recorded(folder), self.content)
        if head is None or files is None:
            return None
        entries = files + list(head.subdirs)
        entries.sort(key=_by_name)
        data = encode_object(Tree(entries=tuple(entries)))
        return data if blake3(data).hexdigest() == oid else None

    def ids(self) -> Iterator[str]:
        yield from self.built
        yield from self.clean


def recorded_files(recorded: Recorded | None, content: bool) -> list[TreeEntry] | None:
    """The tree entries of the files a stat cache payload records; None if it is absent
    or damaged."""
    if recorded is None:
        return None
    try:
        return recorded.tree_files(content)
    except msgspec.DecodeError:
        return None


@dataclass(frozen=True)
class ScanOptions:
    """How a scan is run (``Root.scan``), beyond the settings it was opened with."""

    expected_files: int | None = None  # the base snapshot's count: a hint for the walk
    rehash_all: bool = False  # read every file again (the nightly full-hash check)
    on_hash: Callable[[int], None] | None = None  # bytes hashed, as they are
    on_walk: Callable[[int, int], None] | None = None  # files and bytes seen, as they are
    save_cache: bool = True  # keep what this scan learned in the stat or hash cache
    # the caller records the result in a snapshot and then calls ``ScanResult.settle``
    # (a tick, ``snapshot``); False: a read-only look (``status``, ``diff``)
    consume: bool = False


DEFAULT_SCAN: Final = ScanOptions()


class ScanResult(msgspec.Struct):
    root_id: str
    trees: TreeSource
    """Every tree of the working tree, by id (what a snapshot writes)."""
    files: int
    bytes: int
    unstable: list[str]
    problems: list[ScanProblem]
    skipped: list[str]
    """Special files (FIFOs, sockets, devices) left out."""
    hashed: int
    """Files whose bytes were read in this scan (content mode)."""
    started_ns: int
    jobs: int = 1
    """Processes that walked the tree (1: this one alone; 0: none, see ``source``)."""
    source: str = "scan"
    """``scan``: the tree was walked (or listed); ``journal``: the watcher's journal (or a
    bucket's events) named what changed since the last clean scan, and only that was looked
    at (nothing: that scan's result is this one); ``events``: a bucket's events named the
    keys that changed, only those were read."""
    reason: str = ""
    """Why the tree was walked although a watcher may run, or what the journal answered."""
    settle: Callable[[bool], None] | None = None
    """Set by a root that holds something until the result is recorded (a bucket root's
    event messages, a local root's journal token): call it with True once a snapshot
    recording the result is durable (the root then lets go of what it applied, or starts
    its next scan from it), with False when none will be (handed back)."""


class BaseTrees:
    """Lazy access to the base snapshot's trees by folder path (for carry-over)."""

    def __init__(self, objects: Objects | None, root_id: str | None) -> None:
        self.objects = objects
        self.root_id = root_id
        self._cache: dict[bytes, dict[bytes, TreeEntry] | None] = {}

    def entries_at(self, rel_dir: bytes) -> dict[bytes, TreeEntry] | None:
        """The base tree's entries of folder ``rel_dir`` (``b""`` or ending in ``/``)."""
        if rel_dir in self._cache:
            return self._cache[rel_dir]
        result: dict[bytes, TreeEntry] | None = None
        if self.objects is not None and self.root_id is not None:
            # Walk down from the deepest cached ancestor, iteratively (no depth limit).
            parts = rel_dir.rstrip(b"/").split(b"/") if rel_dir else []
            depth = len(parts)
            while depth > 0 and (b"/".join(parts[:depth]) + b"/") not in self._cache:
                depth -= 1
            if depth == 0 and b"" not in self._cache:
                tree = self.objects.read_tree(self.root_id)
                self._cache[b""] = {e.name: e for e in tree.entries}
            current = self._cache[b"/".join(parts[:depth]) + b"/" if depth else b""]
            for i in range(depth, len(parts)):
                entry = current.get(parts[i]) if current else None
                key = b"/".join(parts[: i + 1]) + b"/"
                if entry is None or entry.kind != KIND_TREE:
                    current = None
                else:
                    tree = self.objects.read_tree(entry.digest.hex())
                    current = {e.name: e for e in tree.entries}
                self._cache[key] = current
            result = current
        self._cache[rel_dir] = result
        return result

    def entry(self, rel_dir: bytes, name: bytes) -> TreeEntry | None:
        entries = self.entries_at(rel_dir)
        return entries.get(name) if entries else None
