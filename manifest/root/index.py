"""The stat cache, ``<store>/index``: which digest each file had at which stat.

Like git's index and DVC's state db, it spares re-hashing a file whose stat (size, mtime,
inode, ctime) is unchanged. It is kept folder by folder, so that a million files cost no
more than the folders that changed:

* A **record** per folder: a small ``FolderHead`` (the folder's stat *signature*, the tree
  id it had, its subfolders' entries, its file and byte counts) and a payload. A scan loads
  only the heads; a folder whose listing and stats hash to the recorded signature reuses the
  recorded tree id without reading its payload at all.
* The payload is **positional**: the folder's listing *rows* (each entry's name and stat)
  encoded exactly as the signature encodes them, where each row starts, and per row a
  digest and a flag (a file whose digest holds while its row is unchanged, a racy file, or
  anything else). A folder whose signature misses finds the rows that changed by comparing
  the bytes it just encoded with the recorded ones, and looks at those rows only: nothing is
  built or decoded for the files that did not change (``Recorded.changed``).
* Records are framed (lengths and CRC-32s) and **appended**: an edit to one file writes its
  folder's record, not the whole cache. The last record of a folder wins. When more than
  half the file is dead (overridden, or folders that are gone) it is rewritten whole.
* A **table of contents** beside it (``index.toc``: where each folder's last record lies,
  written with every save and valid only for the exact file it describes: inode, size and
  mtime) spares a scan that looks at a few folders (the watcher's journal named them)
  reading every record to find those: at a million files, 50 MB read and 11,000 records
  walked for the two or three it needs. A missing, stale or damaged one is ignored.
* It is a cache, never a record: a torn tail, a bad CRC or an unknown layout costs re-hashing
  only. A ``context`` (mode and filters) guards the recorded tree ids: a different context
  keeps the digests but never reuses a tree id.

Racy entries (an mtime or ctime not safely older than the moment their folder was listed)
are recorded ``F_SMUDGED`` and their folder gets no signature, so they are re-hashed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import weakref
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate, compress, count
from operator import itemgetter, ne
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
from blake3 import blake3

from manifest.errors import FormatVersionError, ManifestError, StaleLockError
from manifest.fsutil import LockFile, write_all, writev_all
from manifest.model import KIND_FILE, IndexEntry, TreeEntry

T = TypeVar("T")

INDEX_MAGIC: Final = b"MANIFEST-INDEX\x00\x02"
# 3: positional payloads. 2 (``LEGACY_FORMAT``): lists of ``IndexEntry``, whose digests are
# used by name (no recorded tree id is trusted) until the file is rewritten in layout 3.
INDEX_FORMAT: Final = 3
LEGACY_FORMAT: Final = 2
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
    # the files' lowest and highest mtime: exact, or a range around them (a folder whose
    # changed rows were counted against the recorded ones widens it, never narrows it)
    lo: int
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


Where = tuple[int, int, int, int, int]  # head offset, head length, head crc, payload length, crc


class Toc(msgspec.Struct, frozen=True, array_like=True):
    """``index.toc``: where each folder's last record lies in the index file it names (by
    inode, size and mtime), and the framed bytes of every record in it. Column by column, so
    that loading it builds no object per folder: ``names``, and ``places`` with five
    little-endian int64 per name (its ``Where``)."""

    ino: int
    size: int
    mtime_ns: int
    total: int
    names: list[bytes]
    places: bytes


def _places_array(data: bytes) -> array[int]:
    places = array("q")
    places.frombytes(data)
    if sys.byteorder != "little":
        places.byteswap()
    return places


def _places_bytes(places: array[int]) -> bytes:
    if sys.byteorder != "little":
        places = array("q", places)
        places.byteswap()
    return places.tobytes()


_ENCODER: Final = msgspec.msgpack.Encoder()
_TOC_DECODER: Final = msgspec.msgpack.Decoder(Toc)
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(FolderHead)
_HEADER_DECODER: Final = msgspec.msgpack.Decoder(IndexHeader)


SMUDGED_INO: Final = -1  # ``entries()`` gives a smudged file this inode: it never matches

# A row's flag: what the cache knows of that listing entry.
F_OTHER: Final = 0  # nothing: a folder, symlink, special or filtered-out entry, looked at again
F_FILE: Final = 1  # a regular file whose digest holds while its row is unchanged
F_SMUDGED: Final = 2  # a regular file recorded racy: its digest is kept, but it is re-hashed
FILEISH: Final = bytes((F_FILE, F_SMUDGED))  # the rows that are files of the folder's tree
# ``flags.translate`` to 1 for a file row, else 0 (a mask for ``itertools.compress``)
FILEISH_MASK: Final = bytes(int(flag in FILEISH) for flag in range(256))
# ... and to 1 for any row that is not an F_FILE row
NOT_FILE_MASK: Final = bytes(int(flag != F_FILE) for flag in range(256))

Row = tuple[Any, ...]
"""A listing entry as a scan takes it: ``(name,)`` for a folder, else ``(name, mode,
mtime_ns, size, ino, ctime_ns)``; the name as listed (``str``), or ``bytes`` when it is
not UTF-8 (such rows never equal a listed one)."""

_ROW_DECODER: Final = msgspec.msgpack.Decoder(Row)
_ROWS_DECODER: Final = msgspec.msgpack.Decoder(list[Row])
_NAME = itemgetter(0)
_MTIME = itemgetter(2)
_SIZE = itemgetter(3)
_U32: Final = next(code for code in "IL" if array(code).itemsize == 4)
# Changed rows found byte by byte, up to this many; beyond, all rows are compared decoded.
_BYTEWISE_ROWS: Final = 8


class Payload(msgspec.Struct, frozen=True, array_like=True):
    """A folder's record payload (see the module's docstring)."""

    rows: bytes  # the rows, msgpack-encoded exactly as the signature hashes them
    offsets: bytes  # native uint32s: where each row starts in ``rows``, then where the last ends
    digests: list[bytes]  # per row (b"" where there is none)
    flags: bytes  # per row: F_OTHER, F_FILE or F_SMUDGED


_PAYLOAD_DECODER: Final = msgspec.msgpack.Decoder(Payload)
_LEGACY_DECODER: Final = msgspec.msgpack.Decoder(list[IndexEntry])


def _array_header(n: int) -> bytes:
    """msgpack's header of an array of ``n`` items (the shortest form, as msgspec writes)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_rows(rows: Sequence[Row]) -> tuple[bytes, bytes, bool]:
    """The rows encoded as one msgpack array, where each row starts in it (native uint32s,
    one more than rows), and whether every name is UTF-8 (then the encoding is what the
    signature hashes; else names are recorded as bytes)."""
    encode = _ENCODER.encode
    textual = True
    try:
        parts = list(map(encode, rows))
    except UnicodeEncodeError:
        textual = False
        # a name that is not UTF-8: recorded as bytes (never equal to a listed row)
        parts = [encode((os.fsencode(r[0]), *r[1:]) if isinstance(r[0], str) else r) for r in rows]
    header = _array_header(len(parts))
    offsets = array(_U32, accumulate(map(len, parts), initial=len(header)))
    return header + b"".join(parts), offsets.tobytes(), textual


