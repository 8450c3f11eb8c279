"""Object stores: immutable objects named by the BLAKE3 of their canonical bytes. Writes are
idempotent; every read re-hashes. ``Objects`` is what every backend shares (decoding, the
typed reads); ``ObjectStore`` is the local one, fanned out like git's ``objects/ab/cdef...``,
with atomic writes (the bucket's is ``manifest.store.bucket.BucketObjects``)."""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from blake3 import blake3

from manifest.errors import (
    CorruptObjectError,
    FormatVersionError,
    ObjectNotFoundError,
    StoreError,
)
from manifest.fsutil import atomic_write, fsync_dir, fsync_path, sync_filesystem, write_temp
from manifest.model import (
    FORMAT_VERSION,
    Snapshot,
    StoredObject,
    Tree,
    decode_object,
    encode_object,
)

if TYPE_CHECKING:
    from manifest.scanresult import TreeSource

ID_HEX_LEN = 64
# From this many new objects on, one syncfs replaces an fsync per object and folder.
BULK_WRITE_THRESHOLD = 32
WRITE_THREADS = 4
_ID_RE = re.compile(r"[0-9a-f]{64}")
_PREFIX_RE = re.compile(r"[0-9a-f]{4,64}")


def object_id(data: bytes) -> str:
    return blake3(data).hexdigest()


def is_object_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None


def is_id_prefix(text: str) -> bool:
    return _PREFIX_RE.fullmatch(text) is not None


class Objects(ABC):
    """What every object store does: bytes in and out by id (the backend's part), and the
    typed reads and writes built on them (written once, here)."""

    where: str  # for messages: the folder or the URL

    @abstractmethod
    def contains(self, oid: str) -> bool: ...

    @abstractmethod
    def write_bytes(self, data: bytes) -> str:
        """Store encoded bytes and return their id. Writing an existing object again only
        freshens it (a new modified time, which gc's grace period counts from)."""

    @abstractmethod
    def write_many(self, objects: Mapping[str, bytes] | TreeSource) -> int:
        """Store a snapshot's trees; returns how many were new."""

    @abstractmethod
    def _load(self, oid: str) -> bytes:
        """The bytes stored under ``oid`` (``ObjectNotFoundError`` when there are none)."""

    def read_bytes(self, oid: str) -> bytes:
        """The object's bytes, re-hashed (``CorruptObjectError`` if they do not match)."""
        data = self._load(oid)
        actual = object_id(data)
        if actual != oid:
            raise CorruptObjectError(oid, f"its bytes hash to {actual[:12]}")
        return data

    @abstractmethod
    def iter_ids(
        self,
        prefix: str = "",
        *,
        strict: bool = False,
        problems: Callable[[str, str], None] | None = None,
    ) -> Iterator[str]: ...

    @abstractmethod
    def iter_infos(self, *, strict: bool = False) -> Iterator[tuple[str, float, int]]:
        """``(id, modified time in seconds, size)`` of every stored object (gc's sweep)."""

    @abstractmethod
    def delete(self, oid: str) -> None: ...

    def write_object(self, obj: StoredObject) -> str:
        return self.write_bytes(encode_object(obj))

    def read_object(self, oid: str) -> StoredObject:
        data = self.read_bytes(oid)
        try:
            return decode_object(data)
        except msgspec.DecodeError as exc:
            raise CorruptObjectError(oid, f"cannot decode: {exc}") from exc

    def read_tree(self, oid: str) -> Tree:
        obj = self.read_object(oid)
        if not isinstance(obj, Tree):
            raise CorruptObjectError(oid, "expected a tree, found a snapshot")
        return obj

    def read_snapshot(self, oid: str) -> Snapshot:
        obj = self.read_object(oid)
        if not isinstance(obj, Snapshot):
            raise CorruptObjectError(oid, "expected a snapshot, found a tree")
        if obj.format > FORMAT_VERSION:
            raise FormatVersionError(f"snapshot {oid}", obj.format, FORMAT_VERSION)
        return obj

    def find_snapshot(self, oid: str) -> Snapshot | None:
        """The snapshot, or None when ``oid`` is missing or names a tree."""
        try:
            obj = self.read_object(oid)
        except ObjectNotFoundError:
            return None
        return obj if isinstance(obj, Snapshot) else None


