"""Refs (a name holding a snapshot id) and their reflogs.

``Refs`` and ``RefTransaction`` are what every backend shares; the compare-and-swap
(``RefTransaction.set``) is written once, here, and a backend supplies only how a move is
made durable (``_commit``). The local store's refs are ``refs/<name>`` files with reflogs in
``logs/refs/<name>``: every update holds ``refs/<name>.lock`` (created with
``O_CREAT|O_EXCL``) and appends the reflog line before the ref's atomic rename, so a crash
leaves at worst a line whose move never happened (readers skip it), never a torn ref. The
bucket's are in ``manifest.store.bucket``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final

import msgspec

from manifest.errors import (
    DanglingRefError,
    InvalidRefNameError,
    RefConflictError,
    StoreError,
)
from manifest.fsutil import LockFile, atomic_write, fsync_dir, write_all
from manifest.model import ReflogEntry, decode_reflog_entry, encode_reflog_entry
from manifest.store.objects import is_object_id
from manifest.text import escape_text

REF_LAST: Final = "last"
REF_PENDING: Final = "pending"
# A pending snapshot superseded before its runs succeeded: the next ``begin`` carries its
# requested paths over, so a requested change is never dropped.
REF_UNFINISHED: Final = "unfinished"

_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
ANY: Final = object()  # update_ref's default: move whatever the ref holds


def validate_ref_name(name: str) -> str:
    """Raise ``InvalidRefNameError`` unless ``name`` is safe to join under ``refs/``."""
    if not name:
        raise InvalidRefNameError(name, "it is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidRefNameError(name, "it contains a control character")
    if ".." in name:
        raise InvalidRefNameError(name, "it contains '..'")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidRefNameError(name, "it has an empty path component")
    if "@{" in name:
        raise InvalidRefNameError(name, "it contains '@{' (reserved for REF@{n})")
    if len(name) > 200:
        raise InvalidRefNameError(name, "it is longer than 200 characters")
    for component in name.split("/"):
        if not _COMPONENT_RE.fullmatch(component):
            raise InvalidRefNameError(name, f"component {component!r} has a forbidden character")
        if component.endswith(".lock"):
            raise InvalidRefNameError(name, "a component ends with '.lock'")
    return name


class RefTransaction(ABC):
    """One ref, read and moved as a unit: the compare-and-swap, written once for every
    backend. The backend reads the value and makes a move durable (``_commit``)."""

    name: str

    @property
    @abstractmethod
    def value(self) -> str | None: ...

    @abstractmethod
    def read_reflog(self, *, strict: bool = False) -> list[ReflogEntry]: ...

    @abstractmethod
    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        """Replace the reflog (expiry)."""

    @abstractmethod
    def _commit(self, old: str | None, new: str | None, entry: ReflogEntry) -> None:
        """Make the move from ``old`` to ``new`` and its reflog line durable, or raise
        (``RefConflictError`` when another writer moved the ref meanwhile)."""

    def set(
        self,
        new: str | None,
        *,
        reason: str,
        expected: str | object | None = ANY,
        runs: tuple[str, ...] = (),
    ) -> str | None:
        """Move the ref to ``new`` (None deletes it) if it holds ``expected``; returns the
        value it held. A move to the value it holds writes nothing."""
        old = self.value
        if expected is not ANY and old != expected:
            raise RefConflictError(self.name, expected, old)  # type: ignore[arg-type]
        if new is not None and not is_object_id(new):
            raise DanglingRefError(self.name, new, "which is not a snapshot id")
        if new == old:
            return old
        entry = ReflogEntry(
            old=old, new=new, time_ns=time.time_ns(), reason=escape_text(reason), runs=runs
        )
        self._commit(old, new, entry)
        return old


class Refs(ABC):
    """Every backend's refs: reads, a transaction per ref, the reflog."""

    lock_timeout: float

    @abstractmethod
    def find_ref(self, name: str) -> str | None:
        """The snapshot id ``name`` holds, or None when unset."""

    @abstractmethod
    def has_ref(self, name: str) -> bool: ...

    @abstractmethod
    def has_log(self, name: str) -> bool: ...

    @abstractmethod
    def iter_refs(self, *, strict: bool = False) -> Iterator[tuple[str, str | None]]:
        """``(name, value)`` of every ref, sorted; value None if it holds garbage.
        ``strict`` (gc): anything unreadable raises ``StoreError`` instead."""

    @abstractmethod
    def transaction(self, name: str) -> AbstractContextManager[RefTransaction]: ...

    @abstractmethod
    def read_reflog(self, name: str, *, strict: bool = False) -> list[ReflogEntry]:
        """Oldest first."""

    @abstractmethod
    def iter_reflog_problems(self, name: str) -> Iterator[str]: ...

    @abstractmethod
    def iter_reflog_names(self, *, strict: bool = False) -> Iterator[str]: ...

    @abstractmethod
    def read_moves(self, name: str) -> list[ReflogEntry]:
        """The reflog's lines whose move took effect, oldest first."""

    @abstractmethod
    def iter_lock_files(self) -> Iterator[Path]:
        """Lock files on this host (none for a backend without them)."""

    def update_ref(
        self,
        name: str,
        new: str | None,
        *,
        reason: str,
        expected: str | object | None = ANY,
        runs: tuple[str, ...] = (),
    ) -> str | None:
        """Set ``name`` to ``new`` (None deletes it) if it holds ``expected``; returns old."""
        with self.transaction(name) as txn:
            return txn.set(new, reason=reason, expected=expected, runs=runs)


