"""A bucket root's change journal: S3 event notifications delivered to an SQS queue.

The events say *which keys* changed; the bucket says *what is there*. A tick drains the queue,
keeps the newest event per key (by the events' ``sequencer``), and re-reads only those keys
(one HEAD each, as the local watcher's journal has the walk re-stat only the changed paths).
The keys' new listing entries replace their old ones in the listing kept in the store, and the
trees are built from that listing by the same code as from a full listing
(``manifest.root.bucket.scan_bucket``): the same files give the same snapshot ids, whichever
way the listing was learned. Because every touched key is re-read, an event delivered twice,
late, out of order, or dated before the last full listing changes nothing: the key's entry is
what the bucket holds now, and any later change sends another event.

What is kept (in the state store's files, shared by every machine and pod that ticks):

* ``root-events``: a small header (:class:`EventState`): the queue, the last full listing's
  time, the canary's id, the id of the listing file, and the last clean result (a quiet tick
  reuses it without reading the listing).
* ``root-events.listing.0``, ``.1``, ...: every key of the root (path, size, last-modified,
  ETag), in parts of at most ``PART_BYTES``; a change rewrites the part that holds its key.

Messages are deleted only once a snapshot recording them is durable (``ScanResult.settle``,
called by the verb that wrote the snapshot), and after the listing that applied them is
written: a tick killed at any point leaves them in the queue, where they reappear after the
visibility timeout and are applied again (harmless). A read-only look (``status``, ``diff``)
hands every message it received back to the queue at once. Two ticks that settle at once
(two pods, the nightly check beside the schedule) cannot both write: the header is replaced
by compare-and-swap (``Files.replace``: an ``If-Match`` put on a bucket, a lock file on a
folder) against the one the tick read, and the loser hands its messages back.

Any doubt is a full listing, exactly as without events, with the reason in
``ScanResult.reason``: no state yet, another queue, an ``s3:TestEvent`` (the notification
configuration was written: events before it may be missing), the canary missing (the queue was
purged, its messages expired, or another reader holds them), a message that is not an S3
event, the queue unreadable, a full-hash check, or the last full listing older than
``MAX_LISTING_AGE_NS``.

The canary is a message manifest sends to the queue itself after a full listing and hands
back after every tick: a purge, an expiry (the queue's retention) or a second consumer takes it
away with the events, and its absence is the one sign SQS gives of a gap.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_plus, urlsplit

import msgspec

from manifest.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from manifest.store.base import Files

STATE_FILE: Final = "root-events"
LISTING_FILE: Final = "root-events.listing"  # its parts: root-events.listing.0, .1, ...
# The listing is kept in parts of at most this many bytes (new parts are half full): the
# store's small files stay small (a local store reads at most 1 MiB), and one change
# rewrites one part.
PART_BYTES: Final = 768 * 1024
STATE_VERSION: Final = 1
CANARY_KEY: Final = "manifest-canary"
# A tick re-lists in full when the last full listing is older than this, even when the
# nightly full-hash check (which always lists) did not run.
MAX_LISTING_AGE_NS: Final = 26 * 3600 * 1_000_000_000
# Messages one tick takes at most; beyond, a full listing costs less than the HEADs.
MAX_MESSAGES: Final = 10_000
DEFAULT_WAIT_SEC: Final = 1.0  # long polling: SQS asks every server, so quiet means empty
DEFAULT_VISIBILITY_SEC: Final = 300  # how long a tick holds its messages before they return
PEEK_VISIBILITY_SEC: Final = 30  # a read-only look holds them this long at most if killed
INSTALL_HINT: Final = "pip install 'raw-manifest[events]'"
TEST_HOOK: Final = "MANIFEST_TEST_EVENTS_PAUSE"  # tests only: pause at a named point

_QUEUE_PATH_RE = re.compile(r"/(?P<account>[0-9]{12})/(?P<name>[A-Za-z0-9_-]{1,80}(\.fifo)?)")
_AWS_HOST_RE = re.compile(r"sqs[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?")


class QueueError(ManifestError):
    """The events queue cannot be used (unreadable, access denied, boto3 missing)."""

    def __init__(self, queue: str, problem: str) -> None:
        self.queue = queue
        self.problem = problem
        super().__init__(f"events queue {queue} (events_queue, RAW_EVENTS_QUEUE): {problem}")


def parse_queue_url(value: object, variable: str) -> str:
    """An SQS queue URL, ``https://sqs.<region>.amazonaws.com/<account>/<name>`` (plain http
    only for a loopback test server), or a ``ConfigError`` naming ``variable``."""
    from manifest.store.s3 import is_loopback

    text = str(value).strip()
    parts = urlsplit(text)
    expected = (
        "an SQS queue URL such as https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events"
    )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, text, expected)
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(variable, text, expected + " (plain http only for a loopback server)")
    if not _QUEUE_PATH_RE.fullmatch(parts.path) or parts.query or parts.fragment:
        raise ConfigError(variable, text, expected)
    if parts.path.endswith(".fifo"):
        raise ConfigError(
            variable, text, expected + " (a standard queue: S3 cannot notify a FIFO queue)"
        )
    return text


def queue_region(url: str, env: Mapping[str, str]) -> str:
    match = _AWS_HOST_RE.fullmatch(urlsplit(url).hostname or "")
    if match:
        return match["region"]
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


# -- what is kept ----------------------------------------------------------------------------


class ListedKey(msgspec.Struct, frozen=True, array_like=True):
    """One key of the root as a listing (or a HEAD) gives it."""

    path: str
    size: int
    mtime_ns: int  # last-modified
    etag: str


class EventState(msgspec.Struct, frozen=True):
    """``root-events``: what the next tick starts from."""

    version: int
    queue: str
    root: str
    generation: str  # new at every write: a writer that finds another has written backs off
    canary: str  # the id of the canary message this state expects to find in the queue
    listed_ns: int  # when the last full listing started
    updated_ns: int
    parts: tuple[str, ...]  # the BLAKE3 of each part of the listing, in key order
    bounds: tuple[str, ...]  # the first key each part may hold ("" for the first)
    markers: tuple[str, ...] = ()  # keys that are folder markers (see bucket._folder_markers)
    # the last clean result (no file settling, no problem), reused by a quiet tick
    root_id: str | None = None
    files: int = 0
    bytes: int = 0
    skipped: tuple[str, ...] = ()
    context: str = ""  # mode and filters of that result
    problem: str = ""  # what went wrong when the last tick settled (shown by status)


_STATE_ENCODER = msgspec.json.Encoder()
_STATE_DECODER = msgspec.json.Decoder(EventState)
_LISTING_ENCODER = msgspec.msgpack.Encoder()
_LISTING_DECODER = msgspec.msgpack.Decoder(list[ListedKey])


def decode_state(data: bytes | None) -> EventState | None:
    if not data:
        return None
    try:
        state = _STATE_DECODER.decode(data)
    except msgspec.DecodeError:
        return None  # a damaged header costs one full listing
    return state if state.version == STATE_VERSION else None


def encode_state(state: EventState) -> bytes:
    return _STATE_ENCODER.encode(state)


def part_name(index: int) -> str:
    return f"{LISTING_FILE}.{index}"


def read_listing(files: Files, state: EventState) -> list[ListedKey] | None:
    """Every key of the kept listing; None when a part is missing, damaged, or was written
    by another tick after this header (then a full listing)."""
    from concurrent.futures import ThreadPoolExecutor

    from blake3 import blake3

    with ThreadPoolExecutor(min(8, max(1, len(state.parts)))) as pool:
        datas = list(pool.map(files.read, map(part_name, range(len(state.parts)))))
    out: list[ListedKey] = []
    for data, want in zip(datas, state.parts, strict=True):
        if data is None or blake3(data).hexdigest() != want:
            return None
        try:
            out.extend(_LISTING_DECODER.decode(data))
        except msgspec.DecodeError:
            return None
    return out


def write_listing(
    files: Files, keys: Iterable[ListedKey], state: EventState | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write the listing's parts that differ from ``state``'s; its (parts, bounds). The
    parts keep their bounds while each stays under ``PART_BYTES``; else all are cut again."""
    from bisect import bisect_right
    from concurrent.futures import ThreadPoolExecutor

    from blake3 import blake3

    ordered = sorted(keys, key=lambda k: k.path)
    bounds = state.bounds if state is not None and state.bounds else ("",)
    groups: list[list[ListedKey]] = [[] for _ in bounds]
    for key in ordered:
        groups[bisect_right(bounds, key.path) - 1].append(key)
    encoded = [_LISTING_ENCODER.encode(group) for group in groups]
    if any(len(data) > PART_BYTES for data in encoded):
        groups, size = [[]], 0
        for key in ordered:
            cost = len(key.path) + len(key.etag) + 24
            if size + cost > PART_BYTES // 2 and groups[-1]:
                groups.append([])
                size = 0
            groups[-1].append(key)
            size += cost
        bounds = ("", *(group[0].path for group in groups[1:]))
        encoded = [_LISTING_ENCODER.encode(group) for group in groups]
    hashes = tuple(blake3(data).hexdigest() for data in encoded)
    old = state.parts if state is not None and state.bounds == bounds else ()
    todo = [i for i in range(len(hashes)) if i >= len(old) or old[i] != hashes[i]]
    if todo:
        with ThreadPoolExecutor(min(8, len(todo))) as pool:
            list(pool.map(lambda i: files.write(part_name(i), encoded[i]), todo))
    return hashes, tuple(bounds)