def encode_payload(
    rows: Sequence[Row],
    digests: list[bytes],
    flags: bytes | bytearray,
    encoded: tuple[bytes, bytes] | None = None,
) -> bytes:
    """A folder's payload. ``encoded``: ``encode_rows(rows)``, when it is known already."""
    data, offsets = encoded if encoded is not None else encode_rows(rows)[:2]
    return _ENCODER.encode(Payload(data, offsets, digests, bytes(flags)))


def payload_of(entries: Iterable[IndexEntry]) -> bytes:
    """The payload recording these files (what a scan of a folder holding only them would
    write, modes aside): for tests and tools."""
    rows: list[Row] = []
    digests: list[bytes] = []
    flags = bytearray()
    for e in entries:
        name = os.fsdecode(e.name)
        smudge = e.ino == SMUDGED_INO
        rows.append((name, 0o100644, e.mtime_ns, e.size, 0 if smudge else e.ino, e.ctime_ns))
        digests.append(e.digest)
        flags.append(F_SMUDGED if smudge else F_FILE)
    return encode_payload(rows, digests, flags)


class Recorded:
    """A folder's payload, decoded only as far as asked."""

    __slots__ = ("_by_name", "_rows", "data", "digests", "flags", "n", "offsets", "offsets_bytes")

    def __init__(self, payload: Payload) -> None:
        self.data = payload.rows
        self.offsets_bytes = payload.offsets
        self.offsets = array(_U32)
        self.offsets.frombytes(payload.offsets)
        self.digests = payload.digests
        self.flags = payload.flags
        self.n = len(self.flags)
        offsets = self.offsets
        if (
            len(self.digests) != self.n
            or len(offsets) != self.n + 1
            or offsets[0] != len(_array_header(self.n))
            or offsets[-1] != len(self.data)
        ):
            raise ValueError("inconsistent payload")
        self._rows: list[Row] | None = None
        self._by_name: dict[bytes, int] | None = None

    def rows(self) -> list[Row]:
        """Every recorded row (raises ``msgspec.DecodeError`` if they do not decode)."""
        if self._rows is None:
            rows = _ROWS_DECODER.decode(self.data)
            if len(rows) != self.n:
                raise msgspec.DecodeError("inconsistent payload")
            self._rows = rows
        return self._rows

    def row(self, i: int) -> Row:
        if self._rows is not None:
            return self._rows[i]
        return _ROW_DECODER.decode(self.data[self.offsets[i] : self.offsets[i + 1]])

    def by_name(self) -> dict[bytes, int]:
        """Each recorded file's row number, by name (as bytes)."""
        if self._by_name is None:
            try:
                rows = self.rows()
            except msgspec.DecodeError:
                rows = []
            if len(rows) != self.n:
                self._by_name = {}
                return self._by_name
            self._by_name = {
                os.fsencode(rows[i][0]): i
                for i in compress(count(), self.flags.translate(FILEISH_MASK))
            }
        return self._by_name

    def entry(self, i: int) -> IndexEntry | None:
        """Row ``i`` as an ``IndexEntry`` (a smudged one never matches a stat), if a file."""
        flag = self.flags[i]
        if flag not in FILEISH:
            return None
        try:
            row = self.row(i)
        except msgspec.DecodeError:
            return None
        if len(row) != 6:
            return None
        name, _mode, mtime, size, ino, ctime = row
        ino = SMUDGED_INO if flag == F_SMUDGED else ino
        return IndexEntry(os.fsencode(name), size, mtime, ino, ctime, self.digests[i])

    def entries(self) -> dict[bytes, IndexEntry]:
        out = {}
        for i in compress(count(), self.flags.translate(FILEISH_MASK)):
            e = self.entry(i)
            if e is not None:
                out[e.name] = e
        return out

    def tree_files(self, content: bool) -> list[TreeEntry]:
        """The tree entries of the recorded files."""
        return tree_files(self.rows(), self.digests, self.flags, content)

    def changed(self, encoded: bytes | None, rows: list[Row]) -> tuple[list[int], bool] | None:
        """The numbers of the rows of a new listing (``rows``, ``encoded`` as
        ``encode_rows`` would) that differ from the recorded ones at the same place, and
        whether each new row lies where the recorded one did in the encoding (then the
        recorded offsets hold for ``encoded``); None if the listing does not have as many
        rows.

        Few changed rows (a touch, an edit) are found byte by byte, without decoding a
        recorded row: where the two encodings first differ, the new row there must decode
        to exactly the new listing's row over the recorded row's bytes (so both encodings
        are still aligned after it), and the search goes on past it. Otherwise (more rows,
        or an encoding of another length) the rows are compared decoded."""
        if len(rows) != self.n:
            return None
        old = self.data
        if encoded is not None and len(encoded) == len(old):
            if encoded == old:
                return [], True
            size = len(old)
            offsets = self.offsets
            found: list[int] = []
            at = 0
            while True:
                at = _first_difference(encoded, old, at, size)
                i = bisect_right(offsets, at) - 1
                if i < 0 or i >= self.n or len(found) >= _BYTEWISE_ROWS:
                    break
                end = offsets[i + 1]
                try:
                    if _ROW_DECODER.decode(encoded[offsets[i] : end]) != rows[i]:
                        break
                except msgspec.DecodeError:
                    break
                found.append(i)
                if encoded[end:] == old[end:]:
                    return found, True
                at = end
        try:
            recorded = self.rows()
        except msgspec.DecodeError:
            return None
        return list(compress(count(), map(ne, rows, recorded))), False


