"""File fingerprints: BLAKE3 of the bytes, and the stat cache that avoids re-hashing.

The stat cache (``<store>/index``, like git's index and DVC's state db) remembers, per path,
the (size, mtime_ns, inode, ctime_ns) at which a digest was computed. A file is re-hashed
only when that stat changed. Racy entries (git's racy-git problem: an mtime not safely older
than the moment the stat was taken, so a same-size edit in the same timestamp tick would
leave the stat unchanged) are stored smudged (size -1) and so are re-hashed next time.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import time
from pathlib import Path
from typing import Final

import msgspec
from blake3 import blake3

from manifest.errors import FormatVersionError, ManifestError, StaleLockError
from manifest.fsutil import LockFile, atomic_write
from manifest.model import (
    FORMAT_VERSION,
    Index,
    IndexEntry,
    IndexFolder,
    decode_index,
    encode_index,
)

# Files at least this big are read in big chunks and hashed with BLAKE3's own threads.
LARGE_FILE: Final = 8 * 1024 * 1024
_LARGE_CHUNK: Final = 16 * 1024 * 1024
# An mtime this close to the moment its stat was read is "racy" (covers FAT's 2 s ticks).
RACY_NS: Final = 2_000_000_000
_READ_CHUNK: Final = 1024 * 1024
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(Exception):
    """The path turned out not to be a regular file when opened (a race)."""


class FileChangedError(OSError):
    """The file changed size while it was read, twice in a row: a scan problem this time."""


def hash_file(
    path: bytes | str | os.PathLike[str],
    *,
    dir_fd: int | None = None,
    name: bytes | None = None,
    lstat: os.stat_result | None = None,
) -> tuple[bytes, os.stat_result]:
    """BLAKE3 digest of a regular file and the ``fstat`` of what was hashed.

    The file is opened once, with ``O_NOFOLLOW|O_NONBLOCK`` (relative to ``dir_fd`` when
    given, by ``name``; ``path`` then only names it in errors), so a symlink, FIFO or device
    swapped in never hangs or escapes; the open descriptor must be a regular file. Every
    byte is read with ``read(2)``, never mapped: a file truncated meanwhile gives a short
    read (re-read once, then a ``FileChangedError``), never a SIGBUS. ``lstat``, the scan's
    own stat of a small non-empty regular file, spares the ``fstat`` when exactly that many
    bytes are read.
    """
    if dir_fd is not None and name is not None:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    else:
        fd = os.open(path, _OPEN_FLAGS)
    try:
        if lstat is not None and 0 < lstat.st_size < _READ_CHUNK and stat.S_ISREG(lstat.st_mode):
            data = os.read(fd, lstat.st_size + 1)
            if len(data) == lstat.st_size:
                return blake3(data).digest(), lstat
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegularFile(path)
            os.lseek(fd, 0, os.SEEK_SET)  # start over: the file is not what the scan saw
        for attempt in (1, 2):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(path)
            digest, size = _hash_fd(fd, st.st_size)
            if size == st.st_size:
                return digest, st
            if attempt == 1:
                os.lseek(fd, 0, os.SEEK_SET)
        raise FileChangedError(
            errno.EAGAIN, f"changed size while being read ({st.st_size} -> {size} bytes)"
        )
    finally:
        os.close(fd)


def _hash_fd(fd: int, expected: int) -> tuple[bytes, int]:
    """Digest of everything ``fd`` reads until end of file, and how many bytes that was."""
    if expected < min(_READ_CHUNK, LARGE_FILE):
        # One read of size + 1 bytes: a short read of a regular file means end of file.
        data = os.read(fd, expected + 1)
        if len(data) <= expected:
            return blake3(data).digest(), len(data)
        hasher = blake3(data)
        total = len(data)
    elif expected >= LARGE_FILE:
        hasher = blake3(max_threads=blake3.AUTO)
        total = 0
        buffer = bytearray(_LARGE_CHUNK)
        view = memoryview(buffer)
        with io.FileIO(fd, closefd=False) as reader:
            while True:
                n = reader.readinto(buffer)
                if not n:
                    break
                hasher.update(view[:n])
                total += n
        return hasher.digest(), total
    else:
        hasher = blake3()
        total = 0
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            break
        hasher.update(chunk)
        total += len(chunk)
    return hasher.digest(), total


class StatCache:
    """Path -> (stat, digest), loaded from and saved to ``<store>/index``.

    Kept by folder (``old[folder][name]``), so the scan's hot loop looks names up in a small
    dict without building each file's relative path. ``old`` is what was loaded, ``new`` what
    this scan saw (and is saved)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.old: dict[bytes, dict[bytes, IndexEntry]] = {}
        self.new: dict[bytes, dict[bytes, IndexEntry]] = {}
        self.dirty = False
        self.recorded: list[tuple[bytes, bytes]] = []
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError:
            # unreadable, or a folder in its place: a cache, so scan without it (fsck and
            # the failed save say nothing is lost; every file is hashed)
            self.dirty = True
            return
        try:
            index = decode_index(data)
        except msgspec.DecodeError:
            # A cache, not a record: a damaged (or older-layout) one is rebuilt by re-hashing.
            self.dirty = True
            return
        if index.format > FORMAT_VERSION:
            raise FormatVersionError(str(self.path), index.format, FORMAT_VERSION)
        self.old = {f.path: {e.name: e for e in f.entries} for f in index.folders}

    @staticmethod
    def _split(rel: bytes) -> tuple[bytes, bytes]:
        folder, slash, name = rel.rpartition(b"/")
        return folder + slash, name

    def _keep_entry(self, folder: bytes, entry: IndexEntry) -> None:
        here = self.new.get(folder)
        if here is None:
            here = self.new[folder] = {}
        here[entry.name] = entry

    def lookup(self, rel: bytes, st: os.stat_result) -> bytes | None:
        """The cached digest if the stat is unchanged (and the entry is not smudged)."""
        folder, name = self._split(rel)
        entry = self.old.get(folder, {}).get(name)
        if entry is None or entry.mtime_ns != st.st_mtime_ns:
            return None
        if entry.size == st.st_size and entry.ctime_ns == st.st_ctime_ns and entry.ino == st.st_ino:
            self._keep_entry(folder, entry)
            return entry.digest
        return None

    def record(self, rel: bytes, st: os.stat_result, digest: bytes) -> None:
        folder, name = self._split(rel)
        self._keep_entry(
            folder, IndexEntry(name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest)
        )
        self.recorded.append((folder, name))
        self.dirty = True

    def keep(self, rel: bytes) -> None:
        """Carry an entry over unchanged (an unstable or unreadable file)."""
        folder, name = self._split(rel)
        entry = self.old.get(folder, {}).get(name)
        if entry is not None:
            self._keep_entry(folder, entry)

    def keep_below(self, prefix: bytes) -> None:
        """Carry over every entry under a folder (an unreadable folder)."""
        for folder, entries in self.old.items():
            if folder.startswith(prefix):
                for entry in entries.values():
                    self._keep_entry(folder, entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self.old.values())

    def save(self, scan_started_ns: int, now_ns: int | None = None) -> bool:
        """Write the entries seen in this scan, smudging racy ones. Skips if another
        process holds the index lock (the cache is an optimisation, never a record)."""
        if not self.dirty and sum(map(len, self.new.values())) == len(self):
            return False
        # git's racy rule: an entry whose mtime or ctime is not safely older than the cache's
        # own write time may hide a same-size edit made in the same timestamp tick (a
        # coarse-timestamp filesystem, an mtime restored by hand): store it smudged, so the
        # next scan re-hashes it. Only entries hashed in this scan can be racy: a loaded one
        # was judged when it was recorded (trusted stays trusted, smudged stays smudged).
        written = max(time.time_ns() if now_ns is None else now_ns, scan_started_ns)
        threshold = written - RACY_NS
        for folder, name in self.recorded:
            e = self.new[folder][name]
            if (e.mtime_ns >= threshold or e.ctime_ns >= threshold) and e.size >= 0:
                self.new[folder][name] = IndexEntry(
                    e.name, -1, e.mtime_ns, e.ino, e.ctime_ns, e.digest
                )
        # Scan order, unsorted: the index is a cache, sorting buys nothing.
        folders = [
            IndexFolder(folder, list(entries.values())) for folder, entries in self.new.items()
        ]
        data = encode_index(Index(format=FORMAT_VERSION, mode=self.mode, folders=folders))
        lock = LockFile(self.path, timeout=0.0)
        try:
            lock.acquire()
        except StaleLockError:
            # A crashed process's lock on a cache: left alone it would stop the cache being
            # saved forever (every scan re-hashing every changed file). Take it over.
            with contextlib.suppress(OSError):
                os.unlink(lock.path)
            try:
                lock.acquire()
            except ManifestError:
                return False
        except ManifestError:
            return False
        try:
            with contextlib.suppress(OSError):
                # No fsync: after a crash the old or the new index (or none) is found, and
                # each is only a cache (a missing or stale entry costs one re-hash).
                atomic_write(self.path, data, sync=False)
                return True
            return False
        finally:
            lock.release()
