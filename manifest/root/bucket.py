"""Scanning a data root on a bucket: one listing is the "stat" of every file.

The listing gives each key's size, last-modified time and ETag; no request is made per object
on an unchanged tree. Folder trees are built from the keys' prefixes, so an unchanged prefix
keeps its tree id and a diff skips it whole, as on disk.

Fingerprints by mode:

* ``mtime_size``: size and last-modified (whole seconds on S3).
* ``etag``: the provider's ETag stands for the content (``digest`` is the BLAKE3 of it, so
  trees keep their 32-byte digests). For an object uploaded in parts, the ETag depends on the
  part size, so the same bytes uploaded another way count as a change.
* ``content_hash``: the BLAKE3 of the bytes, read only for keys whose size or ETag differs
  from the hash cache (kept in the state store, shared by every machine).

The cooldown applies to last-modified, which has whole seconds: a key is settled once
``cooldown`` has passed since the *end* of its LastModified second (never early), else it
keeps its previous entry (or is not there yet) and is listed as unstable. In ``mtime_size``
mode a key also waits out its LastModified second with no cooldown: a same-size rewrite in
that second would otherwise never be seen. Deletes are reported at once, cooldown or not.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from blake3 import blake3

from manifest.errors import RootError, StoreError
from manifest.globs import PathFilter
from manifest.location import BucketURL
from manifest.model import KIND_FILE, KIND_TREE, Tree, TreeEntry, encode_object
from manifest.root.base import Root
from manifest.scanresult import (
    DEFAULT_SCAN,
    BaseTrees,
    ScanOptions,
    ScanProblem,
    ScanResult,
    TreeSource,
)
from manifest.store.s3 import Bucket, describe, invalid_key

if TYPE_CHECKING:
    from manifest.config import Config
    from manifest.store import Store

HASH_CACHE: Final = "root-hashes"
LIST_THREADS: Final = 8
HASH_THREADS: Final = 8


class HashRecord(msgspec.Struct, frozen=True, array_like=True):
    size: int
    etag: str
    digest: bytes


_CACHE_ENCODER = msgspec.msgpack.Encoder()
_CACHE_DECODER = msgspec.msgpack.Decoder(dict[str, HashRecord])


def decode_hash_cache(data: bytes | None) -> dict[str, HashRecord]:
    if not data:
        return {}
    try:
        return _CACHE_DECODER.decode(data)
    except msgspec.DecodeError:
        return {}  # only a cache: a damaged one costs re-reading


def encode_hash_cache(records: dict[str, HashRecord]) -> bytes:
    return _CACHE_ENCODER.encode(records)


def list_root(bucket: Bucket) -> list[dict[str, Any]]:
    """Every key of the root, the top-level prefixes listed in parallel."""
    try:
        prefixes, top = bucket.list_dirs(None)
        if len(prefixes) <= 1:
            return top + [m for p in prefixes for m in bucket.iter_keys(p.rstrip("/"))]
        with ThreadPoolExecutor(min(LIST_THREADS, len(prefixes))) as pool:
            parts = list(pool.map(lambda p: list(bucket.iter_keys(p.rstrip("/"))), prefixes))
    except StoreError as exc:
        bad = invalid_key(exc)
        if bad is None:
            raise RootError(str(bucket.url), exc.problem) from exc
        return _list_every_key(bucket, bad, exc)
    return top + [m for part in parts for m in part]


def _list_every_key(bucket: Bucket, bad: str, exc: StoreError) -> list[dict[str, Any]]:
    """The listing library refused the root because of one key that is not a path it
    accepts (anyone can upload ``a//b``): list it ourselves, so the scan leaves such keys out
    and names them, and every other key is scanned as usual."""
    from manifest.store.s3list import NoCredentials, list_keys

    if bucket.url.scheme == "s3":
        try:
            return list(list_keys(bucket.url))
        except NoCredentials:
            pass
        except Exception as error:  # the listing's own faults, named like the library's
            raise RootError(str(bucket.url), f"cannot be listed: {describe(error)}") from error
    raise RootError(
        str(bucket.url),
        f"cannot be listed: the key {bad!r} is not a path the listing accepts (this one needs "
        "S3 credentials in the environment to be left out); rename or delete that key",
    ) from exc


def _etag(meta: dict[str, Any]) -> str:
    """The object's ETag; a server that gives none falls back to its last-modified time,
    so a rewrite is never taken for the same version."""
    etag = str(meta.get("e_tag") or "").strip('"')
    return etag or f"last-modified:{meta['last_modified'].timestamp()!r}"


def scan_bucket(
    bucket: Bucket,
    *,
    mode: str,
    cooldown_ns: int,
    path_filter: PathFilter,
    base: BaseTrees,
    hashes: dict[str, HashRecord],
    rehash_all: bool = False,
    skip_prefix: str | None = None,
    on_hash: Callable[[int], None] | None = None,
    on_walk: Callable[[int, int], None] | None = None,
    now_ns: int | None = None,
    listing: list[dict[str, Any]] | None = None,
) -> ScanResult:
    """Scan the bucket root. ``hashes`` (content_hash) is updated in place. ``listing``:
    every key of the root as a listing gives it, when already known (the events' journal
    keeps one); else the bucket is listed now."""
    started = time.time_ns()
    now = started if now_ns is None else now_ns
    metas = list_root(bucket) if listing is None else listing
    markers = _folder_markers(bucket, metas)
    problems: list[ScanProblem] = []
    unstable: list[str] = []
    skipped: list[str] = []
    # folder path ("" or "a/b/") -> name -> entry; folders -> subfolder names
    files: dict[str, dict[bytes, TreeEntry]] = {"": {}}
    subdirs: dict[str, set[str]] = {"": set()}
    to_hash: list[tuple[str, dict[str, Any]]] = []
    total_files = total_bytes = 0

    def folder_of(rel: str) -> tuple[str, bytes]:
        head, _, name = rel.rpartition("/")
        folder = head + "/" if head else ""
        parent = ""
        for part in head.split("/") if head else ():
            child = parent + part + "/"
            if child not in files:
                files[child] = {}
                subdirs[child] = set()
            subdirs[parent].add(child)
            parent = child
        return folder, name.encode("utf-8", "surrogateescape")

    for meta in metas:
        rel = meta["path"]
        if rel.endswith("/") or rel in markers:
            continue  # a "folder marker" some tools create
        if skip_prefix and (rel + "/").startswith(skip_prefix + "/"):
            if rel == skip_prefix:
                skipped.append(rel)  # data named like the store's prefix: say it is left out
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in rel
        ):
            problems.append(
                ScanProblem(
                    rel,
                    "a key that is not a file path (an empty, '.' or '..' part, or a control "
                    "character); it is left out: rename it",
                )
            )
            continue
        if not path_filter.everything and not path_filter.wants_file(rel):
            continue
        if not path_filter.everything and any(
            path_filter.skips_dir("/".join(parts[:i])) for i in range(1, len(parts))
        ):
            continue
        mtime_ns = int(meta["last_modified"].timestamp()) * 1_000_000_000
        folder, name = folder_of(rel)
        # LastModified has whole seconds: the write may have been at any time in that
        # second, so its age counts from the second's end (the cooldown is never short).
        # mtime_size also waits that second out with no cooldown: a same-size rewrite in
        # the same second would otherwise look unchanged forever.
        written_by_ns = mtime_ns + 1_000_000_000
        if (cooldown_ns and now - written_by_ns < cooldown_ns) or (
            not cooldown_ns and mode == "mtime_size" and now < written_by_ns
        ):
            unstable.append(rel)
            old = base.entry(folder.encode("utf-8", "surrogateescape"), name)
            if old is not None and old.kind == KIND_FILE:
                files[folder][name] = old
                total_files += 1
                total_bytes += old.size
            continue
        size = int(meta["size"])
        total_files += 1
        total_bytes += size
        if mode == "mtime_size":
            files[folder][name] = TreeEntry(name, KIND_FILE, size, mtime_ns, b"")
        elif mode == "etag":
            digest = blake3(b"etag:" + _etag(meta).encode()).digest()
            files[folder][name] = TreeEntry(name, KIND_FILE, size, 0, digest)
        else:
            known = hashes.get(rel)
            if (
                known is not None
                and not rehash_all
                and (known.size, known.etag)
                == (
                    size,
                    _etag(meta),
                )
            ):
                files[folder][name] = TreeEntry(name, KIND_FILE, size, 0, known.digest)
            else:
                to_hash.append((rel, meta))
    if on_walk is not None:
        on_walk(total_files, total_bytes)

    hashed = 0
    if to_hash:

        def read(item: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any], Any]:
            rel, meta = item
            try:
                return rel, meta, _hash_object(bucket, rel, _etag(meta))
            except (StoreError, OSError) as exc:
                return rel, meta, exc

        with ThreadPoolExecutor(min(HASH_THREADS, len(to_hash))) as pool:
            for rel, meta, outcome in pool.map(read, to_hash):
                folder, name = folder_of(rel)
                size = int(meta["size"])
                if isinstance(outcome, bytes):
                    hashed += 1
                    hashes[rel] = HashRecord(size, _etag(meta), outcome)
                    files[folder][name] = TreeEntry(name, KIND_FILE, size, 0, outcome)
                    if on_hash is not None:
                        on_hash(size)
                    continue
                # replaced or deleted while read, or unreadable: keep the base entry
                total_files -= 1
                total_bytes -= size
                if outcome is None:
                    unstable.append(rel)
                else:
                    problems.append(ScanProblem(rel, f"cannot be read: {describe(outcome)}"))
                old = base.entry(folder.encode("utf-8", "surrogateescape"), name)
                if old is not None and old.kind == KIND_FILE:
                    files[folder][name] = old
                    total_files += 1
                    total_bytes += old.size
    if mode == "content_hash":
        listed = {m["path"] for m in metas if m["path"] not in markers}
        for rel in [r for r in hashes if r not in listed]:
            del hashes[rel]

    # Trees, deepest folders first.
    built: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    ids: dict[str, str] = {}
    for folder in sorted(files, key=lambda f: f.count("/"), reverse=True):
        entries = dict(files[folder])
        count = len(entries)
        for child in subdirs[folder]:
            if child not in ids:
                continue
            name = child[len(folder) : -1].encode("utf-8", "surrogateescape")
            if name in entries:
                problems.append(
                    ScanProblem(
                        folder + child[len(folder) : -1],
                        "is both a key and a prefix of other keys; the key is left out (it "
                        "counts as removed while the prefix exists): rename one of them",
                    )
                )
                total_files -= 1
                total_bytes -= entries[name].size
                count -= 1
            entries[name] = TreeEntry(name, KIND_TREE, counts[child], 0, bytes.fromhex(ids[child]))
            count += counts[child]
        if not entries and folder:
            continue  # empty folders are not recorded
        data = encode_object(Tree(entries=tuple(sorted(entries.values(), key=_by_name))))
        oid = blake3(data).hexdigest()
        built[oid] = data
        ids[folder] = oid
        counts[folder] = count
    unstable.sort()
    # Trees the same as the base snapshot's at the same folder are "clean" (in the store,
    # referenced by the base): only the others are written, or freshened when they exist.
    changed = _changed_trees(ids, subdirs, base)
    clean = {
        oid: folder.encode("utf-8", "surrogateescape")
        for folder, oid in ids.items()
        if oid not in changed
    }
    return ScanResult(
        root_id=ids[""],
        trees=TreeSource(
            {oid: data for oid, data in built.items() if oid in changed},
            clean,
            None,
            mode == "content_hash",
        ),
        files=total_files,
        bytes=total_bytes,
        unstable=unstable,
        problems=problems,
        skipped=skipped,
        hashed=hashed,
        started_ns=started,
    )


def _folder_markers(bucket: Bucket, metas: list[dict[str, Any]]) -> set[str]:
    """Keys that are folder markers (``dir/``, written by consoles and many tools) although
    the listing shows them without their slash, as some servers and the listing library do:
    a listed key that is also a prefix of other keys (or, on such a server, empty), which a
    HEAD of the same name does not find (the real key has the slash). Real S3 lists them with
    the slash, so there only keys that are also prefixes cost a HEAD."""
    folders = set()
    for meta in metas:
        head = meta["path"]
        while "/" in head:
            head = head.rpartition("/")[0]
            if head in folders:
                break
            folders.add(head)

    def is_marker(key: str) -> bool:
        try:
            return not bucket.exists(key)
        except StoreError:
            return False  # unknown: treat it as a key (its problems are reported later)

    def probe(keys: list[str]) -> set[str]:
        if not keys:
            return set()
        with ThreadPoolExecutor(min(HASH_THREADS, len(keys))) as pool:
            found = list(pool.map(is_marker, keys))
        return {key for key, marker in zip(keys, found, strict=True) if marker}

    # Keys that are also prefixes are rare: always probed. Empty keys (_SUCCESS, .keep) are
    # many: probed only on a server shown, by such a probe, to drop markers' slashes.
    markers = probe([m["path"] for m in metas if m["path"] in folders])
    if markers:
        markers |= probe(
            [
                m["path"]
                for m in metas
                if int(m["size"]) == 0 and m["path"] not in folders and m["path"][-1:] != "/"
            ]
        )
    return markers


def _changed_trees(ids: dict[str, str], subdirs: dict[str, set[str]], base: BaseTrees) -> set[str]:
    """The new tree ids of folders whose tree differs from the base's at the same folder,
    found top-down as a diff walks (base trees are read only along changed paths)."""
    out: set[str] = set()
    stack: list[tuple[str, str | None]] = [("", base.root_id)]
    while stack:
        folder, base_id = stack.pop()
        new_id = ids.get(folder)
        if new_id is None or new_id == base_id:
            continue
        out.add(new_id)
        entries = base.entries_at(folder.encode("utf-8", "surrogateescape")) if base_id else None
        for child in subdirs.get(folder, ()):
            name = child[len(folder) : -1].encode("utf-8", "surrogateescape")
            old = entries.get(name) if entries else None
            stack.append(
                (child, old.digest.hex() if old is not None and old.kind == KIND_TREE else None)
            )
    return out


def _by_name(entry: TreeEntry) -> bytes:
    return entry.name


def _hash_object(bucket: Bucket, key: str, etag: str) -> bytes | None:
    """BLAKE3 of the object's bytes, streamed; None if it changed since it was listed."""
    try:
        result = bucket.obs.get(bucket.store, key)
        if _etag(result.meta) != etag:
            return None
        hasher = blake3()
        for chunk in result.stream(min_chunk_size=1 << 20):
            hasher.update(chunk)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise StoreError(bucket.name(key), describe(exc)) from exc
    return hasher.digest()


class BucketRoot(Root):
    """A data root on a bucket: one listing is the stat of every file; in content_hash
    mode the hash cache (``HASH_CACHE``, in the store, shared by every machine) keeps the
    reads to the keys whose size or ETag changed. With ``events_queue`` set, the bucket's
    event notifications say which keys changed and the listing is kept in the store
    (``manifest.root.events``): a quiet tick lists nothing."""

    def __init__(self, url: BucketURL, settings: Config | None, store: Store | None) -> None:
        super().__init__(settings, store)
        self.location = self.url = url
        self.local_path = None
        self.bucket = Bucket(url)

    def describe(self) -> str:
        return self.text

    def check(self) -> None:
        self.bucket.check(as_root=True)

    def scan(self, base: BaseTrees, options: ScanOptions = DEFAULT_SCAN) -> ScanResult:
        queue = self.settings.events_queue
        if queue:
            return self._scan_with_events(queue, base, options)
        self.check()
        return self._build(base, options, None)

    def _build(
        self, base: BaseTrees, options: ScanOptions, listing: list[dict[str, Any]] | None
    ) -> ScanResult:
        config, store = self.settings, self.store
        content = config.mode == "content_hash"
        hashes = decode_hash_cache(store.files.read(HASH_CACHE)) if content else {}
        before = dict(hashes)
        skip = self._skip_prefix()
        result = scan_bucket(
            self.bucket,
            mode=config.mode,
            cooldown_ns=int(config.cooldown_sec * 1e9),
            path_filter=PathFilter(config.include, config.exclude),
            base=base,
            hashes=hashes,
            rehash_all=options.rehash_all,
            skip_prefix=skip,
            on_hash=options.on_hash,
            on_walk=options.on_walk,
            listing=listing,
        )
        if content and options.save_cache and hashes != before and store.exists():
            store.files.write(HASH_CACHE, encode_hash_cache(hashes))
        return result

    def _skip_prefix(self) -> str | None:
        """The store's prefix under the root, when it lies there (never scanned)."""
        where = self.store.location
        if isinstance(where, BucketURL) and self.url.contains(where):
            return where.prefix[len(self.url.prefix) :].strip("/")
        return None

    # -- the events' journal (manifest.root.events) ----------------------------------------

    def _context(self) -> str:
        config = self.settings
        return json.dumps([config.mode, list(config.include), list(config.exclude)])

    def _scan_with_events(self, url: str, base: BaseTrees, options: ScanOptions) -> ScanResult:
        """The scan from the kept listing and the events since, or from a full listing when
        the events leave any doubt (the reason is ``ScanResult.reason``)."""
        from manifest.root import events as ev

        config, store = self.settings, self.store
        started = time.time_ns()
        state = ev.decode_state(store.files.read(ev.STATE_FILE))
        root = str(self.url)
        queue: ev.EventQueue | None = ev.EventQueue(url)  # boto3 missing: an error
        drained = ev.Drained()
        reason = ""
        try:
            assert queue is not None
            received = queue.receive(
                wait_sec=config.events_wait_sec,
                visibility_sec=(
                    config.events_visibility_sec if options.consume else ev.PEEK_VISIBILITY_SEC
                ),
                limit=ev.MAX_MESSAGES,
            )
            drained = ev.read_messages(
                received, bucket=self.url.bucket, prefix=self.url.prefix.strip("/"), root=root
            )
        except ev.QueueError as exc:
            queue = None
            reason = f"the events queue cannot be read: {exc.problem}"
        ev.pause_for_tests("received")
        try:
            return self._answer(url, base, options, state, queue, drained, reason, started)
        except BaseException:
            if queue is not None:  # nothing will record this scan: hand the messages back
                with contextlib.suppress(ev.QueueError):
                    queue.release(drained.messages + drained.canaries + drained.others)
            raise

    def _answer(
        self,
        url: str,
        base: BaseTrees,
        options: ScanOptions,
        state: Any,
        queue: Any,
        drained: Any,
        reason: str,
        started: int,
    ) -> ScanResult:
        """The scan once the queue is read: the last clean result, the kept listing with the
        events applied, or a full listing."""
        from manifest.root import events as ev

        config, store = self.settings, self.store
        skip = self._skip_prefix()
        drained.events = {  # keys scan_bucket leaves out anyway: folder markers, the store
            key: event
            for key, event in drained.events.items()
            if key and not key.endswith("/") and not (skip and (key + "/").startswith(skip + "/"))
        }
        reason = reason or self._doubt(url, state, drained, options, started)
        result: ScanResult | None = None
        keys: dict[str, ev.ListedKey] | None = None
        dirty = False  # the kept listing changed
        listed_ns = state.listed_ns if state is not None else started
        if not reason and state is not None:
            if not drained.events and self._quiet(state, base, options):
                result = ScanResult(
                    root_id=base.root_id or "",
                    trees=TreeSource({}, {}, None, config.mode == "content_hash"),
                    files=state.files,
                    bytes=state.bytes,
                    unstable=[],
                    problems=[],
                    skipped=list(state.skipped),
                    hashed=0,
                    started_ns=started,
                    jobs=0,
                    source="journal",
                    reason="no bucket event since the last tick",
                )
            else:
                kept = ev.read_listing(store.files, state)
                if kept is None:
                    reason = "the kept listing is missing or was replaced since its header"
                else:
                    keys = {k.path: k for k in kept}
                    reason, dirty = self._apply(keys, drained.events)
        if result is None:
            if reason or keys is None:
                listed_ns = time.time_ns()
                keys = {k.path: k for k in map(_listed, list_root(self.bucket))}
                source, dirty = "scan", True
            elif drained.events:
                source = "events"
                n = len(drained.events)
                reason = f"{n} key(s) changed by bucket events, e.g. {next(iter(drained.events))}"
            else:
                source = "events"
                reason = (
                    "no bucket event; the trees are built again from the kept listing (the "
                    "last result had files settling, or is not this base's tree)"
                )
            result = self._build(base, options, [_meta(k) for k in keys.values()])
            result.source = source
            result.reason = reason
        if queue is not None:
            settle = self._settler(
                queue,
                url,
                state,
                drained,
                keys if dirty else None,
                listed_ns,
                result,
                full=result.source == "scan",
            )
            if options.consume:
                result.settle = settle
            else:
                settle(False)  # a read-only look hands every message back at once
        if state is not None and state.problem and not result.reason.endswith(state.problem):
            result.reason += f" (the last tick: {state.problem})"
        return result

    def _doubt(self, url: str, state: Any, drained: Any, options: ScanOptions, now: int) -> str:
        """Why the events cannot be trusted now (a full listing is due); "" when they can."""
        from manifest.root import events as ev

        if state is None:
            return "no bucket event state yet: the first tick with events_queue lists every key"
        if state.queue != url or state.root != str(self.url):
            return "the event state was kept for another queue or root"
        if drained.gap:
            return drained.gap
        if len(drained.messages) >= ev.MAX_MESSAGES:
            return f"{ev.MAX_MESSAGES} or more messages waiting: one listing costs less"
        if state.canary not in drained.canary_ids:
            return (
                "manifest's canary message is missing from the queue (purged, expired after "
                "the queue's retention, or held by another reader right now)"
            )
        if options.rehash_all:
            return "a full-hash check lists every key"
        if now - state.listed_ns > ev.MAX_LISTING_AGE_NS:
            hours = ev.MAX_LISTING_AGE_NS // 3_600_000_000_000
            return f"the last full listing is more than {hours} h old"
        return ""

    def _quiet(self, state: Any, base: BaseTrees, options: ScanOptions) -> bool:
        """The last clean result still answers: nothing changed and it is the base's tree."""
        return (
            state.root_id is not None
            and state.root_id == base.root_id
            and state.context == self._context()
            and not options.rehash_all
        )

    def _apply(self, keys: dict[str, Any], events: dict[str, Any]) -> tuple[str, bool]:
        """Re-read each key the events name (a HEAD each) into ``keys``; "" or why a full
        listing is needed instead, and whether any entry changed."""

        def head(rel: str) -> tuple[str, dict[str, Any] | BaseException | None]:
            try:
                return rel, dict(self.bucket.obs.head(self.bucket.store, rel))
            except FileNotFoundError:
                return rel, None
            except Exception as exc:
                return rel, exc

        if not events:
            return "", False
        with ThreadPoolExecutor(min(HASH_THREADS, len(events))) as pool:
            found = list(pool.map(head, sorted(events)))
        changed = False
        for rel, meta in found:
            if isinstance(meta, BaseException):
                if invalid_key(meta) is not None:
                    return f"an event names a key the client cannot read by name: {rel!r}", True
                raise RootError(str(self.url), f"cannot read {rel}: {describe(meta)}") from meta
            old = keys.get(rel)
            if meta is None:
                keys.pop(rel, None)
                changed |= old is not None
            else:
                meta["path"] = rel
                keys[rel] = _listed(meta)
                changed |= keys[rel] != old
        return "", changed

    def _settler(
        self,
        queue: Any,
        url: str,
        state: Any,
        drained: Any,
        keys: dict[str, Any] | None,
        listed_ns: int,
        result: ScanResult,
        *,
        full: bool,
    ) -> Callable[[bool], None]:
        """What to do once the caller knows whether a snapshot records ``result``: durable,
        keep the listing (``keys``: when it changed) and delete the messages it applied; else
        hand them back."""
        from manifest.root import events as ev

        store = self.store
        held = drained.messages + drained.canaries + drained.others

        def settle(durable: bool) -> None:
            try:
                if not durable:
                    queue.release(held)
                    return
                clean = not result.unstable and not result.problems
                new_canary = full or state is None or state.canary not in drained.canary_ids
                header = ev.EventState(
                    version=ev.STATE_VERSION,
                    queue=url,
                    root=str(self.url),
                    generation=ev.new_token(),
                    canary=ev.new_token() if new_canary else state.canary,
                    listed_ns=listed_ns,
                    updated_ns=time.time_ns(),
                    parts=state.parts if state is not None else (),
                    bounds=state.bounds if state is not None else (),
                    root_id=result.root_id if clean else None,
                    files=result.files,
                    bytes=result.bytes,
                    skipped=tuple(result.skipped),
                    context=self._context(),
                )
                same = state is not None and msgspec.structs.replace(
                    header, generation=state.generation, updated_ns=state.updated_ns
                ) == msgspec.structs.replace(state, problem="")
                ours = header.canary
                mine = [m for m in drained.canaries if drained.canary_of[m.receipt] == ours]
                stale = [m for m in drained.canaries if m not in mine]  # of killed ticks
                if same and keys is None and not drained.messages and not stale:
                    queue.release(mine + drained.others)  # a quiet tick
                    return
                raw, tag = store.files.read_tagged(ev.STATE_FILE)
                now = ev.decode_state(raw)
                if (now.generation if now else None) != (state.generation if state else None):
                    # another tick wrote the state since this one read it: its messages come
                    # back after their visibility timeout and are applied then
                    queue.release(held)
                    return
                ev.pause_for_tests("checked")
                if keys is not None:  # the kept listing changed
                    parts, bounds = ev.write_listing(store.files, keys.values(), state)
                    header = msgspec.structs.replace(header, parts=parts, bounds=bounds)
                # The header is written by compare-and-swap against the one just checked:
                # a tick that wrote it in between wins, and this one hands its messages
                # back (the parts it may have rewritten no longer match the winner's
                # header: the next tick lists in full). Nothing is lost either way.
                # (Unchanged, only messages that changed nothing are deleted: a store inside
                # the root would otherwise send an event for every header it writes.)
                if (keys is not None or not same) and not store.files.replace(
                    ev.STATE_FILE, ev.encode_state(header), tag
                ):
                    queue.release(held)
                    return
                ev.pause_for_tests("written")
                queue.delete(drained.messages + stale)
                if new_canary:
                    queue.send_canary(header.canary, str(self.url))
                queue.release(mine + drained.others)
            except (ev.QueueError, StoreError) as exc:
                # The snapshot is durable; what was not deleted comes back and is applied
                # again. Kept for status to show.
                self._note_problem(str(exc))

        return settle

    def _note_problem(self, problem: str) -> None:
        from manifest.root import events as ev

        try:
            raw, tag = self.store.files.read_tagged(ev.STATE_FILE)
            state = ev.decode_state(raw)
            if state is not None:  # (lost to another writer: its header is newer news)
                self.store.files.replace(
                    ev.STATE_FILE,
                    ev.encode_state(msgspec.structs.replace(state, problem=problem[:500])),
                    tag,
                )
        except StoreError:
            pass

    def read_bytes(self, rel_path: str) -> bytes:
        got = self.bucket.get(rel_path)
        if got is None:
            raise FileNotFoundError(f"{self.url}/{rel_path}")
        return got[0]

    def list_files(self, prefix: str = "") -> list[str]:
        keys = self.bucket.iter_keys(prefix.strip("/") or None)
        return sorted(m["path"] for m in keys if not m["path"].endswith("/"))


def _listed(meta: dict[str, Any]) -> Any:
    """A listing's (or a HEAD's) metadata as the events' journal keeps it."""
    from manifest.root.events import ListedKey

    modified = meta["last_modified"]
    ns = int(modified.timestamp()) * 1_000_000_000 + modified.microsecond * 1000
    return ListedKey(str(meta["path"]), int(meta["size"]), ns, str(meta.get("e_tag") or ""))


def _meta(key: Any) -> dict[str, Any]:
    """A kept key as ``scan_bucket`` reads a listing's metadata."""
    seconds, rest = divmod(key.mtime_ns, 1_000_000_000)
    modified = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
    return {"path": key.path, "size": key.size, "last_modified": modified, "e_tag": key.etag}