def _first_difference(a: bytes, b: bytes, lo: int, hi: int) -> int:
    """The first index in ``[lo, hi)`` where ``a`` and ``b`` differ (they must, there): a
    binary search on slices compared by ``memcmp``."""
    while hi - lo > 16:
        mid = (lo + hi) >> 1
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while a[lo] == b[lo]:
        lo += 1
    return lo


def tree_files(
    rows: Sequence[Row], digests: list[bytes], flags: bytes | bytearray, content: bool
) -> list[TreeEntry]:
    """The tree entries of the file rows."""
    out = []
    for i in compress(count(), flags.translate(FILEISH_MASK)):
        row = rows[i]
        out.append(
            TreeEntry(os.fsencode(row[0]), KIND_FILE, row[3], 0 if content else row[2], digests[i])
        )
    return out


def file_stats(rows: Sequence[Row], flags: bytes | bytearray) -> tuple[int, int, int, int]:
    """How many file rows, their bytes, and their lowest and highest mtime (0, 0 if none)."""
    files = list(compress(rows, flags.translate(FILEISH_MASK)))
    if not files:
        return 0, 0, 0, 0
    mtimes = list(map(_MTIME, files))
    return len(files), sum(map(_SIZE, files)), min(mtimes), max(mtimes)


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


def decode_payload(data: bytes) -> Recorded | None:
    try:
        return Recorded(_PAYLOAD_DECODER.decode(data))
    except (msgspec.DecodeError, ValueError):
        return None


