"""File fingerprints: the BLAKE3 of a file's bytes, read safely.

The stat cache that spares re-hashing unchanged files is ``manifest.root.index``. ``RACY_NS`` is
its racy window (git's racy-git problem: an mtime not safely older than the moment the stat
was taken may hide a same-size edit made in the same timestamp tick).
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import Final

from blake3 import blake3

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
