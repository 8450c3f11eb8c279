"""The persisted types and the one encoder/decoder pair that reads and writes them.

Objects are msgpack (canonical: fixed field order, array-like entries) and named by the
BLAKE3 of their bytes. Schema evolution the msgspec way: new fields get defaults, array-like
fields are only appended, a breaking change bumps ``FORMAT_VERSION``.
"""

from __future__ import annotations

import os
import sys
from typing import Final, NewType

import msgspec

FORMAT_VERSION: Final = 1

SnapshotId = NewType("SnapshotId", str)
TreeId = NewType("TreeId", str)

# TreeEntry.kind
KIND_FILE: Final = 0
KIND_TREE: Final = 1
KIND_SYMLINK: Final = 2


class TreeEntry(msgspec.Struct, frozen=True, array_like=True):
    """One name in a directory.

    * file, ``mtime_size`` mode: ``size`` and ``mtime_ns``; ``digest`` empty.
    * file, ``content_hash`` mode: ``size`` and the BLAKE3 ``digest``; ``mtime_ns`` is 0 so
      that the root tree id is a pure content fingerprint (a touch changes nothing).
    * symlink: never followed; ``digest`` is the BLAKE3 of the link target.
    * tree: ``digest`` is the subtree id (32 raw bytes); ``size`` the number of files below.
    """

    name: bytes
    kind: int
    size: int
    mtime_ns: int
    digest: bytes

    @property
    def fingerprint(self) -> str:
        """The file's fingerprint as text: the hex digest, or ``size-mtime_ns``."""
        if self.digest:
            return self.digest.hex()
        return f"{self.size}-{self.mtime_ns}"


class Tree(msgspec.Struct, frozen=True, tag="tree"):
    """A directory: entries sorted by name (bytes order)."""

    entries: tuple[TreeEntry, ...]


class Counts(msgspec.Struct, frozen=True):
    files: int = 0
    bytes: int = 0
    added: int = 0
    modified: int = 0
    removed: int = 0
    # paths processed again although they do not differ from the parent (carried over)
    requeued: int = 0


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot"):
    """One scan of the data root. Its id hashes everything here, creation time included."""

    root: str
    parent: str | None
    created_ns: int
    mode: str
    data_root: str
    counts: Counts
    message: str = ""
    format: int = FORMAT_VERSION
    # Paths its processing must cover although they may not differ from ``parent``: carried
    # over from a pending snapshot that was superseded before its runs succeeded.
    requested: tuple[str, ...] = ()
    # Sorted ``(key, value)`` pairs the face that took it records (e.g. the Dagster tick and
    # asset mode); the engine stores them and never interprets them.
    labels: tuple[tuple[str, str], ...] = ()
    # Paths of its changes already processed for exactly this content by a superseded
    # pending's successful runs: ``done`` need nothing more, ``done_own`` only the fan-in
    # (the runs reading every per-file partition) they feed. Written by ``abandon`` on the
    # superseded snapshot's copy that ``unfinished`` points at, then carried by ``begin``.
    done: tuple[str, ...] = ()
    done_own: tuple[str, ...] = ()

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


StoredObject = Tree | Snapshot


class IndexEntry(msgspec.Struct, frozen=True, array_like=True):
    """A file as the stat cache knows it (like a line of git's index): its ``digest`` is
    reused while the stat is unchanged. ``manifest.root.index.Recorded.entry`` builds these from
    a positional payload; stat caches of layout 2 stored lists of them.

    ``ino`` is -1 for a smudged (racy) entry, which never matches and is re-hashed.
    """

    name: bytes
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    digest: bytes


class ReflogEntry(msgspec.Struct, frozen=True):
    """One ref move. ``old``/``new`` are snapshot ids or None for unset."""

    old: str | None
    new: str | None
    time_ns: int
    reason: str
    # The orchestrator's runs that processed the move (promotions), oldest first.
    runs: tuple[str, ...] = ()


class ChangeSet(msgspec.Struct, frozen=True):
    """What changed between two states, as sorted relative POSIX paths.

    ``renamed`` is for display only (content mode, same bytes at a new path); each rename
    is also in ``removed`` and ``added``, which is what triggering uses. ``requeued`` are
    paths that do not differ now but were requested by a pending snapshot that was
    superseded before its runs succeeded: they are processed again.
    """

    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    requeued: tuple[str, ...] = ()
    # of the paths above, those already processed (see ``Snapshot.done``): no run needed
    # (``done``), or only the fan-in they feed (``done_own``)
    done: tuple[str, ...] = ()
    done_own: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.removed or self.requeued)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path to process, sorted."""
        return tuple(sorted({*self.added, *self.modified, *self.removed, *self.requeued}))

    def kind(self, path: str) -> str:
        """``added``, ``modified``, ``removed``, ``requeued`` or ``unchanged``."""
        for name in ("added", "modified", "removed", "requeued"):
            if path in getattr(self, name):
                return name
        return "unchanged"


class Failure(msgspec.Struct, frozen=True):
    """The orchestrator stopped retrying ``snapshot`` (``<store>/pending.failed``)."""

    snapshot: str
    runs: tuple[str, ...]
    message: str
    time_ns: int


class Fingerprint(msgspec.Struct, frozen=True):
    """One side of a change, as JSON shows it (``mtime_ns`` only where it is recorded)."""

    kind: str  # "file" or "symlink"
    size: int
    mtime_ns: int | None
    fingerprint: str

    @classmethod
    def of(cls, entry: TreeEntry) -> Fingerprint:
        kind = "symlink" if entry.kind == KIND_SYMLINK else "file"
        recorded = kind == "file" and not entry.digest  # mtime_size mode records the mtime
        return cls(kind, entry.size, entry.mtime_ns if recorded else None, entry.fingerprint)


class Change(msgspec.Struct, frozen=True):
    """A changed path with the entries compared: ``old`` is None when added, ``new`` when
    removed."""

    path: str
    change: str  # added, modified, removed
    old: Fingerprint | None
    new: Fingerprint | None


_OBJECT_ENCODER: Final = msgspec.msgpack.Encoder()
_OBJECT_DECODER: Final = msgspec.msgpack.Decoder(StoredObject)
_REFLOG_ENCODER: Final = msgspec.json.Encoder()
_REFLOG_DECODER: Final = msgspec.json.Decoder(ReflogEntry)


def encode_object(obj: StoredObject) -> bytes:
    return _OBJECT_ENCODER.encode(obj)


def decode_object(data: bytes) -> StoredObject:
    return _OBJECT_DECODER.decode(data)


def encode_reflog_entry(entry: ReflogEntry) -> bytes:
    return _REFLOG_ENCODER.encode(entry) + b"\n"


def decode_reflog_entry(line: bytes) -> ReflogEntry:
    return _REFLOG_DECODER.decode(line)


_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()


def path_to_text(path: bytes) -> str:
    """Relative path bytes to ``str``; undecodable bytes become surrogates (reversible).
    ``os.fsdecode``, without its per-call overhead (a million calls in a big diff)."""
    return path.decode(_FS_ENCODING, _FS_ERRORS)


def text_to_path(text: str) -> bytes:
    return os.fsencode(text)