def encode_head(head: FolderHead) -> bytes:
    return _ENCODER.encode(head)


def frame(head: bytes, payload: bytes) -> bytes:
    """One record as the file holds it (``_write_frames`` writes the same bytes without
    joining them first): for tools and tests."""
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

    def __init__(
        self, fd: int, records: dict[bytes, Loaded], trusted: bool, legacy: bool = False
    ) -> None:
        self.fd = fd
        self.records = records
        # the recorded tree ids and signatures are valid for this scan's mode and filters
        self.trusted = trusted
        self.legacy = legacy  # payloads of LEGACY_FORMAT (never trusted)
        self.updates: dict[bytes, tuple[bytes, bytes]] = {}
        self.kept: set[bytes] = set()

    def _loaded(self, path: bytes) -> Loaded | None:
        return self.records.get(path)

    def head(self, path: bytes) -> FolderHead | None:
        if not self.trusted:
            return None
        loaded = self._loaded(path)
        return loaded.head if loaded is not None else None

    def payload(self, path: bytes) -> bytes | None:
        """The folder's encoded entries, or None if absent or damaged."""
        loaded = self._loaded(path)
        if loaded is None or self.fd < 0:
            return None
        try:
            data = os.pread(self.fd, loaded.length, loaded.offset)
        except OSError:
            return None
        if len(data) != loaded.length or zlib.crc32(data) != loaded.crc:
            return None
        return data

    def recorded(self, path: bytes) -> Recorded | None:
        """The folder's payload, or None if absent or damaged."""
        data = self.payload(path)
        if data is None:
            return None
        if self.legacy:
            try:
                return decode_payload(payload_of(_LEGACY_DECODER.decode(data)))
            except msgspec.DecodeError:
                return None
        return decode_payload(data)

    def entries(self, path: bytes) -> dict[bytes, IndexEntry]:
        """The folder's recorded files by name (for tools and tests)."""
        recorded = self.recorded(path)
        if recorded is None:
            return {}
        try:
            return recorded.entries()
        except msgspec.DecodeError:
            return {}

    def keep(self, path: bytes) -> None:
        """The folder's loaded record is still true. Only a trusted cache keeps records: an
        untrusted one (other filters, or an older layout) is rewritten from this scan's
        records alone, so that none of its records is trusted under the new header."""
        if self.trusted and self._loaded(path) is not None:
            self.kept.add(path)

    def keep_below(self, prefix: bytes) -> None:
        """Keep every record at or under a folder (an unreadable folder, carried over)."""
        if not self.trusted:
            return
        for path in self.records:
            if path.startswith(prefix):
                self.kept.add(path)

    def put(self, head: FolderHead, payload: bytes) -> None:
        """Record what this scan saw of a folder (written only if it differs)."""
        loaded = self._loaded(head.path)
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
        if self.trusted:
            self.kept.update(kept)

    def __len__(self) -> int:
        return sum(r.head.files for r in self.records.values())


