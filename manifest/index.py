"""The stat cache, ``<store>/index``: which digest each file had at which stat.

Like git's index and DVC's state db, it spares re-hashing a file whose stat (size, mtime,
inode, ctime) is unchanged. It is kept folder by folder, so that a million files cost no
more than the folders that changed:

* A **record** per folder: a small ``FolderHead`` (the folder's stat *signature*, the tree
  id it had, its subfolders' entries, its file and byte counts) and a payload, the folder's
  ``IndexEntry`` lines. A scan loads only the heads; a folder whose listing and stats hash
  to the recorded signature reuses the recorded tree id without reading its payload at all.
* Records are framed (lengths and CRC-32s) and **appended**: an edit to one file writes its
  folder's record, not the whole cache. The last record of a folder wins. When more than
  half the file is dead (overridden, or folders that are gone) it is rewritten whole.
* It is a cache, never a record: a torn tail, a bad CRC or an unknown layout costs re-hashing
  only. A ``context`` (mode and filters) guards the recorded tree ids: a different context
  keeps the digests but never reuses a tree id.

Racy entries (an mtime or ctime not safely older than the moment their folder was listed)
are stored smudged (inode -1) and their folder gets no signature, so they are re-hashed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Final, TypeVar

import msgspec
from blake3 import blake3

from manifest.errors import FormatVersionError, ManifestError, StaleLockError
from manifest.fsutil import LockFile, write_all
from manifest.model import IndexEntry, TreeEntry

T = TypeVar("T")

INDEX_MAGIC: Final = b"MANIFEST-INDEX\x00\x02"
INDEX_FORMAT: Final = 2
RECORD_FRAME: Final = struct.Struct("<IIII")  # head length, payload length, head crc, payload crc
_HEADER_FRAME: Final = struct.Struct("<II")  # header length, header crc
_READ_BLOCK: Final = 1 << 20


class IndexHeader(msgspec.Struct, frozen=True, array_like=True):
    format: int
    mode: str
    context: bytes


class FolderHead(msgspec.Struct, frozen=True, array_like=True):
    """What a scan needs to know about a folder without reading its entries.

    ``signature`` is the BLAKE3 of the folder's listing with each file's stat (``b""``: no
    fast path, e.g. a racy, unstable or special entry); ``tree`` the folder's tree id as
    last computed, built from the payload's files and ``subdirs``."""

    path: bytes
    signature: bytes
    tree: bytes
    files: int
    nbytes: int
    lo: int  # lowest and highest mtime of the files
    hi: int
    subdirs: tuple[TreeEntry, ...]
    # the tree is exactly the payload's files and ``subdirs`` (no symlink, no carried entry)
    pure: bool = False


class Loaded(msgspec.Struct, frozen=True, array_like=True):
    """A record found in the file: its head and where its payload lies."""

    head: FolderHead
    offset: int
    length: int
    crc: int


_ENCODER: Final = msgspec.msgpack.Encoder()
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(FolderHead)
_HEADER_DECODER: Final = msgspec.msgpack.Decoder(IndexHeader)
_PAYLOAD_DECODER: Final = msgspec.msgpack.Decoder(list[IndexEntry])


SMUDGED_INO: Final = -1  # never a real inode number: a smudged entry never matches a stat


def smudged(entry: IndexEntry) -> IndexEntry:
    """The entry, marked racy: its digest is kept, but no stat will match it again."""
    return IndexEntry(
        entry.name, entry.size, entry.mtime_ns, SMUDGED_INO, entry.ctime_ns, entry.digest
    )


def scan_context(config: object) -> bytes:
    """What the recorded tree ids depend on besides the files: the mode and the filters."""
    mode = getattr(config, "mode", "")
    include = getattr(config, "include", ())
    exclude = getattr(config, "exclude", ())
    return blake3(_ENCODER.encode([mode, list(include), list(exclude)])).digest()[:16]


def _checked(data: bytes, length: int, crc: int, decoder: msgspec.msgpack.Decoder[T]) -> T | None:
    """``data`` decoded, if it has the length and CRC-32 its frame promised; else None."""
    if len(data) != length or zlib.crc32(data) != crc:
        return None
    try:
        return decoder.decode(data)
    except msgspec.DecodeError:
        return None


def encode_payload(entries: list[IndexEntry]) -> bytes:
    return _ENCODER.encode(entries)


def encode_head(head: FolderHead) -> bytes:
    return _ENCODER.encode(head)


