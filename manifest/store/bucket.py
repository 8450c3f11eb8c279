"""The state store on a bucket (S3 first), with the local store's guarantees.

* Objects (``objects/ab/cdef...``) are written once with a create-only put
  (``If-None-Match: *``) and re-hashed on every read.
* A ref is one object ``refs/<name>`` holding its value *and its whole reflog*
  (:class:`RefDoc`). It moves by a conditional put against the ETag it was read with
  (``If-Match``), so the history line and the move are one write: no move without its line,
  no line without its move. A lost race is a :class:`RefConflictError`, retryable like a held
  lock on disk.
* Small state files (``FORMAT``, ``config.toml``, ``pending.failed``, the root's hash cache)
  are plain objects; only refs need compare-and-swap.

There is no lock on a bucket: gc deletes only unreachable objects older than its grace
period, so an object written by a tick in flight (younger than the grace) is never swept.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from manifest.errors import (
    DanglingRefError,
    InvalidRefNameError,
    ObjectNotFoundError,
    RefConflictError,
    StoreError,
)
from manifest.location import BucketURL
from manifest.model import ReflogEntry
from manifest.store.base import Capabilities, Files, Store
from manifest.store.objects import Objects, is_object_id, object_id
from manifest.store.refs import Refs, RefTransaction, validate_ref_name
from manifest.store.s3 import Bucket

if TYPE_CHECKING:
    from manifest.scanresult import TreeSource

WRITE_THREADS: Final = 16  # puts are network waits
# Where a bucket store keeps this machine's stat cache (default: $XDG_CACHE_HOME/manifest)
ENV_CACHE_DIR: Final = "MANIFEST_CACHE_DIR"


# -- objects -----------------------------------------------------------------------------


def _object_key(oid: str) -> str:
    if not is_object_id(oid):
        raise ObjectNotFoundError(oid, "an id that is not 64 hex digits")
    return f"objects/{oid[:2]}/{oid[2:]}"


class BucketObjects(Objects):
    """The object store on a bucket: create-only puts, verified reads."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.where = f"{bucket.url}/objects"

    def contains(self, oid: str) -> bool:
        return self.bucket.exists(_object_key(oid))

    def write_bytes(self, data: bytes) -> str:
        oid = object_id(data)
        if not self.bucket.create(_object_key(oid), data):
            # it exists (the same bytes): put again, so its LastModified is new and gc's
            # grace protects it from a gc on another host that found it unreferenced
            self.bucket.put(_object_key(oid), data)
        return oid

    def write_many(self, objects: Mapping[str, bytes] | TreeSource) -> int:
        """One listing of what is stored, then the missing objects in parallel."""
        ids = list(objects.keys() if isinstance(objects, Mapping) else objects.ids())
        if not ids:
            return 0
        stored = set(self.iter_ids()) if len(ids) > 8 else {i for i in ids if self.contains(i)}
        new: list[tuple[str, bytes]] = []
        reused: list[tuple[str, bytes]] = []
        built = objects if isinstance(objects, Mapping) else objects.built
        for oid in ids:
            if oid in stored and oid not in built:
                continue  # reused from the stat cache: in the base snapshot already
            data = objects.get(oid)
            if data is None:
                raise StoreError(self.where, f"the scan lost tree {oid}; scan again")
            (reused if oid in stored else new).append((oid, data))
        if not new and not reused:
            return 0
        from concurrent.futures import ThreadPoolExecutor

        def write(item: tuple[str, bytes], fresh: bool) -> None:
            if fresh:
                self.bucket.create(_object_key(item[0]), item[1])
            else:  # freshen a reused tree (a new LastModified), as write_bytes does
                self.bucket.put(_object_key(item[0]), item[1])

        work = [(item, True) for item in new] + [(item, False) for item in reused]
        with ThreadPoolExecutor(min(WRITE_THREADS, len(work))) as pool:
            for _ in pool.map(lambda w: write(*w), work):
                pass
        return len(new)

    def _load(self, oid: str) -> bytes:
        got = self.bucket.get(_object_key(oid))
        if got is None:
            raise ObjectNotFoundError(oid)
        return got[0]

    def iter_ids(
        self,
        prefix: str = "",
        *,
        strict: bool = False,
        problems: Callable[[str, str], None] | None = None,
    ) -> Iterator[str]:
        for oid, _mtime, _size in self._infos(prefix, strict, problems):
            yield oid

    def iter_infos(self, *, strict: bool = False) -> Iterator[tuple[str, float, int]]:
        yield from self._infos("", strict, None)

    def _infos(
        self, prefix: str, strict: bool, problems: Callable[[str, str], None] | None
    ) -> Iterator[tuple[str, float, int]]:
        where = f"objects/{prefix[:2]}" if len(prefix) >= 2 else "objects"
        try:
            metas = list(self.bucket.iter_keys(where))
        except StoreError as exc:
            if strict or problems is None:
                raise
            problems(exc.path, f"{exc.problem}; its objects were not checked")
            return
        found = []
        for meta in metas:
            path = meta["path"]
            parts = path.split("/")
            if len(parts) != 3 or len(parts[1]) != 2:
                continue
            oid = parts[1] + parts[2]
            if is_object_id(oid) and oid.startswith(prefix):
                found.append((oid, meta["last_modified"].timestamp(), int(meta["size"])))
        found.sort()
        yield from found

    def delete(self, oid: str) -> None:
        self.bucket.delete(_object_key(oid))