def new_token() -> str:
    return secrets.token_hex(8)


# -- the events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyEvent:
    """The newest event seen for one key of the root."""

    key: str  # relative to the root
    removed: bool
    sequencer: str
    time: str
    order: int  # arrival order, which breaks ties when no sequencer is given


def sequencer_key(sequencer: str) -> tuple[int, str]:
    """Sequencers of one key compare as hex strings left-padded to equal length (as AWS
    documents); the length first, then the padded text, is the same order."""
    text = sequencer.lstrip("0").upper()
    return len(text), text


def newer(a: KeyEvent, b: KeyEvent) -> KeyEvent:
    """The later of two events of one key: the higher sequencer; without sequencers (some
    servers give none), the later arrival."""
    if a.sequencer and b.sequencer and a.sequencer != b.sequencer:
        return a if sequencer_key(a.sequencer) > sequencer_key(b.sequencer) else b
    return a if a.order > b.order else b


@dataclass
class Message:
    id: str
    receipt: str
    body: str


@dataclass
class Drained:
    """What one drain of the queue found."""

    messages: list[Message] = field(default_factory=list)
    events: dict[str, KeyEvent] = field(default_factory=dict)  # key -> newest event
    canaries: list[Message] = field(default_factory=list)  # ours, for this root
    canary_ids: set[str] = field(default_factory=set)
    canary_of: dict[str, str] = field(default_factory=dict)  # receipt -> canary id
    others: list[Message] = field(default_factory=list)  # another root's canaries: handed back
    gap: str = ""  # why the events cannot be trusted (a full listing is due)


