"""Walk the data root and build its tree objects in memory (one per folder, Merkle-style).

* ``os.scandir`` over bytes paths: names stay bytes, so non-UTF-8 names round-trip.
* Symlinks are never followed: each is recorded as a symlink entry whose fingerprint is the
  BLAKE3 of its target text. FIFOs, sockets and devices are skipped without being opened.
* The store is never entered if it lives under the root.
* A file that vanishes between listing and stat is absent. A file or folder that cannot be
  read is a ``ScanProblem``, and its entry from the base snapshot is carried over, so it is
  never mistaken for "removed".
* Files whose mtime is within the cooldown of now are unstable: their base entry is carried
  over unchanged (a new unstable file is simply not there yet).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Final

import msgspec
from blake3 import blake3

from manifest.errors import RootError
from manifest.fingerprint import RACY_NS, NotRegularFile, StatCache, hash_file
from manifest.globs import PathFilter
from manifest.model import (
    KIND_FILE,
    KIND_SYMLINK,
    KIND_TREE,
    IndexEntry,
    Tree,
    TreeEntry,
    encode_object,
    path_to_text,
)
from manifest.objects import ObjectStore

EMPTY_TREE: Final = Tree(entries=())
EMPTY_TREE_BYTES: Final = encode_object(EMPTY_TREE)
EMPTY_TREE_ID: Final = blake3(EMPTY_TREE_BYTES).hexdigest()

_by_name = attrgetter("name")


class ScanProblem(msgspec.Struct, frozen=True):
    path: str
    message: str


class ScanResult(msgspec.Struct):
    root_id: str
    trees: dict[str, bytes]
    """Every tree of the working tree: id -> encoded bytes (what a snapshot writes)."""
    files: int
    bytes: int
    unstable: list[str]
    problems: list[ScanProblem]
    skipped: list[str]
    """Special files (FIFOs, sockets, devices) left out."""
    hashed: int
    """Files whose bytes were read in this scan (content mode)."""
    started_ns: int


class BaseTrees:
    """Lazy access to the base snapshot's trees by folder path (for carry-over)."""

    def __init__(self, objects: ObjectStore | None, root_id: str | None) -> None:
        self.objects = objects
        self.root_id = root_id
        self._cache: dict[bytes, dict[bytes, TreeEntry] | None] = {}

    def entries_at(self, rel_dir: bytes) -> dict[bytes, TreeEntry] | None:
        if rel_dir in self._cache:
            return self._cache[rel_dir]
        result: dict[bytes, TreeEntry] | None
        if self.objects is None or self.root_id is None:
            result = None
        elif rel_dir == b"":
            tree = self.objects.read_tree(self.root_id)
            result = {e.name: e for e in tree.entries}
        else:
            parent, _, name = rel_dir.rstrip(b"/").rpartition(b"/")
            parent_entries = self.entries_at(parent + b"/" if parent else b"")
            entry = parent_entries.get(name) if parent_entries else None
            if entry is None or entry.kind != KIND_TREE:
                result = None
            else:
                tree = self.objects.read_tree(entry.digest.hex())
                result = {e.name: e for e in tree.entries}
        self._cache[rel_dir] = result
        return result

    def entry(self, rel_dir: bytes, name: bytes) -> TreeEntry | None:
        entries = self.entries_at(rel_dir)
        return entries.get(name) if entries else None