def frame(head: bytes, payload: bytes) -> bytes:
    return (
        RECORD_FRAME.pack(len(head), len(payload), zlib.crc32(head), zlib.crc32(payload))
        + head
        + payload
    )


def _header_bytes(mode: str, context: bytes) -> bytes:
    header = _ENCODER.encode(IndexHeader(INDEX_FORMAT, mode, context))
    return INDEX_MAGIC + _HEADER_FRAME.pack(len(header), zlib.crc32(header)) + header


class CacheView:
    """Read access to records: heads in memory, payloads read from an open descriptor on
    demand (the descriptor pins the file that was loaded, even if it is replaced later). A
    scan worker gets a view of its subtree's heads and the inherited descriptor."""

    def __init__(self, fd: int, records: dict[bytes, Loaded], trusted: bool) -> None:
        self.fd = fd
        self.records = records
        # the recorded tree ids and signatures are valid for this scan's mode and filters
        self.trusted = trusted
        self.updates: dict[bytes, tuple[bytes, bytes]] = {}
        self.kept: set[bytes] = set()

    def head(self, path: bytes) -> FolderHead | None:
        if not self.trusted:
            return None
        loaded = self.records.get(path)
        return loaded.head if loaded is not None else None

    def payload(self, path: bytes) -> bytes | None:
        """The folder's encoded entries, or None if absent or damaged."""
        loaded = self.records.get(path)
        if loaded is None or self.fd < 0:
            return None
        try:
            data = os.pread(self.fd, loaded.length, loaded.offset)
        except OSError:
            return None
        if len(data) != loaded.length or zlib.crc32(data) != loaded.crc:
            return None
        return data

    def entries(self, path: bytes) -> dict[bytes, IndexEntry]:
        data = self.payload(path)
        if data is None:
            return {}
        try:
            return {e.name: e for e in _PAYLOAD_DECODER.decode(data)}
        except msgspec.DecodeError:
            return {}

    def decode_payload(self, data: bytes) -> list[IndexEntry]:
        return _PAYLOAD_DECODER.decode(data)

    def keep(self, path: bytes) -> None:
        """The folder's loaded record is still true."""
        if path in self.records:
            self.kept.add(path)

    def keep_below(self, prefix: bytes) -> None:
        """Keep every record at or under a folder (an unreadable folder, carried over)."""
        for path in self.records:
            if path.startswith(prefix):
                self.kept.add(path)

    def put(self, head: FolderHead, payload: bytes) -> None:
        """Record what this scan saw of a folder (written only if it differs)."""
        loaded = self.records.get(head.path)
        if (
            loaded is not None
            and self.trusted
            and loaded.head == head
            and (head.signature or self.payload(head.path) == payload)
        ):
            self.kept.add(head.path)
            return
        self.updates[head.path] = (encode_head(head), payload)

    def merge(self, updates: Iterable[tuple[bytes, bytes]], kept: Iterable[bytes]) -> None:
        """Take what a scan worker recorded of its subtree (encoded heads and payloads)."""
        for head_bytes, payload in updates:
            self.updates[_HEAD_DECODER.decode(head_bytes).path] = (head_bytes, payload)
        self.kept.update(kept)

    def __len__(self) -> int:
        return sum(r.head.files for r in self.records.values())