def read_messages(
    messages: list[Message], *, bucket: str, prefix: str, root: str, start: int = 0
) -> Drained:
    """Sort ``messages`` into events of the root's keys (newest per key), canaries, and
    gaps. Events of other buckets or of keys outside the root's prefix are ignored (their
    messages are deleted with the rest)."""
    out = Drained()
    order = start
    for message in messages:
        try:
            body = json.loads(message.body)
        except ValueError:
            out.gap = out.gap or f"message {message.id} is not JSON"
            out.messages.append(message)
            continue
        if isinstance(body, dict) and body.get("Type") == "Notification" and "Message" in body:
            try:  # delivered through SNS: the S3 event is the notification's message
                body = json.loads(str(body["Message"]))
            except ValueError:
                out.gap = out.gap or f"message {message.id} wraps no JSON"
                out.messages.append(message)
                continue
        if isinstance(body, dict) and CANARY_KEY in body:
            if body.get("root") == root:
                out.canaries.append(message)
                out.canary_ids.add(str(body[CANARY_KEY]))
                out.canary_of[message.receipt] = str(body[CANARY_KEY])
            else:
                out.others.append(message)
            continue
        out.messages.append(message)
        if not isinstance(body, dict):
            out.gap = out.gap or f"message {message.id} is not an S3 event"
            continue
        if body.get("Event") == "s3:TestEvent":
            out.gap = out.gap or (
                "an s3:TestEvent: the bucket's notification configuration was written, events "
                "before it may be missing"
            )
            continue
        records = body.get("Records")
        if not isinstance(records, list):
            out.gap = out.gap or f"message {message.id} is not an S3 event"
            continue
        for record in records:
            try:
                name = str(record["eventName"])
                s3 = record["s3"]
                if s3["bucket"]["name"] != bucket:
                    continue
                obj = s3["object"]
                key = unquote_plus(str(obj["key"]))
                sequencer = str(obj.get("sequencer") or "")
                when = str(record.get("eventTime") or "")
            except (KeyError, TypeError):
                out.gap = out.gap or f"message {message.id} holds a malformed S3 event record"
                continue
            if prefix:
                if not key.startswith(prefix + "/"):
                    continue
                key = key[len(prefix) + 1 :]
            order += 1
            event = KeyEvent(key, name.startswith("ObjectRemoved"), sequencer, when, order)
            known = out.events.get(key)
            out.events[key] = event if known is None else newer(known, event)
    return out


