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
from manifest.fingerprint import (
    RACY_NS,
    FileChangedError,
    NotRegularFile,
    StatCache,
    hash_file,
)
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


class _Folder:
    """One folder being scanned: its open descriptor, its entries so far, and the
    subfolders still to enter. The walk keeps these on an explicit stack, so no depth is
    too deep for Python (only for the OS's descriptor limit)."""

    __slots__ = ("entries", "fd", "files_before", "name", "rel", "subdirs")

    def __init__(self, fd: int, rel: bytes, name: bytes, files_before: int) -> None:
        self.fd = fd
        self.rel = rel  # b"" or ends with b"/"
        self.name = name
        self.files_before = files_before
        self.entries: list[TreeEntry] = []
        self.subdirs: list[bytes] = []


_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Scanner:
    # The hot loop inlines two common cases (plain mtime_size entries, stat-cache hits).
    # A test turns them off to check they agree with the general path.
    inline_fast_paths: bool = True

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
        on_walk: Callable[[int, int], None] | None = None,
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
        self.on_walk = on_walk
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
        self._skip_ids = set()
        for path in self.skip_dirs:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._skip_ids.add((st.st_dev, st.st_ino))
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RootError(os.fsdecode(self.root), "does not exist") from None
        except NotADirectoryError:
            raise RootError(os.fsdecode(self.root), "is not a directory") from None
        except OSError as exc:
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        root = _Folder(root_fd, b"", b"", 0)
        try:
            self._list_folder(root)
        except OSError as exc:
            os.close(root_fd)
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        root_id = self._walk(root)
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

    def _walk(self, root: _Folder) -> str:
        """Depth first, iteratively: enter each subfolder relative to its parent's open
        descriptor; when a folder is done, store its tree and add it to its parent."""
        stack = [root]
        try:
            while True:
                top = stack[-1]
                if top.subdirs:
                    child = self._enter(top, top.subdirs.pop())
                    if child is not None:
                        stack.append(child)
                        if len(stack) % 256 == 0:
                            _raise_fd_limit()
                    continue
                stack.pop()
                os.close(top.fd)
                top.fd = -1
                if self.on_walk is not None:
                    self.on_walk(self.files, self.bytes)
                if not stack:
                    return self._store_tree(top.entries)
                if top.entries:  # empty folders are not recorded (only files are)
                    oid = self._store_tree(top.entries)
                    stack[-1].entries.append(
                        TreeEntry(
                            top.name,
                            KIND_TREE,
                            self.files - top.files_before,
                            0,
                            bytes.fromhex(oid),
                        )
                    )
        finally:
            for folder in stack:
                if folder.fd >= 0:
                    os.close(folder.fd)

    def _enter(self, parent: _Folder, name: bytes) -> _Folder | None:
        """Open, check and list one subfolder; None when it is skipped, vanished or
        unreadable (then its base entry is carried over and a problem recorded)."""
        rel = parent.rel + name
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # ELOOP/ENOTDIR: no longer the folder the listing saw (a symlink or file swapped
            # in): never followed, a problem this time.
            self._problem(rel, exc)
            self._carry(parent.rel, name, parent.entries)
            return None
        folder = _Folder(fd, rel + b"/", name, self.files)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self._skip_ids:
                os.close(fd)
                return None
            self._list_folder(folder)
        except OSError as exc:
            os.close(fd)
            self._problem(rel, exc)
            self._carry(parent.rel, name, parent.entries)
            return None
        return folder

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

    def _list_dir(self, dir_fd: int, rel_dir: bytes) -> list[os.DirEntry[str]]:
        """The folder's entries (a hook for tests to race against). Listed through the open
        descriptor, so names come back as ``str`` (``os.fsdecode``d; ``fsencode`` restores
        the exact bytes)."""
        with os.scandir(dir_fd) as it:
            return list(it)

    def _list_folder(self, folder: _Folder) -> None:
        listing = self._list_dir(folder.fd, folder.rel)
        self._scan_listing(folder, listing)

    def _scan_listing(self, folder: _Folder, listing: list[os.DirEntry[str]]) -> None:
        rel_dir = folder.rel
        dir_fd = folder.fd
        entries = folder.entries
        subdirs = folder.subdirs
        append = entries.append
        filt = self.filter
        everything = filt.everything
        lstat = os.stat
        isreg = stat.S_ISREG
        # The two common cases, inlined: mtime_size mode with no stat cache to consult, and
        # content_hash mode where the stat cache already knows the file's digest.
        fast = self.inline_fast_paths
        plain_mtime = fast and not self.content and self.cache is None and not self.rehash_all
        cache = self.cache if self.content and not self.rehash_all else None
        known_here = cache.old.get(rel_dir) if cache is not None and fast else None
        seen_here: dict[bytes, IndexEntry] = {}
        after, before = self._unstable_after, self._unstable_before
        fsencode = os.fsencode
        for entry in listing:
            name = fsencode(entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if not everything and filt.skips_dir(path_to_text(rel_dir + name)):
                    continue
                subdirs.append(name)
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
                self._scan_file(rel_dir + name, rel_dir, name, st, entries, dir_fd)
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
        subdirs.reverse()  # popped from the end: enter them in listing order
        if seen_here and cache is not None:
            cache.new.setdefault(rel_dir, {}).update(seen_here)

    def _scan_file(
        self,
        rel: bytes,
        rel_dir: bytes,
        name: bytes,
        st: os.stat_result,
        entries: list[TreeEntry],
        dir_fd: int,
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
                digest, st = hash_file(rel, dir_fd=dir_fd, name=name, lstat=st)
            except FileNotFoundError:
                return
            except NotRegularFile:
                self.skipped.append(path_to_text(rel))
                return
            except FileChangedError:
                # still being written: like a file inside the cooldown, wait for it
                self.unstable.append(path_to_text(rel))
                self._carry(rel_dir, name, entries)
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


def _raise_fd_limit() -> None:
    """Deep trees keep one descriptor open per level: lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
