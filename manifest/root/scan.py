"""Walk the data root and build its tree objects (one per folder, Merkle-style).

* Every file and folder is opened relative to its parent's descriptor, with ``O_NOFOLLOW``:
  names stay bytes (non-UTF-8 names round-trip) and nothing swapped in is ever followed.
* Symlinks are recorded, not followed: a symlink entry's fingerprint is the BLAKE3 of its
  target text. FIFOs, sockets and devices are skipped without being opened.
* The store is never entered if it lives under the root.
* A file that vanishes between listing and stat is absent. A file or folder that cannot be
  read is a ``ScanProblem``, and its entry from the base snapshot is carried over, so it is
  never mistaken for "removed".
* Files whose mtime is within the cooldown of now are unstable: their base entry is carried
  over unchanged (a new unstable file is simply not there yet).

Speed (``docs/benchmarks.md``): each folder's listing and stats hash to a *signature*; a
folder whose signature is the one in the stat cache (``manifest.root.index``) reuses its recorded
tree id and file counts, and no entry of it is decoded, built or encoded. Big trees are
split into subtrees scanned by worker processes (``manifest.root.pool``), one per core.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from itertools import compress, count
from operator import attrgetter
from typing import TYPE_CHECKING, Final

import msgspec
from blake3 import blake3

from manifest import fingerprint
from manifest.errors import RootError
from manifest.fingerprint import FileChangedError, NotRegularFile, hash_file
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
from manifest.root.index import (
    F_FILE,
    F_OTHER,
    F_SMUDGED,
    FILEISH,
    NOT_FILE_MASK,
    CacheView,
    FolderHead,
    Recorded,
    Row,
    decode_payload,
    encode_payload,
    encode_rows,
    file_stats,
    tree_files,
)
from manifest.scanresult import BaseTrees, ScanProblem, ScanResult, TreeSource
from manifest.scanresult import recorded_files as _recorded_files

if TYPE_CHECKING:
    import subprocess

EMPTY_TREE: Final = Tree(entries=())
EMPTY_TREE_BYTES: Final = encode_object(EMPTY_TREE)
EMPTY_TREE_ID: Final = blake3(EMPTY_TREE_BYTES).hexdigest()

_by_name = attrgetter("name")
_SIG_ENCODER: Final = msgspec.msgpack.Encoder()
_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()


class _Folder:
    """One folder being scanned: its open descriptor, its entries so far, the subfolders
    still to enter, and what the stat cache will record of it. The walk keeps these on an
    explicit stack, so no depth is too deep for Python (only for the descriptor limit)."""

    __slots__ = (
        "clean",
        "digests",
        "eligible",
        "encoded",
        "entries",
        "fd",
        "flags",
        "hi",
        "keep_record",
        "lo",
        "name",
        "nbytes",
        "nfiles",
        "rel",
        "rows",
        "same",
        "signature",
        "subdirs",
        "trees",
    )

    def __init__(self, fd: int, rel: bytes, name: bytes) -> None:
        self.fd = fd
        self.rel = rel  # b"" or ends with b"/"
        self.name = name
        self.entries: list[TreeEntry] = []  # symlinks and carried entries
        # the listing's rows, as the stat cache records them, with each row's digest and
        # flag (the tree entries of the files are built only when the tree changed), and
        # the rows' encoding with their offsets while it is known
        self.rows: list[Row] = []
        self.digests: list[bytes] = []
        self.flags = bytearray()
        self.encoded: tuple[bytes, bytes] | None = None
        # the recorded record is as good as a new one would be (see ``_only_racy``)
        self.keep_record = False
        self.same: FolderHead | None = None  # the files are exactly as in this head's tree
        self.trees: list[TreeEntry] = []  # subfolders scanned
        self.subdirs: list[bytes] = []
        # the stat cache: the head that matched, or what to record
        self.clean: FolderHead | None = None
        self.signature = b""
        self.eligible = True  # a signature can be trusted (nothing racy, special, carried)
        self.nfiles = 0
        self.nbytes = 0
        self.lo = 0
        self.hi = 0


_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _encoded(rows: list[Row]) -> bytes | None:
    """A folder's listing with each file's stat, encoded (its BLAKE3 is the folder's
    signature); None if it cannot be (a name that is not UTF-8: such a folder is always
    scanned the general way)."""
    try:
        return _SIG_ENCODER.encode(rows)
    except (UnicodeEncodeError, msgspec.EncodeError):
        return None


class Scanner:
    # The hot loops have fast paths (a folder whose signature matches the stat cache, plain
    # mtime_size entries, stat-cache hits). A test turns them off to check they agree with
    # the general path.
    inline_fast_paths: bool = True
    # the racy rule's clock, read before each folder is listed (tests fix it)
    clock: Callable[[], int] = staticmethod(time.time_ns)

    def __init__(
        self,
        root: bytes,
        *,
        mode: str,
        cooldown_ns: int,
        path_filter: PathFilter,
        skip_dirs: frozenset[bytes] = frozenset(),
        cache: CacheView | None = None,
        base: BaseTrees | None = None,
        rehash_all: bool = False,
        on_hash: Callable[[int], None] | None = None,
        now_ns: int | None = None,
        on_walk: Callable[[int, int], None] | None = None,
        jobs: int = 1,
        racy_ns: int | None = None,
        expected_files: int | None = None,
        jobs_forced: bool = False,
    ) -> None:
        self.root = root
        self.mode = mode
        self.content = mode == "content_hash"
        self.racy_ns = fingerprint.RACY_NS if racy_ns is None else racy_ns
        # mtime_size mode has no content to fall back on, so a racy mtime must wait too.
        self.window_ns = cooldown_ns if self.content else max(cooldown_ns, self.racy_ns)
        self.filter = path_filter
        self.skip_dirs = skip_dirs
        self.cache = cache
        self.base = base if base is not None else BaseTrees(None, None)
        self.rehash_all = rehash_all
        self.on_hash = on_hash
        self.on_walk = on_walk
        self.now_ns = now_ns
        self.jobs = jobs
        self.expected_files = expected_files  # from the base snapshot or the stat cache
        self.jobs_forced = jobs_forced  # MANIFEST_JOBS: split whatever the size
        self.trees: dict[str, bytes] = {}
        self.clean_trees: dict[str, bytes] = {}
        self.unstable: list[str] = []
        self.problems: list[ScanProblem] = []
        self.skipped: list[str] = []
        self.files = 0
        self.bytes = 0
        self.hashed = 0
        self.skip_ids: set[tuple[int, int]] = set()
        # workers already started (``manifest.root.pool.start_spares``), taken before new ones
        self.spares: list[subprocess.Popen[bytes]] = []
        # how to share the tree out over ``jobs`` processes (``manifest.root.pool``'s
        # ``scan_in_parallel``, given by the caller: the walk does not know the workers)
        self.parallel: Callable[[Scanner, _Folder], tuple[str, int]] | None = None
        # the watcher's journal (``manifest.root.local``): for a subfolder of a listed folder,
        # its base entry when nothing below it changed (taken as it is: the folder is not
        # entered), False when it recorded nothing and nothing below it changed (left out),
        # None to enter it
        self.reuse: Callable[[bytes, bytes], TreeEntry | bool | None] | None = None
        self._unstable_after = 0
        self._unstable_before = 0

    # -- the whole tree -------------------------------------------------------------------

    def scan(self) -> ScanResult:
        started = time.time_ns()
        now = self.now_ns if self.now_ns is not None else started
        self.set_window(now)
        for path in self.skip_dirs:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self.skip_ids.add((st.st_dev, st.st_ino))
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RootError(os.fsdecode(self.root), "does not exist") from None
        except NotADirectoryError:
            raise RootError(os.fsdecode(self.root), "is not a directory") from None
        except OSError as exc:
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        root = _Folder(root_fd, b"", b"")
        try:
            self._list_folder(root)
        except OSError as exc:
            os.close(root_fd)
            raise RootError(os.fsdecode(self.root), f"cannot be read ({exc.strerror})") from exc
        jobs = 1
        if self.jobs > 1 and root.subdirs and self.parallel is not None:
            root_id, jobs = self.parallel(self, root)
        else:
            root_id = self.walk(root, None)
        self.unstable.sort()
        self.problems.sort(key=attrgetter("path"))
        self.skipped.sort()
        return ScanResult(
            root_id=root_id,
            trees=TreeSource(self.trees, self.clean_trees, self.cache, self.content),
            files=self.files,
            bytes=self.bytes,
            unstable=self.unstable,
            problems=self.problems,
            skipped=self.skipped,
            hashed=self.hashed,
            started_ns=started,
            jobs=jobs,
        )

    def set_window(self, now: int) -> None:
        self._unstable_after = now - self.window_ns
        self._unstable_before = now + self.window_ns

    def walk(self, top: _Folder, parent: _Folder | None) -> str:
        """Scan everything below the listed folder ``top``, depth first and iteratively:
        enter each subfolder relative to its parent's open descriptor; when a folder is
        done, store its tree and add it to its parent (to ``parent`` for ``top``)."""
        stack = [top]
        try:
            while True:
                current = stack[-1]
                if current.subdirs:
                    child = self.enter(current, current.subdirs.pop())
                    if child is not None:
                        stack.append(child)
                        if len(stack) % 256 == 0:
                            _raise_fd_limit()
                    continue
                stack.pop()
                oid = self.finish(current, stack[-1] if stack else parent)
                os.close(current.fd)
                current.fd = -1
                if self.on_walk is not None:
                    self.on_walk(self.files, self.bytes)
                if not stack:
                    return oid
        finally:
            for folder in stack:
                if folder.fd >= 0:
                    os.close(folder.fd)

    def enter(self, parent: _Folder, name: bytes) -> _Folder | None:
        """Open, check and list one subfolder; None when it is skipped, vanished or
        unreadable (then its base entry is carried over and a problem recorded)."""
        rel = parent.rel + name
        if self.reuse is not None:
            kept = self.reuse(parent.rel, name)
            if kept is not None:
                if kept is not False and kept is not True:
                    parent.trees.append(kept)
                    self.files += kept.size
                return None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # ELOOP/ENOTDIR: no longer the folder the listing saw (a symlink or file swapped
            # in): never followed, a problem this time.
            self._problem(rel, exc)
            self.carry(parent, name)
            return None
        folder = _Folder(fd, rel + b"/", name)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.skip_ids:
                os.close(fd)
                return None
            self._list_folder(folder)
        except OSError as exc:
            os.close(fd)
            self._problem(rel, exc)
            self.carry(parent, name)
            return None
        return folder

    def finish(self, folder: _Folder, parent: _Folder | None) -> str:
        """Store a folder whose subfolders are all done, record it in the stat cache and
        add its entry to ``parent``. Returns its tree id."""
        folder.trees.sort(key=_by_name)
        subdirs = tuple(folder.trees)
        head = folder.clean
        cache = self.cache
        content = self.content
        oid: str | None = None
        if head is not None and cache is not None:
            # the fast path matched: the recorded files, perhaps new subfolder entries
            if head.subdirs == subdirs:
                oid = head.tree.hex()
                self.clean_trees[oid] = folder.rel
                cache.keep(folder.rel)
            else:
                payload = cache.payload(folder.rel)
                recorded = decode_payload(payload) if payload is not None else None
                files = _recorded_files(recorded, content)
                if payload is not None and files is not None:
                    oid = self._store_tree(files + list(subdirs))
                    cache.put(
                        msgspec.structs.replace(head, tree=bytes.fromhex(oid), subdirs=subdirs),
                        payload,
                    )
            if oid is None:  # the cache's payload is gone: list the folder the general way
                folder.clean = None
                self.files -= head.files
                self.bytes -= head.nbytes
                self._scan_listing(folder, self._list_dir(folder.fd, folder.rel), self.clock())
                folder.subdirs.clear()  # its subfolders are done already
        if oid is None:
            same = folder.same
            if same is not None and same.subdirs == subdirs:
                # stats changed, entries did not (a touch in content mode): the recorded tree
                oid = same.tree.hex()
                self.clean_trees[oid] = folder.rel
            else:
                files = tree_files(folder.rows, folder.digests, folder.flags, content)
                oid = self._store_tree(folder.entries + files + list(subdirs))
            if cache is not None and folder.keep_record and cache.trusted:
                cache.keep(folder.rel)
            elif cache is not None:
                eligible = folder.eligible and bool(folder.signature)
                cache.put(
                    FolderHead(
                        folder.rel,
                        folder.signature if eligible else b"",
                        bytes.fromhex(oid),
                        folder.nfiles,
                        folder.nbytes,
                        folder.lo,
                        folder.hi,
                        subdirs,
                        not folder.entries,
                    ),
                    encode_payload(folder.rows, folder.digests, folder.flags, folder.encoded),
                )
        direct = len(folder.entries) + folder.nfiles if folder.clean is None else folder.clean.files
        if parent is not None and (direct or subdirs):
            # empty folders are not recorded (only files are)
            count = direct + sum(t.size for t in subdirs)
            parent.trees.append(TreeEntry(folder.name, KIND_TREE, count, 0, bytes.fromhex(oid)))
        return oid

    def _store_tree(self, entries: list[TreeEntry]) -> str:
        entries.sort(key=_by_name)
        data = encode_object(Tree(entries=tuple(entries)))
        oid = blake3(data).hexdigest()
        self.trees[oid] = data
        return oid

    def carry(self, folder: _Folder, name: bytes) -> None:
        """Keep the base snapshot's entry for ``name`` (unstable or unreadable)."""
        folder.eligible = False
        old = self.base.entry(folder.rel, name)
        if old is None:
            return
        if old.kind == KIND_TREE:
            folder.trees.append(old)
            self.files += old.size
            if self.cache is not None:
                self.cache.keep_below(folder.rel + name + b"/")
        else:
            folder.entries.append(old)
            self.files += 1
            self.bytes += old.size if old.kind == KIND_FILE else 0

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
        stamp = self.clock()  # before any stat: the racy rule's reference
        listing = self._list_dir(folder.fd, folder.rel)
        taken = self._matches_cache(folder, listing)
        if taken is True:
            return
        if taken is False:
            self._scan_listing(folder, listing, stamp)
        else:
            self._scan_listing(folder, listing, stamp, *taken)

    def _matches_cache(
        self, folder: _Folder, listing: list[os.DirEntry[str]]
    ) -> bool | tuple[list[os.stat_result | None], list[Row], bytes | None]:
        """The fast path: the listing and every stat hash to the recorded signature, and
        no mtime is inside the unstable window. Then the folder's files are the recorded
        ones (same names, same stats, so the same digests) and nothing is built: True.
        Else False, or the stats taken (one per listing entry, None for a folder), the
        signature rows built from them and their encoding, which the general path then
        uses instead of taking them again. A folder the cache knows but recorded no
        signature for (it had a racy file) is stat'ed here too: the general path then only
        looks at the files whose stat is not the recorded one."""
        cache = self.cache
        if cache is None or self.rehash_all or not self.inline_fast_paths:
            return False
        head = cache.head(folder.rel)
        if head is None:
            return False
        dir_fd = folder.fd
        lstat = os.stat
        rows: list[Row] = []
        append = rows.append
        dirs: list[str] = []
        stats: list[os.stat_result | None] = []
        keep = stats.append
        try:
            for entry in listing:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(name)
                    append((name,))
                    keep(None)
                else:
                    st = lstat(name, dir_fd=dir_fd, follow_symlinks=False)
                    keep(st)
                    append(
                        (name, st.st_mode, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
                    )
        except OSError:
            return False
        encoded = _encoded(rows)
        if (
            not head.signature
            or encoded is None
            or blake3(encoded).digest() != head.signature
            or not (head.hi <= self._unstable_after or head.lo >= self._unstable_before)
        ):
            return stats, rows, encoded
        folder.clean = head
        filt = self.filter
        for name in dirs:
            raw = name.encode(_FS_ENCODING, _FS_ERRORS)
            if filt.everything or not filt.skips_dir(path_to_text(folder.rel + raw)):
                folder.subdirs.append(raw)
        folder.subdirs.reverse()  # popped from the end: enter them in listing order
        self.files += head.files
        self.bytes += head.nbytes
        return True

    def _scan_listing(
        self,
        folder: _Folder,
        listing: list[os.DirEntry[str]],
        stamp: int,
        stats: list[os.stat_result | None] | None = None,
        taken_rows: list[Row] | None = None,
        encoded: bytes | None = None,
    ) -> None:
        """List one folder the general way. ``stats``, ``taken_rows`` and ``encoded`` are
        what ``_matches_cache`` took (then no entry is stat'ed twice) and the rows encoded
        as the signature encodes them (None: a name is not UTF-8).

        With them, the rows are first compared with the recorded ones: when the folder has
        as many rows as recorded, only the rows that changed (found by comparing the
        encodings, ``Recorded.changed``) and those the cache holds no digest for are looked
        at; the others keep their recorded digests, nothing being built for them. Else the
        files whose row is a recorded file's are settled by name, in a lean loop. A folder
        with one edited file in a hundred costs little more than a clean one."""
        rel_dir = folder.rel
        dir_fd = folder.fd
        entries = folder.entries
        subdirs = folder.subdirs
        append = entries.append
        filt = self.filter
        everything = filt.everything
        lstat = os.stat
        isreg = stat.S_ISREG
        fast = self.inline_fast_paths
        cache = self.cache
        recorded = cache.recorded(rel_dir) if cache is not None and not self.rehash_all else None
        recorded_files = recorded.n - recorded.flags.count(F_OTHER) if recorded is not None else 0
        head = cache.head(rel_dir) if cache is not None and recorded is not None else None
        # the files may turn out exactly as in the recorded tree (then it is not rebuilt)
        same = head if head is not None and head.pure and recorded_files else None
        # The common cases, inlined: a plain mtime_size entry the cache has no digest for,
        # and a stat-cache hit.
        plain_mtime = fast and not self.content and not self.rehash_all
        racy_after = stamp - self.racy_ns
        after, before = self._unstable_after, self._unstable_before
        encoding, errors = _FS_ENCODING, _FS_ERRORS  # os.fsencode, without its call cost
        content = self.content
        small_hashed = small_bytes = 0
        hash_inline = fast and (content or self.rehash_all)
        taken = taken_rows is not None and stats is not None
        rows: list[Row] = taken_rows if taken_rows is not None and taken else []
        # per row: the digest the cache records, and its flag (F_OTHER until settled)
        digests: list[bytes] = [b""] * len(rows)
        flags = bytearray(len(rows))
        # the rows' encoding with their offsets, while it is valid for ``rows``
        folder.encoded = None
        positions: Iterable[int] = range(len(listing))
        redo: list[int] = []
        found: list[int] = []
        aligned = False  # each row's recorded entry is the recorded row at the same place
        by_name: dict[bytes, int] = {}
        if recorded is not None and taken and fast:
            changed = recorded.changed(encoded, rows)
            if changed is not None:
                aligned = True
                found, offsets_hold = changed
                if offsets_hold and encoded is not None:
                    folder.encoded = (encoded, recorded.offsets_bytes)
                digests = list(recorded.digests)
                flags = bytearray(recorded.flags)
                redo = found
                # rows the cache has no digest for (folders, symlinks, racy files...), or
                # whose mtime may be in the unstable window: looked at again
                if flags.count(F_FILE) != len(flags):
                    again = set(found)
                    again.update(compress(count(), flags.translate(NOT_FILE_MASK)))
                    redo = sorted(again)
                if head is None or not (head.hi <= after or head.lo >= before):
                    unsettled = [
                        i for i, row in enumerate(rows) if len(row) > 1 and after < row[2] < before
                    ]
                    if unsettled:
                        redo = sorted({*redo, *unsettled})
                for i in redo:
                    flags[i] = F_OTHER
                    digests[i] = b""
                positions = redo
            else:
                by_name = recorded.by_name()
                if by_name:
                    # The lean loop: every file whose row is a recorded file's (outside the
                    # unstable window: recorded when it was not racy, so it still is not).
                    # The rest (folders too) go to the general loop below.
                    recorded_rows = recorded.rows()
                    recorded_flags = recorded.flags
                    recorded_digests = recorded.digests
                    rest: list[int] = []
                    for position, taken_row in enumerate(rows):
                        if len(taken_row) != 1:
                            slot = by_name.get(taken_row[0].encode(encoding, errors))
                            if (
                                slot is not None
                                and recorded_flags[slot] == F_FILE
                                and recorded_rows[slot] == taken_row
                                and not after < taken_row[2] < before
                            ):
                                flags[position] = F_FILE
                                digests[position] = recorded_digests[slot]
                                continue
                        rest.append(position)
                    positions = rest
        elif recorded is not None:
            by_name = recorded.by_name()
        replaced = False  # a row was replaced by the stat its file was hashed at
        for position in positions:
            entry = listing[position]
            text = entry.name
            name = text.encode(encoding, errors)
            if taken:
                st_taken = stats[position]  # type: ignore[index]
                is_dir = st_taken is None
                ri = position
            else:
                st_taken = None
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
            if is_dir:
                if not taken:
                    rows.append((text,))
                    digests.append(b"")
                    flags.append(F_OTHER)
                if not everything and filt.skips_dir(path_to_text(rel_dir + name)):
                    continue
                subdirs.append(name)
                continue
            try:
                st = st_taken or lstat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                folder.eligible = False
                continue  # vanished between listing and stat: simply absent
            except OSError as exc:
                if everything or filt.wants_file(path_to_text(rel_dir + name)):
                    self._problem(rel_dir + name, exc)
                    self.carry(folder, name)
                folder.eligible = False
                continue
            mtime = st.st_mtime_ns
            if not taken:
                ri = len(rows)
                rows.append((text, st.st_mode, mtime, st.st_size, st.st_ino, st.st_ctime_ns))
                digests.append(b"")
                flags.append(F_OTHER)
            if not everything and not filt.wants_file(path_to_text(rel_dir + name)):
                continue
            if isreg(st.st_mode):
                if after < mtime < before:
                    self.unstable.append(path_to_text(rel_dir + name))
                    self.carry(folder, name)
                    same = None
                    continue
                size = st.st_size
                known: IndexEntry | None = None
                if aligned:
                    known = recorded.entry(position)  # type: ignore[union-attr]
                    if known is None or known.name != name:
                        # another entry was in its place (the listing's order changed)
                        slot = recorded.by_name().get(name)  # type: ignore[union-attr]
                        known = recorded.entry(slot) if slot is not None else None  # type: ignore[union-attr]
                elif by_name:
                    slot = by_name.get(name)
                    if slot is not None:
                        known = recorded.entry(slot)  # type: ignore[union-attr]
                if (
                    known is not None
                    and known.mtime_ns == mtime
                    and known.size == size
                    and known.ctime_ns == st.st_ctime_ns
                    and known.ino == st.st_ino
                ):
                    # a stat-cache hit: recorded when it was not racy, so it still is not
                    digests[ri] = known.digest
                    flags[ri] = F_FILE
                    continue
                if plain_mtime:
                    digest = b""
                elif (
                    hash_inline
                    and 0 < size < SMALL_FILE
                    and (data := _read_small(name, dir_fd, size)) is not None
                ):
                    # hash_file's common case, inlined: one read of a small file that
                    # returned exactly the bytes the stat promised
                    digest = blake3(data).digest()
                    small_hashed += 1
                    small_bytes += size
                else:
                    hashed = self._hash(folder, name, st)
                    if hashed is None:
                        same = None
                        continue
                    digest, hashed_st = hashed
                    if (mtime, size, st.st_ino, st.st_ctime_ns) != (
                        hashed_st.st_mtime_ns,
                        hashed_st.st_size,
                        hashed_st.st_ino,
                        hashed_st.st_ctime_ns,
                    ):
                        # the hashed bytes are not what the listing's stat saw: record the
                        # stat they were hashed at
                        st = hashed_st
                        size = st.st_size
                        mtime = st.st_mtime_ns
                        rows[ri] = (text, st.st_mode, mtime, size, st.st_ino, st.st_ctime_ns)
                        replaced = True
                        folder.eligible = False
                digests[ri] = digest
                if mtime >= racy_after or st.st_ctime_ns >= racy_after:
                    # git's racy rule: a same-size edit within the timestamp granularity
                    # of this listing would leave the stat unchanged: smudge, so it is
                    # re-hashed next time
                    flags[ri] = F_SMUDGED
                    folder.eligible = False
                else:
                    flags[ri] = F_FILE
                if same is not None and (
                    known is None
                    or known.size != size
                    or known.digest != digest
                    or (not content and known.mtime_ns != mtime)
                ):
                    same = None  # its tree entry differs
            elif stat.S_ISLNK(st.st_mode):
                folder.eligible = False
                same = None
                rel = rel_dir + name
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._problem(rel, exc)
                    self.carry(folder, name)
                    continue
                append(TreeEntry(name, KIND_SYMLINK, len(target), 0, blake3(target).digest()))
                self.files += 1
            else:
                folder.eligible = False
                self.skipped.append(path_to_text(rel_dir + name))
        subdirs.reverse()  # popped from the end: enter them in listing order
        folder.keep_record = (
            recorded is not None
            and aligned
            and not replaced
            and _only_racy(redo, found, flags, digests, recorded)
        )
        counted = _counted_after(head, recorded, redo, rows, flags) if aligned else None
        nfiles, nbytes, lo, hi = counted or file_stats(rows, flags)
        if same is not None and (nfiles != recorded_files or folder.entries):
            same = None  # a file gone, or a symlink or carried entry: build the tree
        folder.same = same
        folder.rows, folder.digests, folder.flags = rows, digests, flags
        if small_hashed:
            self.hashed += small_hashed
            if self.on_hash is not None:
                self.on_hash(small_bytes)
        self.files += nfiles
        self.bytes += nbytes
        folder.nfiles, folder.nbytes = nfiles, nbytes
        folder.lo, folder.hi = lo, hi
        if replaced:
            folder.encoded = None
        if folder.eligible:
            if taken and encoded is not None and not replaced:
                folder.signature = blake3(encoded).digest()
            else:
                data, offsets, textual = encode_rows(rows)
                folder.encoded = (data, offsets)
                folder.signature = blake3(data).digest() if textual else b""

    def _hash(
        self, folder: _Folder, name: bytes, st: os.stat_result
    ) -> tuple[bytes, os.stat_result] | None:
        """Hash one file (content mode or a full-hash check); None when it is absent,
        special, still being written or unreadable (then its base entry is carried)."""
        rel = folder.rel + name
        if not (self.content or self.rehash_all):
            return b"", st
        try:
            digest, st = hash_file(rel, dir_fd=folder.fd, name=name, lstat=st)
        except FileNotFoundError:
            folder.eligible = False
            return None
        except NotRegularFile:
            folder.eligible = False
            self.skipped.append(path_to_text(rel))
            return None
        except FileChangedError:
            # still being written: like a file inside the cooldown, wait for it
            self.unstable.append(path_to_text(rel))
            self.carry(folder, name)
            return None
        except OSError as exc:
            self._problem(rel, exc)
            self.carry(folder, name)
            return None
        self.hashed += 1
        if self.on_hash is not None:
            self.on_hash(st.st_size)
        return digest, st


def _counted_after(
    head: FolderHead | None,
    recorded: Recorded | None,
    redo: list[int],
    rows: list[Row],
    flags: bytearray,
) -> tuple[int, int, int, int] | None:
    """``file_stats`` of a folder whose rows other than ``redo`` are the recorded ones: the
    recorded counts, corrected by the ``redo`` rows, and the recorded mtime range widened by
    theirs (so a bound, never narrower than the files' range: all the unstable-window checks
    need). None when it cannot tell (then the rows are counted)."""
    if head is None or recorded is None:
        return None
    nbytes = head.nbytes
    lo, hi = head.lo, head.hi
    have = head.files > 0
    recorded_flags = recorded.flags
    try:
        for i in redo:
            if recorded_flags[i] in FILEISH:
                nbytes -= recorded.row(i)[3]
            if flags[i] in FILEISH:
                row = rows[i]
                nbytes += row[3]
                mtime = row[2]
                if not have:
                    lo = hi = mtime
                    have = True
                elif mtime < lo:
                    lo = mtime
                elif mtime > hi:
                    hi = mtime
    except (msgspec.DecodeError, IndexError):
        return None
    nfiles = len(flags) - flags.count(F_OTHER)
    return (nfiles, nbytes, lo, hi) if nfiles else (0, 0, 0, 0)


def _only_racy(
    redo: list[int],
    changed: list[int],
    flags: bytearray,
    digests: list[bytes],
    recorded: Recorded,
) -> bool:
    """Whether a folder's recorded record serves the next scan as well as a new one would:
    every row that changed is now recorded racy (so it would be hashed again next time
    anyway, as its changed row makes it be under the recorded record), and every other row
    looked at again is recorded as it was. Then the record is kept, not rewritten: a touch
    of many files just before a scan (a sync, a checkout) writes nothing to the cache, and
    the next scan, once they have settled, records them. Nothing changed: False (a folder
    that can have a signature again gets one)."""
    if not changed:
        return False
    racy = set(changed)
    for i in redo:
        if i in racy:
            if flags[i] != F_SMUDGED:
                return False
        elif flags[i] != recorded.flags[i] or digests[i] != recorded.digests[i]:
            return False
    return True


SMALL_FILE: Final = 1 << 20
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_small(name: bytes, dir_fd: int, size: int) -> bytes | None:
    """All ``size`` bytes of a small regular file, read once (``hash_file``'s fast path:
    opened relative to its folder, never following a symlink, never blocking); None when
    anything differs from what the stat said (then ``hash_file`` takes over)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def open_folder(root_fd: int, rel: bytes) -> int:
    """Open ``rel`` (``b""`` or ending in ``/``) below ``root_fd`` one name at a time, each
    with ``O_NOFOLLOW``: a symlink swapped in anywhere on the way is never followed."""
    fd = os.dup(root_fd)
    try:
        for part in rel.rstrip(b"/").split(b"/") if rel else ():
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raise_fd_limit() -> None:
    """Deep trees keep one descriptor open per level: lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