class StatCache(CacheView):
    """``<store>/index``, loaded head by head; ``save`` appends or rewrites."""

    def __init__(
        self,
        path: Path,
        mode: str,
        context: bytes = b"",
        *,
        fd: int | None = None,
        lazy: bool = False,
    ) -> None:
        """``fd``: the file already opened by ``open_index`` (-1: it was absent or
        unreadable); the cache owns it from here on. ``lazy``: a scan that looks at a few
        folders (the watcher's journal named them): each head is decoded when asked for,
        not all of them at load."""
        super().__init__(-1, {}, trusted=False)
        self.lazy = lazy
        # lazy: path -> (head offset, head length, head crc, payload length, payload crc) of
        # the records not decoded yet
        self._raw: dict[bytes, Where] = {}
        # the same for every folder's last record, decoded or not (the table of contents)
        self._where: dict[bytes, Where] = {}
        self._sizes: dict[bytes, int] = {}  # framed size of each folder's last record
        # A lazy load from the table of contents keeps its columns as read, and turns a
        # folder's into the dicts above only when that folder is asked for; whatever needs
        # them all (``raw``, ``where``, ``sizes``, a rewrite) turns the rest (``_spread``).
        self._toc_names: list[bytes] | None = None
        self._toc_places: array[int] = array("q")
        self._toc_index: dict[bytes, int] = {}
        self._toc_live = 0  # framed bytes of the table's records
        self._toc_kept = False  # keep_all: every folder of the table is kept
        self.path = path
        self.mode = mode
        self.context = context
        self.rewrite = False  # the file must be rewritten whole (damaged, other layout)
        self.end = 0  # where the valid records end
        self.ino: int | None = None
        self.total = 0  # framed size of every record in the file, overridden ones too
        self._load(open_index(path) if fd is None else fd)

    @property
    def raw(self) -> dict[bytes, Where]:
        self._spread()
        return self._raw

    @property
    def where(self) -> dict[bytes, Where]:
        self._spread()
        return self._where

    @property
    def sizes(self) -> dict[bytes, int]:
        self._spread()
        return self._sizes

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
        except (OSError, struct.error):
            # unreadable, or cut short by another hand while it was read: scan without it
            self.records.clear()
            self._toc_names = None
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
        if header.format < LEGACY_FORMAT:
            self.rewrite = True  # an older layout: rebuilt by re-hashing, once
            return
        if header.format == LEGACY_FORMAT:
            # the layout before positional payloads: its files' digests are still used (by
            # name, like a cache of another context), then the file is rewritten
            self.legacy = True
            self.rewrite = True
        if header.mode != self.mode:
            # another mode's digests mean something else (none in mtime_size, content
            # digests where mtime_size trees want none): nothing of it is used
            self.rewrite = True
            self.legacy = False
            return
        if header.context != self.context or self.legacy:
            self.rewrite = True
        else:
            self.trusted = True
        pos += length
        size = st.st_size
        if self.lazy and self._read_toc(st, pos):
            return
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
            at = start - block_at
            name = _peek_path(block, at, hlen) if self.lazy else None
            if name is not None:
                self._raw[name] = self._where[name] = (start, hlen, hcrc, plen, pcrc)
                self.records.pop(name, None)
            else:
                folder = _checked(block[at : at + hlen], hlen, hcrc, _HEAD_DECODER)
                if folder is None:
                    self.rewrite = True
                    break
                name = folder.path
                self.records[name] = Loaded(folder, start + hlen, plen, pcrc)
                self._where[name] = (start, hlen, hcrc, plen, pcrc)
                self._raw.pop(name, None)
            self._sizes[name] = RECORD_FRAME.size + hlen + plen
            self.total += RECORD_FRAME.size + hlen + plen
            pos = start + hlen + plen
        if pos != size:
            self.rewrite = True
        self.end = pos
        if self.lazy and not self.rewrite:
            # the next lazy load reads the table instead (a store from before tables, or a
            # table a crash left stale): for the file as read, whatever replaced it since
            self._write_toc(*_columns(self._where), self.total, st)

    @property
    def toc_path(self) -> Path:
        return self.path.with_name(self.path.name + ".toc")

    def _read_toc(self, st: os.stat_result, first: int) -> bool:
        """Take the records' places from the table of contents, if it describes exactly
        this file (``st``; its records start at ``first``). False: walk the file instead."""
        try:
            with open(self.toc_path, "rb") as fh:
                toc = _TOC_DECODER.decode(fh.read())
        except (OSError, msgspec.DecodeError):
            return False
        if (toc.ino, toc.size, toc.mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return False  # another file's, or this one's before a save it missed
        if len(toc.places) != 40 * len(toc.names):
            return False
        places = _places_array(toc.places)
        names = toc.names
        index = dict(zip(names, range(len(names)), strict=True))
        if len(index) != len(names):
            return False  # a folder named twice: not a table this code wrote
        frame = RECORD_FRAME.size
        if names and min(places[0::5]) < first + frame:
            return False  # not this file's layout: walk it
        # (each record's end is checked against the file's when it is taken: ``_fits``)
        self._toc_names, self._toc_places, self._toc_index = names, places, index
        self._toc_live = sum(places[1::5]) + sum(places[3::5]) + frame * len(names)
        self.total = toc.total
        self.end = st.st_size
        return True

    def _toc_where(self, path: bytes) -> Where | None:
        """The table's place for a folder not yet taken from it (then it is taken: into
        ``_where`` and ``_sizes``, not ``_raw``: the caller decodes it)."""
        if self._toc_names is None or path in self._where:
            return None
        i = self._toc_index.get(path)
        if i is None:
            return None
        at = 5 * i
        where: Where = tuple(self._toc_places[at : at + 5])  # type: ignore[assignment]
        if not self._fits(where):
            return None
        self._where[path] = where
        self._sizes[path] = RECORD_FRAME.size + where[1] + where[3]
        return where

    def _spread(self) -> None:
        """Every folder of the table of contents into the dicts (those not taken yet)."""
        names = self._toc_names
        if names is None:
            return
        self._toc_names = None
        frame = RECORD_FRAME.size
        it = iter(self._toc_places)
        for name, where in zip(names, zip(it, it, it, it, it, strict=True), strict=True):
            if name not in self._where and self._fits(where):
                self._where[name] = self._raw[name] = where
                self._sizes[name] = frame + where[1] + where[3]
        if self._toc_kept:
            self.kept.update(self._where)

    def _fits(self, where: Where) -> bool:
        """A place from the table lies inside the file; else the table is not this file's
        (its inode, size and mtime matched all the same): the cache is rebuilt."""
        start, hlen, _, plen, _ = where
        if start + hlen + plen <= self.end:
            return True
        self.rewrite = True
        return False

    def _write_toc(
        self, names: list[bytes], places: array[int], total: int, st: os.stat_result | None = None
    ) -> None:
        """Describe the file ``st`` (None: the one just saved, whose lock the caller holds).
        A cache of a cache: any failure leaves the old one, which then no longer matches
        the file, or none; a table of a file since replaced never matches the new one."""
        tmp = self.toc_path.with_name(f".tmp-{self.toc_path.name}-{os.getpid()}-{id(self):x}")
        try:
            if st is None:
                st = os.stat(self.path)
            toc = Toc(st.st_ino, st.st_size, st.st_mtime_ns, total, names, _places_bytes(places))
            with open(tmp, "wb") as fh:
                fh.write(_ENCODER.encode(toc))
            os.replace(tmp, self.toc_path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _loaded(self, path: bytes) -> Loaded | None:
        loaded = self.records.get(path)
        if loaded is None:
            where = self._raw.pop(path, None) if self._raw else None
            if where is None:
                where = self._toc_where(path)
                if where is None:
                    return None
            start, hlen, hcrc, plen, pcrc = where
            try:
                data = os.pread(self.fd, hlen, start)
            except OSError:
                data = b""
            head = _checked(data, hlen, hcrc, _HEAD_DECODER)
            if head is None or head.path != path:
                self.rewrite = True  # damaged: this folder is scanned without its record
                return None
            loaded = self.records[path] = Loaded(head, start + hlen, plen, pcrc)
        return loaded

    def keep_all(self) -> None:
        """Every record loaded is still true (a scan that looked at a few folders only)."""
        if self.trusted:
            self.kept.update(self.records)
            self.kept.update(self._raw)
            self._toc_kept = self._toc_names is not None

    def keep_below(self, prefix: bytes) -> None:
        if self.raw:
            for path in [p for p in self._raw if p.startswith(prefix)]:
                self._loaded(path)
        super().keep_below(prefix)

    def __len__(self) -> int:
        for path in list(self.raw):
            self._loaded(path)
        return super().__len__()

    def _live_bytes(self) -> tuple[dict[bytes, int] | None, int]:
        """The records a rewrite would keep (None: every one of the table of contents but
        the updated, not listed) and their framed bytes."""
        if self._toc_names is not None and self._toc_kept:
            # counted from the table, not folder by folder: a journal scan's save
            frame = RECORD_FRAME.size
            updated = 0
            for path in self.updates:
                i = self._toc_index.get(path)
                if i is not None:
                    updated += frame + self._toc_places[5 * i + 1] + self._toc_places[5 * i + 3]
            return None, self._toc_live - updated
        live = {p: n for p, n in self.sizes.items() if p in self.kept and p not in self.updates}
        return live, sum(live.values())

    def save(self) -> bool:
        """Write what changed: append the changed folders' records, or rewrite the file
        when that is shorter than what it would carry dead. Skips (False) if another
        process holds the lock: the cache is an optimisation, never a record."""
        live, live_bytes = self._live_bytes()
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
                if not rewrite:
                    appended = self._append()
                    if appended is not None:
                        self._write_toc(*appended)
                        return True
                if live is None:  # counted from the table: now folder by folder
                    self._spread()
                    live, _ = self._live_bytes()
                assert live is not None
                self._write_toc(*self._rewrite(live))
                return True
            return False
        finally:
            lock.release()

    def _append(self) -> tuple[list[bytes], array[int], int] | None:
        """Append the updates, if the file is still exactly the one loaded; the places of
        its folders' last records and the bytes of all of them, for the table of contents.
        None: replaced or appended to meanwhile (rewrite from what we know)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_ino != self.ino or st.st_size != self.end:
                return None
            _write_frames(fd, self.updates.values())
        finally:
            os.close(fd)
        appended: dict[bytes, Where] = {}
        total = self.total + _place(appended, self.end, self.updates)
        if self._toc_names is None:
            return (*_columns({**self._where, **appended}), total)
        # the table as read, with the appended records' places written over or added
        names = list(self._toc_names)
        places = array("q", self._toc_places)
        index = self._toc_index
        for path, where in appended.items():
            i = index.get(path)
            if i is None:
                names.append(path)
                places.extend(where)
            else:
                places[5 * i : 5 * i + 5] = array("q", where)
        return names, places, total

    def _rewrite(self, live: dict[bytes, int]) -> tuple[list[bytes], array[int], int]:
        # No fsync: after a crash the old or the new index (or none) is found, and each is
        # only a cache (a missing or stale entry costs one re-hash).
        self._spread()
        tmp = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}-{id(self):x}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            places: dict[bytes, Where] = {}
            try:
                out = [_header_bytes(self.mode, self.context)]
                pending = first = len(out[0])
                at = first  # where the next record starts in the new file
                for path in live:
                    raw = self._raw.get(path)
                    if raw is not None:
                        start = raw[0] - RECORD_FRAME.size
                    else:
                        loaded = self.records[path]
                        start = loaded.offset - (self._sizes[path] - loaded.length)
                    data = os.pread(self.fd, self._sizes[path], start)
                    if len(data) != self._sizes[path]:
                        continue
                    _, hlen, hcrc, plen, pcrc = self._where[path]
                    places[path] = (at + RECORD_FRAME.size, hlen, hcrc, plen, pcrc)
                    at += len(data)
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
        total = at - first + _place(places, at, self.updates)
        return (*_columns(places), total)


def _columns(places: dict[bytes, Where]) -> tuple[list[bytes], array[int]]:
    """The table of contents' columns for ``places``."""
    flat = array("q")
    for where in places.values():
        flat.extend(where)
    return list(places), flat


_FOLDER_HEAD_ARRAY: Final = 0x90 | len(FolderHead.__struct_fields__)  # msgpack fixarray


def _peek_path(block: bytes, at: int, length: int) -> bytes | None:
    """The folder path of an encoded ``FolderHead`` (its first field, msgpack bin 8 or 16)
    without decoding the rest; None if it is not laid out so (then it is decoded)."""
    if length < 3 or block[at] != _FOLDER_HEAD_ARRAY:
        return None
    tag = block[at + 1]
    if tag == 0xC4:
        n, begin = block[at + 2], at + 3
    elif tag == 0xC5 and length >= 4:
        n, begin = (block[at + 2] << 8) | block[at + 3], at + 4
    else:
        return None
    if begin + n > at + length:
        return None
    return block[begin : begin + n]


def open_index(path: Path) -> int:
    """A read descriptor on the stat cache file, or -1 when it cannot be opened or is not a
    regular file (opened without blocking: a FIFO in its place never hangs a status)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return -1
    except OSError:
        os.close(fd)
        return -1
    return fd


def _place(places: dict[bytes, Where], at: int, records: dict[bytes, tuple[bytes, bytes]]) -> int:
    """Record where ``records`` (each folder's head and payload), written framed in this
    order from ``at``, lie; each is its folder's last. Their framed bytes."""
    written = 0
    for path, (head, payload) in records.items():
        start = at + written + RECORD_FRAME.size
        places[path] = (start, len(head), zlib.crc32(head), len(payload), zlib.crc32(payload))
        written += RECORD_FRAME.size + len(head) + len(payload)
    return written


def _write_frames(fd: int, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write records framed, a batch of buffers at a time with ``writev`` (the heads and
    payloads are not copied into one buffer first)."""
    batch: list[bytes] = []
    size = 0
    for head, payload in records:
        batch += (
            RECORD_FRAME.pack(len(head), len(payload), zlib.crc32(head), zlib.crc32(payload)),
            head,
            payload,
        )
        size += RECORD_FRAME.size + len(head) + len(payload)
        if len(batch) >= _IOV_BATCH or size >= _READ_BLOCK:
            writev_all(fd, batch, size)
            batch, size = [], 0
    if batch:
        writev_all(fd, batch, size)


_IOV_BATCH: Final = 3 * 300  # buffers per writev: under every system's IOV_MAX (1024 on Linux)