class Scanner:
    def __init__(
        self,
        root: bytes,
        *,
        mode: str,
        cooldown_ns: int,
        path_filter: PathFilter,
        skip_dirs: frozenset[bytes] = frozenset(),
        cache: StatCache | None = None,
        base: BaseTrees | None = None,
        rehash_all: bool = False,
        on_hash: Callable[[int], None] | None = None,
        now_ns: int | None = None,
    ) -> None:
        self.root = root
        self.mode = mode
        self.content = mode == "content_hash"
        # mtime_size mode has no content to fall back on, so a racy mtime must wait too.
        self.window_ns = cooldown_ns if self.content else max(cooldown_ns, RACY_NS)
        self.filter = path_filter
        self.skip_dirs = skip_dirs
        self.cache = cache
        self.base = base if base is not None else BaseTrees(None, None)
        self.rehash_all = rehash_all
        self.on_hash = on_hash
        self.now_ns = now_ns
        self.trees: dict[str, bytes] = {}
        self.unstable: list[str] = []
        self.problems: list[ScanProblem] = []
        self.skipped: list[str] = []
        self.files = 0
        self.bytes = 0
        self.hashed = 0

    def scan(self) -> ScanResult:
        started = time.time_ns()
        now = self.now_ns if self.now_ns is not None else started
        self._unstable_after = now - self.window_ns
        self._unstable_before = now + self.window_ns
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise RootError(os.fsdecode(self.root), "does not exist") from None
        except OSError as exc:
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise RootError(os.fsdecode(self.root), "is not a directory")
        try:
            entries = self._scan_dir(self.root, b"")
        except PermissionError as exc:
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        root_id = self._store_tree(entries)
        self.unstable.sort()
        self.problems.sort(key=attrgetter("path"))
        self.skipped.sort()
        return ScanResult(
            root_id=root_id,
            trees=self.trees,
            files=self.files,
            bytes=self.bytes,
            unstable=self.unstable,
            problems=self.problems,
            skipped=self.skipped,
            hashed=self.hashed,
            started_ns=started,
        )

    def _store_tree(self, entries: list[TreeEntry]) -> str:
        entries.sort(key=_by_name)
        data = encode_object(Tree(entries=tuple(entries)))
        oid = blake3(data).hexdigest()
        self.trees[oid] = data
        return oid

    def _carry(self, rel_dir: bytes, name: bytes, entries: list[TreeEntry]) -> None:
        """Keep the base snapshot's entry for ``name`` (unstable or unreadable)."""
        old = self.base.entry(rel_dir, name)
        if old is None:
            return
        entries.append(old)
        if old.kind == KIND_TREE:
            self.files += old.size
            if self.cache is not None:
                self.cache.keep_below(rel_dir + name + b"/")
        else:
            self.files += 1
            self.bytes += old.size if old.kind == KIND_FILE else 0
            if self.cache is not None:
                self.cache.keep(rel_dir + name)

    def _problem(self, rel: bytes, exc: OSError | str) -> None:
        message = exc if isinstance(exc, str) else (exc.strerror or str(exc))
        self.problems.append(ScanProblem(path_to_text(rel), message))

    def _list_dir(self, abs_dir: bytes) -> list[os.DirEntry[bytes]]:
        with os.scandir(abs_dir) as it:
            return list(it)

    def _scan_dir(self, abs_dir: bytes, rel_dir: bytes) -> list[TreeEntry]:
        listing = self._list_dir(abs_dir)
        # lstat relative to an open folder: the kernel resolves one name, not the whole path.
        dir_fd = os.open(abs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return self._scan_listing(abs_dir, rel_dir, listing, dir_fd)
        finally:
            os.close(dir_fd)

    def _scan_listing(
        self, abs_dir: bytes, rel_dir: bytes, listing: list[os.DirEntry[bytes]], dir_fd: int
    ) -> list[TreeEntry]:
        entries: list[TreeEntry] = []
        append = entries.append
        filt = self.filter
        everything = filt.everything
        lstat = os.stat
        isreg = stat.S_ISREG
        # The two common cases, inlined: mtime_size mode with no stat cache to consult, and
        # content_hash mode where the stat cache already knows the file's digest.
        plain_mtime = not self.content and self.cache is None and not self.rehash_all
        cache = self.cache if self.content and not self.rehash_all else None
        known_here = cache.old.get(rel_dir) if cache is not None else None
        seen_here: dict[bytes, IndexEntry] = {}
        after, before = self._unstable_after, self._unstable_before
        for entry in listing:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                rel = rel_dir + name
                if entry.path in self.skip_dirs:
                    continue
                if not everything and filt.skips_dir(path_to_text(rel)):
                    continue
                self._scan_subdir(entry.path, rel, rel_dir, name, entries)
                continue
            if not everything and not filt.wants_file(path_to_text(rel_dir + name)):
                continue
            try:
                st = lstat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between listing and stat: simply absent
            except OSError as exc:
                self._problem(rel_dir + name, exc)
                self._carry(rel_dir, name, entries)
                continue
            if isreg(st.st_mode):
                mtime = st.st_mtime_ns
                if plain_mtime and not after < mtime < before:
                    append(TreeEntry(name, KIND_FILE, st.st_size, mtime, b""))
                    self.files += 1
                    self.bytes += st.st_size
                    continue
                if known_here is not None and not after < mtime < before:
                    known = known_here.get(name)
                    if (
                        known is not None
                        and known.mtime_ns == mtime
                        and known.size == st.st_size
                        and known.ctime_ns == st.st_ctime_ns
                        and known.ino == st.st_ino
                    ):  # StatCache.lookup, inlined
                        seen_here[name] = known
                        append(TreeEntry(name, KIND_FILE, st.st_size, 0, known.digest))
                        self.files += 1
                        self.bytes += st.st_size
                        continue
                self._scan_file(
                    abs_dir + b"/" + name, rel_dir + name, rel_dir, name, st, entries, dir_fd
                )
            elif stat.S_ISLNK(st.st_mode):
                rel = rel_dir + name
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._problem(rel, exc)
                    self._carry(rel_dir, name, entries)
                    continue
                append(TreeEntry(name, KIND_SYMLINK, len(target), 0, blake3(target).digest()))
                self.files += 1
            else:
                self.skipped.append(path_to_text(rel_dir + name))
        if seen_here and cache is not None:
            cache.new.setdefault(rel_dir, {}).update(seen_here)
        return entries

    def _scan_subdir(
        self, abs_dir: bytes, rel: bytes, rel_dir: bytes, name: bytes, entries: list[TreeEntry]
    ) -> None:
        files_before = self.files
        try:
            sub = self._scan_dir(abs_dir, rel + b"/")
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(rel, exc)
            self._carry(rel_dir, name, entries)
            return
        if not sub:
            return  # empty folders are not recorded (only files are)
        oid = self._store_tree(sub)
        entries.append(TreeEntry(name, KIND_TREE, self.files - files_before, 0, bytes.fromhex(oid)))

    def _scan_file(
        self,
        abs_path: bytes,
        rel: bytes,
        rel_dir: bytes,
        name: bytes,
        st: os.stat_result,
        entries: list[TreeEntry],
        dir_fd: int | None = None,
    ) -> None:
        mtime = st.st_mtime_ns
        if self._unstable_after < mtime < self._unstable_before:
            self.unstable.append(path_to_text(rel))
            self._carry(rel_dir, name, entries)
            return
        cache = self.cache
        digest = None
        if cache is not None and not self.rehash_all:
            digest = cache.lookup(rel, st)
        if digest is None and (self.content or self.rehash_all):
            try:
                digest, st = hash_file(abs_path, dir_fd=dir_fd, name=name, lstat=st)
            except FileNotFoundError:
                return
            except NotRegularFile:
                self.skipped.append(path_to_text(rel))
                return
            except OSError as exc:
                self._problem(rel, exc)
                self._carry(rel_dir, name, entries)
                return
            self.hashed += 1
            if self.on_hash is not None:
                self.on_hash(st.st_size)
            if cache is not None:
                cache.record(rel, st, digest)
        if self.content:
            entries.append(TreeEntry(name, KIND_FILE, st.st_size, 0, digest or b""))
        else:
            # mtime_size mode: the last known content hash rides along when the stat cache
            # has one for this very stat (recorded by a full-hash check); diffs compare
            # digests only when both sides have one.
            entries.append(TreeEntry(name, KIND_FILE, st.st_size, st.st_mtime_ns, digest or b""))
        self.files += 1
        self.bytes += st.st_size