# -- refs --------------------------------------------------------------------------------


class RefDoc(msgspec.Struct, frozen=True):
    """``refs/<name>`` on a bucket: the value and every move that led to it, oldest first."""

    value: str | None = None
    log: tuple[ReflogEntry, ...] = ()


_DOC_ENCODER = msgspec.json.Encoder()
_DOC_DECODER = msgspec.json.Decoder(RefDoc)


class BucketRefs(Refs):
    """Refs as compare-and-swap objects that carry their reflog."""

    def __init__(self, bucket: Bucket, *, lock_timeout: float = 5.0) -> None:
        self.bucket = bucket
        self.lock_timeout = lock_timeout

    def key(self, name: str) -> str:
        return f"refs/{validate_ref_name(name)}"

    def read_doc(self, name: str) -> tuple[RefDoc | None, str | None]:
        """The ref's document and ETag; (None, None) when it never existed."""
        got = self.bucket.get(self.key(name))
        if got is None:
            return None, None
        data, etag = got
        try:
            return _DOC_DECODER.decode(data), etag
        except msgspec.DecodeError as exc:
            raise StoreError(
                self.bucket.name(self.key(name)),
                f"is not a ref document ({exc}); restore it from the bucket's versions or "
                "delete it and `manifest reset` the ref",
            ) from exc

    def write_doc(self, name: str, doc: RefDoc, etag: str | None) -> bool:
        return self.bucket.replace(self.key(name), _DOC_ENCODER.encode(doc), etag)

    def has_ref(self, name: str) -> bool:
        doc, _ = self.read_doc(name)
        return doc is not None and doc.value is not None

    def has_log(self, name: str) -> bool:
        doc, _ = self.read_doc(name)
        return doc is not None and bool(doc.log)

    def find_ref(self, name: str) -> str | None:
        doc, _ = self.read_doc(name)
        value = doc.value if doc is not None else None
        if value is not None and not is_object_id(value):
            raise DanglingRefError(name, value[:80], "which is not a snapshot id")
        return value

    def _names(self, strict: bool) -> list[str]:
        names = []
        for meta in self.bucket.iter_keys("refs"):
            name = meta["path"].removeprefix("refs/")
            try:
                names.append(validate_ref_name(name))
            except InvalidRefNameError as exc:
                if strict:
                    raise StoreError(self.bucket.name(meta["path"]), str(exc)) from exc
        return sorted(names)

    def _iter_docs(self, strict: bool) -> Iterator[tuple[str, RefDoc | None]]:
        """Every ref's document; None for one that cannot be read (``strict``: raise)."""
        for name in self._names(strict):
            try:
                doc, _ = self.read_doc(name)
            except StoreError:
                if strict:
                    raise
                yield name, None
                continue
            if doc is not None:
                yield name, doc

    def iter_refs(self, *, strict: bool = False) -> Iterator[tuple[str, str | None]]:
        for name, doc in self._iter_docs(strict):
            if doc is None:
                yield name, None
                continue
            if doc.value is None:
                continue
            if not is_object_id(doc.value):
                if strict:
                    raise StoreError(self.bucket.name(self.key(name)), "does not hold an id")
                yield name, None
                continue
            yield name, doc.value

    def iter_lock_files(self) -> Iterator[Path]:
        return iter(())  # no locks on a bucket

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BucketRefTransaction]:
        yield BucketRefTransaction(self, name)

    def read_reflog(self, name: str, *, strict: bool = False) -> list[ReflogEntry]:
        try:
            doc, _ = self.read_doc(name)
        except StoreError:
            if strict:
                raise
            return []
        return list(doc.log) if doc is not None else []

    def iter_reflog_problems(self, name: str) -> Iterator[str]:
        try:
            self.read_doc(name)
        except StoreError as exc:
            yield exc.problem

    def iter_reflog_names(self, *, strict: bool = False) -> Iterator[str]:
        for name, doc in self._iter_docs(strict):
            if doc is None or doc.log:
                yield name

    def read_moves(self, name: str) -> list[ReflogEntry]:
        """Every line is a move that happened: the line and the move are one write."""
        return self.read_reflog(name)


