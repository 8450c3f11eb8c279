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
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from manifest.errors import (
    DanglingRefError,
    InvalidRefNameError,
    ObjectNotFoundError,
    RefConflictError,
    RootError,
    StoreError,
)
from manifest.location import BucketURL, open_bucket
from manifest.model import ReflogEntry
from manifest.objects import ObjectStore, is_object_id, object_id
from manifest.refs import validate_ref_name
from manifest.text import escape_text

if TYPE_CHECKING:
    from manifest.scan import TreeSource

_ANY: Final = object()
WRITE_THREADS: Final = 16  # puts are network waits
LIST_CHUNK: Final = 1000


def describe(exc: BaseException) -> str:
    """A short reason for a failed bucket request (the library's message names the URL and
    the status, never a credential)."""
    text = str(exc)
    if "NoSuchBucket" in text:
        return "the bucket does not exist (create it, or fix the URL)"
    name = type(exc).__name__
    if name in ("PermissionDeniedError", "UnauthenticatedError") or " 403 " in text:
        return (
            "access denied: check the credentials (environment, profile or instance role) "
            "and the bucket policy"
        )
    first = text.strip().splitlines()[0] if text.strip() else name
    return first[:300]


def invalid_key(exc: BaseException | None) -> str | None:
    """The key named by the listing library's refusal of a key that is not a path it accepts
    (``a//b``, ``./x``), or None for any other error."""
    import re

    while exc is not None:
        if type(exc).__name__ == "InvalidPathError":
            found = re.search(r'parsing Path "(.*?)"', str(exc), re.DOTALL)
            return found.group(1) if found else ""
        exc = exc.__cause__
    return None


def _errors() -> Any:
    import obstore.exceptions

    return obstore.exceptions