class StatCache(CacheView):
    """``<store>/index``, loaded head by head; ``save`` appends or rewrites."""

    def __init__(
        self, path: Path, mode: str, context: bytes = b"", *, fd: int | None = None
    ) -> None:
        """``fd``: the file already opened by ``open_index`` (-1: it was absent or
        unreadable); the cache owns it from here on."""
        super().__init__(-1, {}, trusted=False)
        self.path = path
        self.mode = mode
        self.context = context
        self.rewrite = False  # the file must be rewritten whole (damaged, other layout)
        self.end = 0  # where the valid records end
        self.ino: int | None = None
        self.sizes: dict[bytes, int] = {}  # framed size of each folder's last record
        self.total = 0  # framed size of every record in the file, overridden ones too
        self._load(open_index(path) if fd is None else fd)

    def _load(self, fd: int) -> None:
        if fd < 0:
            # absent, unreadable, or a folder in its place: scan without it (a save of an
            # unreadable one fails too)
            self.rewrite = True
            return
        self.fd = fd
        weakref.finalize(self, os.close, fd)
        try:
            self._read_records(fd)
        except OSError:
            self.records.clear()
            self.rewrite = True

    def _read_records(self, fd: int) -> None:
        st = os.fstat(fd)
        self.ino = st.st_ino
        head = os.pread(fd, len(INDEX_MAGIC) + _HEADER_FRAME.size, 0)
        if not head.startswith(INDEX_MAGIC) or len(head) < len(INDEX_MAGIC) + _HEADER_FRAME.size:
            self.rewrite = True  # an older layout or garbage: rebuilt by re-hashing
            return
        length, crc = _HEADER_FRAME.unpack_from(head, len(INDEX_MAGIC))
        pos = len(head)
        data = os.pread(fd, length, pos)
        header = _checked(data, length, crc, _HEADER_DECODER)
        if header is None:
            self.rewrite = True
            return
        if header.format > INDEX_FORMAT:
            raise FormatVersionError(str(self.path), header.format, INDEX_FORMAT)
        if header.mode != self.mode or header.context != self.context:
            self.rewrite = True
        else:
            self.trusted = True
        pos += length
        size = st.st_size
        # Read the records in big blocks; a record that does not fit is read on its own.
        block = b""
        block_at = pos
        while pos + RECORD_FRAME.size <= size:
            if pos + RECORD_FRAME.size > block_at + len(block):
                block = os.pread(fd, _READ_BLOCK, pos)
                block_at = pos
            hlen, plen, hcrc, pcrc = RECORD_FRAME.unpack_from(block, pos - block_at)
            start = pos + RECORD_FRAME.size
            if start + hlen + plen > size:
                self.rewrite = True  # a torn append
                break
            if start + hlen > block_at + len(block):
                block = os.pread(fd, max(_READ_BLOCK, hlen), start)
                block_at = start
            head_bytes = block[start - block_at : start - block_at + hlen]
            folder = _checked(head_bytes, hlen, hcrc, _HEAD_DECODER)
            if folder is None:
                self.rewrite = True
                break
            self.records[folder.path] = Loaded(folder, start + hlen, plen, pcrc)
            self.sizes[folder.path] = RECORD_FRAME.size + hlen + plen
            self.total += RECORD_FRAME.size + hlen + plen
            pos = start + hlen + plen
        if pos != size:
            self.rewrite = True
        self.end = pos

    def save(self) -> bool:
        """Write what changed: append the changed folders' records, or rewrite the file
        when that is shorter than what it would carry dead. Skips (False) if another
        process holds the lock: the cache is an optimisation, never a record."""
        live = {p: n for p, n in self.sizes.items() if p in self.kept and p not in self.updates}
        live_bytes = sum(live.values())
        dead_bytes = self.total - live_bytes
        new_bytes = sum(RECORD_FRAME.size + len(h) + len(p) for h, p in self.updates.values())
        rewrite = self.rewrite or dead_bytes > live_bytes + new_bytes
        if not rewrite and not self.updates:
            return False
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
                if not rewrite and self._append():
                    return True
                self._rewrite(live)
                return True
            return False
        finally:
            lock.release()

    def _append(self) -> bool:
        """Append the updates, if the file is still exactly the one loaded."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_ino != self.ino or st.st_size != self.end:
                return False  # replaced or appended to meanwhile: rewrite from what we know
            _write_frames(fd, self.updates.values())
            return True
        finally:
            os.close(fd)

    def _rewrite(self, live: dict[bytes, int]) -> None:
        # No fsync: after a crash the old or the new index (or none) is found, and each is
        # only a cache (a missing or stale entry costs one re-hash).
        tmp = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}-{id(self):x}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                out = [_header_bytes(self.mode, self.context)]
                pending = len(out[0])
                for path in live:
                    loaded = self.records[path]
                    start = loaded.offset - (self.sizes[path] - loaded.length)
                    data = os.pread(self.fd, self.sizes[path], start)
                    if len(data) != self.sizes[path]:
                        continue
                    out.append(data)
                    pending += len(data)
                    if pending > _READ_BLOCK:
                        write_all(fd, b"".join(out))
                        out, pending = [], 0
                write_all(fd, b"".join(out))
                _write_frames(fd, self.updates.values())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def open_index(path: Path) -> int:
    """A read descriptor on the stat cache file, or -1 when it cannot be opened."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _write_frames(fd: int, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write records framed, about a MiB at a time (never the whole cache in one buffer)."""
    batch: list[bytes] = []
    size = 0
    for head, payload in records:
        batch.append(frame(head, payload))
        size += len(batch[-1])
        if size >= _READ_BLOCK:
            write_all(fd, b"".join(batch))
            batch, size = [], 0
    if batch:
        write_all(fd, b"".join(batch))