class ObjectStore(Objects):
    """``<store>/objects``. Objects are written once and never modified."""

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        self.where = str(path)  # for messages (a bucket store names its URL)
        self.sync = sync

    def _object_path(self, oid: str) -> Path:
        if not is_object_id(oid):
            raise ObjectNotFoundError(oid, "an id that is not 64 hex digits")
        return self.path / oid[:2] / oid[2:]

    def contains(self, oid: str) -> bool:
        return self._object_path(oid).exists()

    def freshen(self, oid: str) -> bool:
        """An existing object about to be used again gets a new mtime (git's freshening), so
        gc's grace period protects it from a gc that found it unreferenced; False if absent."""
        try:
            os.utime(self._object_path(oid))
        except FileNotFoundError:
            return False
        except OSError:  # read-only store: it exists; reading is all that is left to do
            return self.contains(oid)
        return True

    def write_bytes(self, data: bytes) -> str:
        """Store encoded bytes and return their id. Writing an existing object is a no-op."""
        oid = object_id(data)
        target = self._object_path(oid)
        if self.freshen(oid):
            return oid
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, sync=self.sync)
        except OSError as exc:
            raise StoreError(str(target), f"cannot write object: {exc.strerror or exc}") from exc
        return oid

    def write_many(self, objects: Mapping[str, bytes] | TreeSource) -> int:
        """Store many encoded objects (a snapshot's trees); returns how many were new.

        A few are written one by one, each fsynced. Many are renamed into place unsynced and
        then made durable together by one ``syncfs`` (or, where that is unavailable, an
        fsync of each file and folder), before anything can refer to them."""
        new = []
        built = objects if isinstance(objects, Mapping) else objects.built
        for oid in objects.keys() if isinstance(objects, Mapping) else objects.ids():
            # a tree this scan built may be an old one again (content flipped back): freshen
            # it; one reused from the stat cache is in the base snapshot already
            if self.freshen(oid) if oid in built else self.contains(oid):
                continue
            data = objects.get(oid)
            if data is None:
                raise StoreError(str(self.path), f"the scan lost tree {oid}; scan again")
            new.append((oid, data))
        if len(new) < BULK_WRITE_THRESHOLD or not self.sync:
            for _oid, data in new:
                self.write_bytes(data)
            return len(new)
        from concurrent.futures import ThreadPoolExecutor  # only here: CLI start-up

        staged: list[tuple[Path, Path]] = []

        def stage(item: tuple[str, bytes]) -> tuple[Path, Path]:
            target = self._object_path(item[0])
            target.parent.mkdir(parents=True, exist_ok=True)
            return write_temp(target, item[1]), target

        try:
            # Creating a file is a wait on the filesystem (~0.3 ms each here), not CPU:
            # a few threads overlap them (3x faster for a first snapshot's trees).
            with ThreadPoolExecutor(WRITE_THREADS) as pool:
                futures = [pool.submit(stage, item) for item in new]
            failure: OSError | None = None
            for future in futures:
                try:
                    staged.append(future.result())
                except OSError as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
            # Bytes durable before any name points at them, names durable before return.
            if not sync_filesystem(self.path):
                for tmp, _ in staged:
                    fsync_path(tmp)
            for tmp, target in staged:
                os.replace(tmp, target)
            if not sync_filesystem(self.path):
                for folder in {t.parent for _, t in staged} | {self.path}:
                    fsync_dir(folder)
        except OSError as exc:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise StoreError(
                str(self.path), f"cannot write objects: {exc.strerror or exc}"
            ) from exc
        return len(new)

    def _load(self, oid: str) -> bytes:
        path = self._object_path(oid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None
        except OSError as exc:
            raise StoreError(str(path), f"cannot read object: {exc.strerror or exc}") from exc

    def iter_ids(
        self,
        prefix: str = "",
        *,
        strict: bool = False,
        problems: Callable[[str, str], None] | None = None,
    ) -> Iterator[str]:
        """Every stored id (optionally starting with ``prefix``, 2+ hex digits).

        A fan-out folder that cannot be listed is skipped, or with ``strict`` (gc) raises
        ``StoreError``, or is passed to ``problems(path, message)`` (fsck)."""
        if len(prefix) >= 2:
            fanouts = [prefix[:2]]
        else:
            try:
                fanouts = sorted(os.listdir(self.path))
            except FileNotFoundError:
                return
            except OSError as exc:
                raise StoreError(str(self.path), f"cannot be listed: {exc.strerror}") from exc
        for fan in fanouts:
            if len(fan) != 2 or fan.startswith("."):
                continue
            folder = self.path / fan
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            except OSError as exc:
                if strict:
                    raise StoreError(str(folder), f"cannot be listed: {exc.strerror}") from exc
                if problems is not None:
                    problems(
                        str(folder),
                        f"cannot be listed ({exc.strerror}); its objects were not checked",
                    )
                continue
            for name in names:
                oid = fan + name
                if is_object_id(oid) and oid.startswith(prefix):
                    yield oid

    def iter_infos(self, *, strict: bool = False) -> Iterator[tuple[str, float, int]]:
        """``(id, modified time in seconds, size)`` of every stored object (gc's sweep)."""
        for oid in self.iter_ids(strict=strict):
            path = self.path / oid[:2] / oid[2:]
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(str(path), f"cannot stat: {exc.strerror or exc}") from exc
            yield oid, st.st_mtime, st.st_size

    def delete(self, oid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._object_path(oid))