class RefStore(Refs):
    def __init__(self, store: Path, *, sync: bool = True, lock_timeout: float = 5.0) -> None:
        self.refs_dir = store / "refs"
        self.logs_dir = store / "logs" / "refs"
        self.sync = sync
        self.lock_timeout = lock_timeout

    def ref_path(self, name: str) -> Path:
        return self.refs_dir / validate_ref_name(name)

    def log_path(self, name: str) -> Path:
        return self.logs_dir / validate_ref_name(name)

    def has_ref(self, name: str) -> bool:
        return self.ref_path(name).is_file()

    def has_log(self, name: str) -> bool:
        return self.log_path(name).is_file()

    def find_ref(self, name: str) -> str | None:
        """The snapshot id ``name`` holds, or None when unset."""
        path = self.ref_path(name)
        try:
            text = path.read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise DanglingRefError(name, "<binary>", "which is not a snapshot id") from None
        except OSError as exc:
            raise StoreError(str(path), f"cannot read ref: {exc.strerror or exc}") from exc
        if not is_object_id(text):
            raise DanglingRefError(name, text[:80], "which is not a snapshot id")
        return text

    def iter_refs(self, *, strict: bool = False) -> Iterator[tuple[str, str | None]]:
        """``(name, value)`` of every ref file, sorted; value None if it holds garbage.

        ``strict`` (gc): a folder that cannot be listed, a ref that cannot be read or holds
        garbage, or a folder where ``last``/``pending``/``unfinished`` should be, raises
        ``StoreError`` instead: what cannot be read cannot be proven unreferenced."""
        if not self.refs_dir.exists():
            return
        if strict:
            _refuse_folders(self.refs_dir, "a ref file")
        names = []
        for dirpath, _dirnames, filenames in os.walk(
            self.refs_dir, onerror=_raise_store_error if strict else None
        ):
            for filename in filenames:
                if filename.endswith(".lock") or filename.startswith(".tmp-"):
                    continue
                names.append(Path(dirpath, filename).relative_to(self.refs_dir).as_posix())
        for rel in sorted(names):  # by full name, as every backend lists them
            try:
                yield rel, self.find_ref(rel)
            except (DanglingRefError, InvalidRefNameError) as exc:
                if strict:
                    raise StoreError(
                        str(self.refs_dir / rel), f"does not hold a snapshot id ({exc})"
                    ) from exc
                yield rel, None

    def iter_lock_files(self) -> Iterator[Path]:
        if not self.refs_dir.exists():
            return
        for dirpath, _dirnames, filenames in os.walk(self.refs_dir):
            for filename in filenames:
                if filename.endswith(".lock"):
                    yield Path(dirpath, filename)

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[LocalRefTransaction]:
        """Hold ``name``'s lock; read and compare-and-swap it inside."""
        path = self.ref_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(str(path.parent), f"cannot create: {exc.strerror or exc}") from exc
        with LockFile(path, timeout=self.lock_timeout):
            yield LocalRefTransaction(self, name)

    def read_reflog(self, name: str, *, strict: bool = False) -> list[ReflogEntry]:
        """Oldest first. A torn last line (a crash mid-append) is skipped. ``strict`` (gc):
        any other line that does not decode raises ``StoreError``."""
        path = self.log_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(str(path), f"cannot read reflog: {exc.strerror or exc}") from exc
        entries = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(decode_reflog_entry(line))
            except msgspec.DecodeError as exc:
                torn = number == len(lines)  # no newline after it: an interrupted append
                if strict and not torn:
                    raise StoreError(str(path), f"line {number} does not decode ({exc})") from exc
                continue
        return entries

    def iter_reflog_problems(self, name: str) -> Iterator[str]:
        path = self.log_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                decode_reflog_entry(line)
            except msgspec.DecodeError as exc:
                yield f"line {number} does not decode ({exc})"

    def iter_reflog_names(self, *, strict: bool = False) -> Iterator[str]:
        if not self.logs_dir.exists():
            return
        if strict:
            _refuse_folders(self.logs_dir, "a reflog")
        for dirpath, _dirnames, filenames in os.walk(
            self.logs_dir, onerror=_raise_store_error if strict else None
        ):
            for filename in sorted(filenames):
                if filename.startswith(".tmp-"):
                    continue
                yield Path(dirpath, filename).relative_to(self.logs_dir).as_posix()

    def rewrite_reflog(self, name: str, entries: list[ReflogEntry]) -> None:
        """Replace a reflog (expiry); the caller holds the ref's lock."""
        path = self.log_path(name)
        data = b"".join(encode_reflog_entry(e) for e in entries)
        try:
            atomic_write(path, data, sync=self.sync)
        except OSError as exc:
            raise StoreError(str(path), f"cannot rewrite reflog: {exc.strerror or exc}") from exc

    def _append_reflog(self, name: str, entry: ReflogEntry) -> None:
        """Append one line, durably; on failure the file is cut back to what it was, so a
        failed append leaves no torn line behind."""
        path = self.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                write_all(fd, encode_reflog_entry(entry))
                if self.sync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def read_moves(self, name: str) -> list[ReflogEntry]:
        """The reflog's moves that took effect, oldest first. The line is written before the
        ref (git's order), so a failure or a crash between the two leaves a line whose move
        never happened: its ``new`` is not the next line's ``old`` (or, for the newest line,
        not the ref's current value). Those lines are left out here; fsck reports them."""
        entries = self.read_reflog(name)
        try:
            current = self.find_ref(name)
        except (DanglingRefError, StoreError):
            return entries
        moves = []
        for i, entry in enumerate(entries):
            following = entries[i + 1].old if i + 1 < len(entries) else current
            if entry.new == following:
                moves.append(entry)
        return moves