class BucketRefTransaction(RefTransaction):
    """Optimistic: the ref is read once, and written only if nobody moved it meanwhile."""

    def __init__(self, refs: BucketRefs, name: str) -> None:
        self.refs = refs
        self.name = name
        self._doc: RefDoc | None = None
        self._etag: str | None = None
        self._loaded = False

    def _load(self) -> RefDoc:
        if not self._loaded:
            self._doc, self._etag = self.refs.read_doc(self.name)
            self._loaded = True
        return self._doc if self._doc is not None else RefDoc()

    @property
    def value(self) -> str | None:
        value = self._load().value
        if value is not None and not is_object_id(value):
            raise DanglingRefError(self.name, value[:80], "which is not a snapshot id")
        return value

    def read_reflog(self, *, strict: bool = False) -> list[ReflogEntry]:
        return list(self._load().log)

    def _write(self, doc: RefDoc) -> None:
        if not self.refs.write_doc(self.name, doc, self._etag if self._doc is not None else None):
            read = self._doc.value if self._doc is not None else None
            self._loaded = False
            now = self._load()
            if now.value == doc.value and now.log and doc.log and now.log[-1] == doc.log[-1]:
                # Our own write: it was applied, its response was lost and the client's
                # retry found the precondition changed by that very write. The ref holds our
                # value with our log line (its time in nanoseconds makes it ours alone).
                self._loaded = False
                return
            raise RefConflictError(self.name, read, now.value)
        # the next operation in this transaction compares against what was just written
        self._loaded = False

    def _commit(self, old: str | None, new: str | None, entry: ReflogEntry) -> None:
        self._write(RefDoc(new, (*self._load().log, entry)))

    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        doc = self._load()
        self._write(RefDoc(doc.value, tuple(entries)))


# -- small state files -------------------------------------------------------------------


class BucketFiles(Files):
    """``FORMAT``, ``config.toml``, ``pending.failed``: whole-object reads and writes; a
    compare-and-swap is a conditional put against the ETag (as a ref's move is)."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def read(self, name: str) -> bytes | None:
        got = self.bucket.get(name)
        return got[0] if got is not None else None

    def write(self, name: str, data: bytes) -> None:
        self.bucket.put(name, data)

    def create(self, name: str, data: bytes) -> bool:
        return self.bucket.create(name, data)

    def read_tagged(self, name: str) -> tuple[bytes | None, str | None]:
        got = self.bucket.get(name)
        if got is None:
            return None, None
        data, etag = got
        if etag is None:  # (every S3 GET has one; without it no compare can hold)
            raise StoreError(self.bucket.name(name), "cannot read: the server sent no ETag")
        return data, etag

    def replace(self, name: str, data: bytes, tag: str | None) -> bool:
        return self.bucket.replace(name, data, tag)  # If-Match / If-None-Match

    def where(self, name: str) -> str:
        return self.bucket.name(name)


# -- the store ---------------------------------------------------------------------------


def bucket_cache_dir(url: BucketURL) -> Path:
    """This machine's folder for a bucket store's stat cache: ``$MANIFEST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/manifest``, else ``~/.cache/manifest``; one subfolder per store URL."""
    from blake3 import blake3

    env = os.environ  # a property of this machine, like the credentials
    base = env.get(ENV_CACHE_DIR, "").strip()
    if not base:
        xdg = env.get("XDG_CACHE_HOME", "").strip()
        base = os.path.join(xdg, "manifest") if xdg else "~/.cache/manifest"
    name = f"{url.bucket}-{blake3(str(url).encode()).hexdigest()[:16]}"
    return Path(os.path.realpath(os.path.expanduser(base))) / name


class BucketStore(Store):
    def __init__(self, url: BucketURL, *, lock_timeout: float = 5.0) -> None:
        super().__init__()
        self.location = url
        self.bucket = Bucket(url)
        self.cache_dir = bucket_cache_dir(url)
        self.sync = True
        self.lock_timeout = lock_timeout
        self.objects = BucketObjects(self.bucket)
        self.refs = BucketRefs(self.bucket, lock_timeout=lock_timeout)
        self.files = BucketFiles(self.bucket)
        self.caps = Capabilities(local_objects=None, remote=True, locks_reach_all_writers=False)

    def _check_reachable(self) -> None:
        self.bucket.check()  # a missing bucket reads as a missing key: name it

    def _prepare(self) -> None:
        pass  # a bucket has no folders to make