class Bucket:
    """One bucket prefix, with the few requests the store and the scanner need."""

    def __init__(self, url: BucketURL, env: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.store = open_bucket(url, env)
        import obstore

        self.obs = obstore

    def name(self, key: str) -> str:
        return f"{self.url}/{key}"

    def get(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, or None when it does not exist."""
        try:
            result = self.obs.get(self.store, key)
            data = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot read: {describe(exc)}") from exc
        return data, result.meta.get("e_tag")

    def exists(self, key: str) -> bool:
        try:
            self.obs.head(self.store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot read: {describe(exc)}") from exc
        return True

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; False if it did."""
        return self.replace(key, data, None)

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        """Compare-and-swap: write ``key`` if it still has ``etag`` (None: if it does not
        exist). False when another writer got there first."""
        errors = _errors()
        mode: Any = "create" if etag is None else {"e_tag": etag}
        try:
            self.obs.put(self.store, key, data, mode=mode)
        except (errors.AlreadyExistsError, errors.PreconditionError):
            return False
        except FileNotFoundError:  # If-Match on a key deleted meanwhile
            return False
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot write: {describe(exc)}") from exc
        return True

    def put(self, key: str, data: bytes) -> None:
        try:
            self.obs.put(self.store, key, data)
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot write: {describe(exc)}") from exc

    def delete(self, key: str) -> None:
        try:
            self.obs.delete(self.store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot delete: {describe(exc)}") from exc

    def iter_keys(self, prefix: str | None = None) -> Iterator[Any]:
        """Every object below ``prefix`` (path, size, last_modified, e_tag), paginated."""
        try:
            for chunk in self.obs.list(self.store, prefix, chunk_size=LIST_CHUNK):
                yield from chunk
        except Exception as exc:
            raise StoreError(self.name(prefix or ""), f"cannot list: {describe(exc)}") from exc

    def list_dirs(self, prefix: str | None = None) -> tuple[list[str], list[Any]]:
        """One level: the common prefixes (folders) and the objects directly below."""
        try:
            result = self.obs.list_with_delimiter(self.store, prefix)
        except Exception as exc:
            raise StoreError(self.name(prefix or ""), f"cannot list: {describe(exc)}") from exc
        return list(result["common_prefixes"]), list(result["objects"])

    def check(self, as_root: bool = False) -> None:
        """Raise a clear error unless the bucket exists and can be listed."""
        try:
            next(iter(self.obs.list(self.store, None, chunk_size=1)), None)
        except Exception as exc:
            if invalid_key(exc) is not None:
                return  # it lists; one key is not a path the library accepts (the scan says)
            if as_root:
                raise RootError(str(self.url), f"cannot be listed: {describe(exc)}") from exc
            raise StoreError(str(self.url), f"cannot be listed: {describe(exc)}") from exc


# -- objects -----------------------------------------------------------------------------


def _object_key(oid: str) -> str:
    if not is_object_id(oid):
        raise ObjectNotFoundError(oid, "an id that is not 64 hex digits")
    return f"objects/{oid[:2]}/{oid[2:]}"


class BucketObjects(ObjectStore):
    """The object store on a bucket: create-only puts, verified reads."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.where = f"{bucket.url}/objects"
        self.sync = True

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

    def read_bytes(self, oid: str) -> bytes:
        got = self.bucket.get(_object_key(oid))
        if got is None:
            raise ObjectNotFoundError(oid)
        data = got[0]
        actual = object_id(data)
        if actual != oid:
            from manifest.errors import CorruptObjectError

            raise CorruptObjectError(oid, f"its bytes hash to {actual[:12]}")
        return data

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


class BucketRefs:
    """Refs as compare-and-swap objects that carry their reflog."""

    def __init__(self, bucket: Bucket, *, lock_timeout: float = 5.0) -> None:
        self.bucket = bucket
        self.lock_timeout = lock_timeout
        self.sync = True

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

    def iter_lock_files(self) -> Iterator[Any]:
        return iter(())  # no locks on a bucket

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BucketRefTransaction]:
        yield BucketRefTransaction(self, name)

    def update_ref(
        self,
        name: str,
        new: str | None,
        *,
        reason: str,
        expected: str | object | None = _ANY,
        runs: tuple[str, ...] = (),
    ) -> str | None:
        return BucketRefTransaction(self, name).set(
            new, reason=reason, expected=expected, runs=runs
        )

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


class BucketRefTransaction:
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

    def _write(self, doc: RefDoc, expected: object) -> None:
        if not self.refs.write_doc(self.name, doc, self._etag if self._doc is not None else None):
            read = self._doc.value if self._doc is not None else None
            wanted = read if expected is _ANY else expected
            self._loaded = False
            now = self._load()
            if now.value == doc.value and now.log and doc.log and now.log[-1] == doc.log[-1]:
                # Our own write: it was applied, its response was lost and the client's
                # retry found the precondition changed by that very write. The ref holds our
                # value with our log line (its time in nanoseconds makes it ours alone).
                self._loaded = False
                return
            raise RefConflictError(self.name, wanted, now.value)  # type: ignore[arg-type]
        # the next operation in this transaction compares against what was just written
        self._loaded = False

    def set(
        self,
        new: str | None,
        *,
        reason: str,
        expected: str | object | None = _ANY,
        runs: tuple[str, ...] = (),
    ) -> str | None:
        doc = self._load()
        old = doc.value
        if expected is not _ANY and old != expected:
            raise RefConflictError(self.name, expected, old)  # type: ignore[arg-type]
        if new is not None and not is_object_id(new):
            raise DanglingRefError(self.name, new, "which is not a snapshot id")
        if new == old:
            return old
        entry = ReflogEntry(
            old=old, new=new, time_ns=time.time_ns(), reason=escape_text(reason), runs=runs
        )
        self._write(RefDoc(new, (*doc.log, entry)), expected)
        return old

    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        doc = self._load()
        self._write(RefDoc(doc.value, tuple(entries)), _ANY)


# -- small state files -------------------------------------------------------------------


class BucketFiles:
    """``FORMAT``, ``config.toml``, ``pending.failed``: whole-object reads and writes."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def read(self, name: str) -> bytes | None:
        got = self.bucket.get(name)
        return got[0] if got is not None else None

    def write(self, name: str, data: bytes) -> None:
        self.bucket.put(name, data)

    def create(self, name: str, data: bytes) -> bool:
        return self.bucket.create(name, data)

    def where(self, name: str) -> str:
        return self.bucket.name(name)