def _refuse_folders(base: Path, what: str) -> None:
    """A folder where ``last``, ``pending`` or ``unfinished`` should be is damage, not a
    namespace of refs: ``os.walk`` would silently descend into it."""
    for known in (REF_LAST, REF_PENDING, REF_UNFINISHED):
        if (base / known).is_dir():
            raise StoreError(str(base / known), f"is a folder, not {what}")


def _raise_store_error(exc: OSError) -> None:
    raise StoreError(str(exc.filename), f"cannot be listed: {exc.strerror or exc}") from exc


class LocalRefTransaction(RefTransaction):
    """Operations on one ref while its lock is held."""

    def __init__(self, refs: RefStore, name: str) -> None:
        self.refs = refs
        self.name = name

    @property
    def value(self) -> str | None:
        return self.refs.find_ref(self.name)

    def read_reflog(self, *, strict: bool = False) -> list[ReflogEntry]:
        return self.refs.read_reflog(self.name, strict=strict)

    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        """Replace the reflog (expiry) while the lock is held."""
        self.refs.rewrite_reflog(self.name, entries)

    def _commit(self, old: str | None, new: str | None, entry: ReflogEntry) -> None:
        refs = self.refs
        path = refs.ref_path(self.name)
        # The reflog line first (git's order): a ref never moves without its line. If the
        # line cannot be written, nothing moved; if the ref then cannot be written, the
        # line names a move that never happened, which readers skip and fsck reports.
        try:
            refs._append_reflog(self.name, entry)
        except OSError as exc:
            log = refs.log_path(self.name)
            raise StoreError(
                str(log), f"cannot write the reflog line, {self.name} not moved: {exc.strerror}"
            ) from exc
        try:
            if new is None:
                os.unlink(path)
                if refs.sync:
                    fsync_dir(path.parent)
            else:
                atomic_write(path, (new + "\n").encode("ascii"), sync=refs.sync)
        except OSError as exc:
            raise StoreError(
                str(path), f"cannot update ref, {self.name} not moved: {exc.strerror or exc}"
            ) from exc