# -- the queue -------------------------------------------------------------------------------


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_CREDENTIAL_VARIABLES: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


class EventQueue:
    """The few SQS requests a tick makes, through boto3 (imported only here)."""

    def __init__(self, url: str, env: Mapping[str, str] | None = None) -> None:
        self.url = url
        env = os.environ if env is None else env
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
        except ImportError as exc:
            raise QueueError(
                url, f"reading it needs boto3, which is not installed: {INSTALL_HINT}"
            ) from exc
        parts = urlsplit(url)
        region = queue_region(url, env)
        endpoint = f"{parts.scheme}://{parts.netloc}"
        credentials = tuple(env.get(k, "") for k in _CREDENTIAL_VARIABLES)
        key = (endpoint, region, credentials)
        with _CLIENTS_LOCK:  # a client costs ~0.1 s to build; boto3's are thread-safe
            client = _CLIENTS.get(key)
            if client is None:
                client = boto3.session.Session().client(
                    "sqs",
                    region_name=region,
                    endpoint_url=endpoint,
                    config=BotoConfig(
                        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5
                    ),
                )
                _CLIENTS[key] = client
        self.client = client

    def _call(self, what: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, what)(QueueUrl=self.url, **kwargs)
        except Exception as exc:  # botocore's errors: named, never a traceback
            raise QueueError(self.url, f"{what} failed: {_describe(exc)}") from exc

    def receive(self, *, wait_sec: float, visibility_sec: int, limit: int) -> list[Message]:
        """Every message visible now, up to ``limit``; each held for ``visibility_sec``."""
        out: list[Message] = []
        wait = round(wait_sec)
        while len(out) < limit:
            got = self._call(
                "receive_message",
                MaxNumberOfMessages=10,
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility_sec,
                AttributeNames=["SentTimestamp"],
            ).get("Messages", [])
            out.extend(Message(m["MessageId"], m["ReceiptHandle"], m.get("Body", "")) for m in got)
            if len(got) < 10:
                break  # a short batch: the queue is drained (the rest, if any, next tick)
            wait = 0
        return out

    def _batches(self, messages: list[Message]) -> Iterable[list[Message]]:
        unique = list({m.receipt: m for m in messages}.values())
        for i in range(0, len(unique), 10):
            yield unique[i : i + 10]

    def delete(self, messages: list[Message]) -> None:
        for batch in self._batches(messages):
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(batch)]
            answer = self._call("delete_message_batch", Entries=entries)
            failed = [
                f for f in answer.get("Failed", []) if f.get("Code") != "ReceiptHandleIsInvalid"
            ]
            if failed:
                raise QueueError(self.url, f"DeleteMessageBatch failed: {failed[0]}")

    def release(self, messages: list[Message]) -> None:
        """Make messages visible again at once (a read-only look, the canary)."""
        for batch in self._batches(messages):
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": 0}
                for i, m in enumerate(batch)
            ]
            self._call("change_message_visibility_batch", Entries=entries)

    def send_canary(self, canary: str, root: str) -> None:
        body = json.dumps({CANARY_KEY: canary, "root": root, "sent_ns": time.time_ns()})
        self._call("send_message", MessageBody=body)


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        denied = ("InvalidClientTokenId", "UnrecognizedClientException")
        if "AccessDenied" in code or code in denied:
            return (
                f"access denied ({code}): the role needs sqs:ReceiveMessage, sqs:DeleteMessage, "
                "sqs:ChangeMessageVisibility and sqs:SendMessage on the queue"
            )
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            return "the queue does not exist (create it, or fix the URL)"
        return f"{code}: {error.get('Message', '')}".strip(": ")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def pause_for_tests(point: str) -> None:
    """Tests only: with ``MANIFEST_TEST_EVENTS_PAUSE=<point>:<file>``, write ``file`` and
    sleep at ``point``, for a test to SIGKILL the process exactly there."""
    hook = os.environ.get(TEST_HOOK, "")
    name, _, marker = hook.partition(":")
    if name != point or not marker:
        return
    with open(marker, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(600)
