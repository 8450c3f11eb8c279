"""Issue 24.3: a bucket root's change journal from S3 event notifications delivered to SQS,
against moto's server (which delivers a bucket's notifications to its own SQS)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from manifest import Repository, load_config
from manifest.errors import ConfigError, SettingsMismatchError
from manifest.model import ChangeSet
from manifest.root.events import (
    LISTING_FILE,
    STATE_FILE,
    KeyEvent,
    Message,
    QueueError,
    decode_state,
    encode_state,
    newer,
    read_messages,
)
from tests.s3server import CountingProxy, S3Server
from tests.test_bucket import SAMPLE, delete, upload

REPO = Path(__file__).resolve().parents[1]
FAST = {"MANIFEST_EVENTS_WAIT_SEC": "0"}  # moto's queue is drained when it answers empty


@pytest.fixture(scope="session")
def proxy(s3_server: S3Server) -> Iterator[CountingProxy]:
    counting = CountingProxy(s3_server.endpoint)
    yield counting
    counting.close()


class Setup:
    """A bucket root whose events go to a queue, with a store that reads them and a peer
    store that lists every tick: on the bucket (the deployed shape), or in local folders
    (the same files, fewer requests to the test server: faster)."""

    def __init__(self, s3: S3Server, endpoint: str, local: Path | None = None) -> None:
        self.bucket = s3.make_bucket("raw")
        self.raw = f"s3://{self.bucket}/data"
        if local is None:
            self.state = f"s3://{s3.make_bucket('state')}/m"
            self.listed = f"s3://{s3.make_bucket('state')}/m"  # the peer that lists every tick
        else:
            self.state, self.listed = str(local / "events"), str(local / "listed")
        self.queue = s3.make_queue(self.bucket, "data/").replace(s3.endpoint, endpoint)
        self.sqs = s3.client("sqs")
        upload(self.raw, SAMPLE)

    def repo(self, *, events: bool = True, **overrides: object) -> Repository:
        kwargs: dict[str, object] = {
            "root": self.raw,
            "store": self.state if events else self.listed,
            "cooldown_sec": 0,
            "events_queue": self.queue if events else None,
            "env": FAST,
        }
        kwargs.update(overrides)
        return Repository(load_config(**kwargs))  # type: ignore[arg-type]


def waiting(s3: S3Server, queue: str) -> tuple[int, int]:
    """(visible, held) messages of ``queue`` (moto counts exactly)."""
    name = queue.rsplit("/", 1)[-1]
    url = f"{s3.endpoint}/123456789012/{name}"
    attrs = s3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    got = attrs["Attributes"]
    return int(got["ApproximateNumberOfMessages"]), int(
        got["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.fixture
def setup(s3: S3Server, tmp_path: Path) -> Setup:
    return Setup(s3, s3.endpoint, tmp_path)


# -- the premise and the events ------------------------------------------------------------


def test_moto_delivers_a_buckets_events_to_its_queue(s3: S3Server) -> None:
    bucket = s3.make_bucket("raw")
    queue = s3.make_queue(bucket, "data/")
    upload(f"s3://{bucket}/data", {"a b/c+d.txt": b"1"})
    upload(f"s3://{bucket}", {"elsewhere.txt": b"1"})  # outside the filter: no event
    delete(f"s3://{bucket}/data", "a b/c+d.txt")
    sqs = s3.client("sqs")
    bodies = []
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        bodies += [json.loads(m["Body"]) for m in got]
    assert bodies[0]["Event"] == "s3:TestEvent"
    names = [(r["eventName"], r["s3"]["object"]["key"]) for b in bodies[1:] for r in b["Records"]]
    assert names == [
        ("ObjectCreated:Put", "data/a+b/c%2Bd.txt"),
        ("ObjectRemoved:Delete", "data/a+b/c%2Bd.txt"),
    ] or names == [
        ("ObjectCreated:Put", "data%2Fa+b%2Fc%2Bd.txt"),
        ("ObjectRemoved:Delete", "data%2Fa+b%2Fc%2Bd.txt"),
    ]
    found = read_messages(
        [Message(str(i), str(i), json.dumps(b)) for i, b in enumerate(bodies)],
        bucket=bucket,
        prefix="data",
        root=f"s3://{bucket}/data",
    )
    assert list(found.events) == ["a b/c+d.txt"]  # URL-decoded, relative to the root
    assert found.events["a b/c+d.txt"].removed
    assert "s3:TestEvent" in found.gap


def _record(key: str, name: str, sequencer: str = "", bucket: str = "b") -> dict[str, object]:
    obj = {"key": key, **({"sequencer": sequencer} if sequencer else {})}
    return {"eventName": name, "eventTime": "t", "s3": {"bucket": {"name": bucket}, "object": obj}}


def test_the_newest_event_per_key_wins_whatever_the_order() -> None:
    put = _record("r/k", "ObjectCreated:Put", "0055AED6DCD90281E5")
    gone = _record("r/k", "ObjectRemoved:Delete", "0055AED6DCD90281E6")
    # a longer sequencer is later once padded: "FF" < "0100" (AWS compares padded strings)
    early, late = (
        _record("r/p", "ObjectRemoved:Delete", "FF"),
        _record("r/p", "ObjectCreated:Put", "0100"),
    )
    other_bucket = _record("r/x", "ObjectCreated:Put", bucket="another")
    outside = _record("s/x", "ObjectCreated:Put")
    bodies = [[gone], [put], [put], [late, early], [other_bucket, outside]]
    for order in (bodies, bodies[::-1]):
        msgs = [Message(str(i), str(i), json.dumps({"Records": b})) for i, b in enumerate(order)]
        found = read_messages(msgs, bucket="b", prefix="r", root="s3://b/r")
        assert sorted(found.events) == ["k", "p"], order
        assert found.events["k"].removed and found.events["k"].sequencer.endswith("E6")
        assert not found.events["p"].removed
        assert found.gap == ""
    # without sequencers (moto gives none): the later arrival
    a, b = KeyEvent("k", False, "", "", 1), KeyEvent("k", True, "", "", 2)
    assert newer(a, b) is b and newer(b, a) is b
    # anything that is not an S3 event is a gap; a canary of another root is not ours
    odd = [
        Message("1", "1", "not json"),
        Message("2", "2", json.dumps({"Records": [{"eventName": "x"}]})),
        Message("3", "3", json.dumps({"manifest-canary": "c", "root": "s3://b/other"})),
    ]
    found = read_messages(odd, bucket="b", prefix="r", root="s3://b/r")
    assert "not JSON" in found.gap and not found.canary_ids and len(found.others) == 1


# -- the journal in use --------------------------------------------------------------------


def test_a_quiet_tick_lists_nothing_and_one_change_costs_a_few_requests(
    s3: S3Server, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    setup = Setup(s3, proxy.endpoint)
    first = setup.repo().begin()
    assert first.outcome == "baseline"
    proxy.take()
    quiet = setup.repo().begin()
    counts = proxy.take(setup.bucket)
    assert quiet.outcome == "unchanged"
    assert counts == {"SQS ReceiveMessage": 1, "SQS ChangeMessageVisibilityBatch": 1}
    status = setup.repo().status()
    assert (status.scan_source, status.changes) == ("journal", ChangeSet())
    assert "LIST" not in proxy.take(setup.bucket)

    upload(setup.raw, {"new/one.csv": b"a,b\n"})
    proxy.take()
    changed = setup.repo().begin()
    counts = proxy.take(setup.bucket)
    assert changed.changes.added == ("new/one.csv",)
    # one HEAD (the key the event names) and one GET (its bytes, content_hash); no LIST
    assert counts == {
        "HEAD": 1,
        "GET": 1,
        "SQS ReceiveMessage": 1,
        "SQS DeleteMessageBatch": 1,
        "SQS ChangeMessageVisibilityBatch": 1,
    }
    assert waiting(s3, setup.queue) == (1, 0)  # only the canary is left


@pytest.mark.parametrize("mode", ["content_hash", "mtime_size", "etag"])
def test_events_give_the_same_snapshots_as_a_full_listing(setup: Setup, mode: str) -> None:
    """The oracle: random puts, overwrites and deletes; the root read through its events and
    the same root listed in full give identical snapshot trees and diffs."""
    rng = random.Random(f"24.3-{mode}")
    names = [f"{d}/{n}" for d in ("a", "a/b", "c d", "é") for n in ("x.csv", "y+1.txt", "z")]
    events, listed = setup.repo(mode=mode), setup.repo(events=False, mode=mode)
    if mode == "mtime_size":
        time.sleep(1.05)  # the sample's keys wait out their LastModified second: both take them
    assert events.begin().outcome == listed.begin().outcome == "baseline"
    rounds = {"mtime_size": 2, "etag": 3, "content_hash": 4}[mode]
    for step in range(rounds):
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(names)
            if rng.random() < 0.3:
                delete(setup.raw, name)
            else:  # same size or another: content_hash must read, mtime_size must see it
                upload(setup.raw, {name: rng.choice([b"0123", b"abcd", b"longer bytes"])})
        if mode == "mtime_size":
            time.sleep(1.05)
        a, b = events.status(), listed.status()
        assert (a.changes, a.unstable) == (b.changes, b.unstable), step
        assert a.scan_source in ("events", "journal"), a.scan_reason
        ids = []
        for repo in (events, listed):
            snap, changes = repo.snapshot(ref="last")
            ids.append((repo.read_snapshot(snap).root, changes))
        assert ids[0] == ids[1], step
    assert events.status().scan_source == "journal"


def test_any_gap_forces_a_full_listing_and_says_why(s3: S3Server, setup: Setup) -> None:
    repo = setup.repo()
    assert "no bucket event state yet" in repo.status().scan_reason
    assert repo.begin().outcome == "baseline"
    assert repo.status().scan_source == "journal"

    def gap(expected: str, added: str) -> None:
        """The next look lists in full, says why and finds the change; the next tick
        takes it and the one after is quiet again."""
        status = repo.status()
        assert status.scan_source == "scan" and expected in status.scan_reason
        assert status.changes.added == (added,)
        cycle = repo.begin()
        assert cycle.changes.added == (added,)
        repo.promote(cycle.snapshot or "")
        assert repo.status().scan_source == "journal"

    upload(setup.raw, {"1.txt": b"1"})
    s3.notify(setup.bucket, setup.queue, "data/")  # configuration written: an s3:TestEvent
    gap("s3:TestEvent", "1.txt")

    upload(setup.raw, {"2.txt": b"2"})
    s3.client("sqs").purge_queue(QueueUrl=setup.queue)  # its event is gone with the canary
    gap("canary message is missing", "2.txt")

    upload(setup.raw, {"3.txt": b"3"})
    s3.client("sqs").send_message(QueueUrl=setup.queue, MessageBody="{not an event")
    gap("is not JSON", "3.txt")

    upload(setup.raw, {"4.txt": b"4"})
    state = decode_state(repo.store.files.read(STATE_FILE))
    assert state is not None
    repo.store.files.write(STATE_FILE, encode_state(msgspec.structs.replace(state, listed_ns=1)))
    gap("last full listing is more than 26 h old", "4.txt")

    upload(setup.raw, {"5.txt": b"5"})
    repo.store.files.write(f"{LISTING_FILE}.0", b"damaged")
    gap("kept listing is missing", "5.txt")

    last = repo.find_ref("last")
    result = repo.scan(base=last, rehash_all=True)
    assert (result.source, result.reason) == ("scan", "a full-hash check lists every key")

    upload(setup.raw, {"6.txt": b"6"})
    s3.client("sqs").delete_queue(QueueUrl=setup.queue)
    status = repo.status()
    assert "events queue cannot be read" in status.scan_reason
    assert "does not exist" in status.scan_reason
    assert status.changes.added == ("6.txt",)


def test_a_read_only_status_leaves_the_messages_in_the_queue(s3: S3Server, setup: Setup) -> None:
    repo = setup.repo()
    repo.begin()
    upload(setup.raw, {"k.txt": b"1"})
    for _ in range(2):
        status = repo.status()
        assert status.changes.added == ("k.txt",) and status.scan_source == "events"
        assert waiting(s3, setup.queue) == (2, 0)  # the event and the canary, visible
    assert repo.begin().changes.added == ("k.txt",)
    assert waiting(s3, setup.queue) == (1, 0)


@pytest.mark.parametrize("point", ["received", "written"])
def test_a_tick_killed_between_reading_and_deleting_loses_nothing(
    s3: S3Server, tmp_path: Path, point: str
) -> None:
    """SIGKILL after the messages are received (nothing written), and after the listing that
    applied them is written (the pending snapshot too) but before they are deleted; the
    store on the bucket, as pods share it."""
    setup = Setup(s3, s3.endpoint)
    repo = setup.repo()
    assert repo.begin().outcome == "baseline"
    upload(setup.raw, {"landed.csv": b"x,y\n"})
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        **s3.env(),
        # long enough that the messages are still held when the next tick reads, however
        # slow the machine (CI once took over 1 s from the receive to the check below)
        "MANIFEST_EVENTS_VISIBILITY_SEC": "6",
        "MANIFEST_EVENTS_WAIT_SEC": "0",
        "MANIFEST_TEST_EVENTS_PAUSE": f"{point}:{marker}",
        "PYTHONPATH": str(REPO),
    }
    code = (
        "from manifest import Repository, load_config\n"
        f"Repository(load_config(root={setup.raw!r}, store={setup.state!r}, cooldown_sec=0))"
        ".begin()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the tick did not pause"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert waiting(s3, setup.queue)[1] >= 2  # the event and the canary, held by the dead tick

    # at once: the canary is held, so the next tick cannot trust the events and lists
    repo = setup.repo(env={**FAST, "MANIFEST_EVENTS_VISIBILITY_SEC": "1"})
    cycle = repo.begin()
    assert cycle.outcome == ("started" if point == "received" else "in_flight")
    assert cycle.changes.added == ("landed.csv",)
    assert repo.promote(cycle.snapshot or "").outcome == "promoted"
    # once the dead tick's messages are back, they are applied again: nothing changes, and
    # they are deleted (only the canary stays)
    deadline = time.monotonic() + 60
    while waiting(s3, setup.queue)[1]:
        assert time.monotonic() < deadline, "the dead tick's messages never came back"
        time.sleep(0.2)
    again = repo.begin()
    assert (again.outcome, again.changes) == ("unchanged", ChangeSet())
    assert waiting(s3, setup.queue) == (1, 0)
    status = repo.status()
    assert (status.scan_source, status.changes) == ("journal", ChangeSet())


# -- the setting ---------------------------------------------------------------------------


def test_the_queue_setting_is_checked_recorded_and_explained(
    s3: S3Server, setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"RAW_EVENTS_QUEUE='ftp://x'.*SQS queue URL"):
        load_config(root=setup.raw, store=tmp_path / "s", env={"RAW_EVENTS_QUEUE": "ftp://x"})
    with pytest.raises(ConfigError, match="plain http only for a loopback"):
        load_config(
            root=setup.raw,
            store=tmp_path / "s",
            events_queue="http://sqs.example.com/123456789012/q",
            env={},
        )
    with pytest.raises(ConfigError, match=r"need an s3:// root.*manifest watch"):
        load_config(root=tmp_path, store=tmp_path / "s", events_queue=setup.queue, env={})
    repo = setup.repo()
    repo.begin()
    assert f'events_queue = "{setup.queue}"' in (repo.files.read("config.toml") or b"").decode()
    recorded = load_config(root=setup.raw, store=setup.state, env={})  # no setting given
    assert recorded.events_queue == setup.queue
    other = s3.make_queue(s3.make_bucket("raw"))
    with pytest.raises(SettingsMismatchError, match="events_queue"):
        load_config(store=setup.state, env={"RAW_EVENTS_QUEUE": other})
    # boto3 missing: an error naming the setting and the install command, no traceback
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(QueueError, match=r"RAW_EVENTS_QUEUE.*pip install 'raw-manifest\[events\]'"):
        repo.status()


def test_the_kept_listing_is_in_parts_and_one_change_rewrites_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manifest.root import events as ev
    from manifest.store.local import LocalFiles

    written: list[str] = []

    class Counted(LocalFiles):
        def write(self, name: str, data: bytes) -> None:
            written.append(name)
            super().write(name, data)

    monkeypatch.setattr(ev, "PART_BYTES", 4096)
    files = Counted(tmp_path)
    keys = {
        f"d{i % 7}/k{i:04d}": ev.ListedKey(f"d{i % 7}/k{i:04d}", i, i, "e" * 32) for i in range(600)
    }
    parts, bounds = ev.write_listing(files, keys.values(), None)
    assert len(parts) > 5 and len(written) == len(parts)
    state = ev.EventState(1, "q", "r", "g", "c", 0, 0, parts, bounds)
    assert ev.read_listing(files, state) == sorted(keys.values(), key=lambda k: k.path)
    written.clear()
    keys["d3/k0010"] = ev.ListedKey("d3/k0010", 1, 1, "f" * 32)
    parts2, bounds2 = ev.write_listing(files, keys.values(), state)
    assert bounds2 == bounds and len(written) == 1
    assert sum(a != b for a, b in zip(parts, parts2, strict=True)) == 1
    state2 = msgspec.structs.replace(state, parts=parts2)
    assert ev.read_listing(files, state2) == sorted(keys.values(), key=lambda k: k.path)
    assert ev.read_listing(files, state) is None  # a header older than its parts: relist


def test_two_ticks_at_once_lose_nothing(s3: S3Server, setup: Setup) -> None:
    """Two processes scan at the same moment (the full-hash check's cron and the schedule's,
    both at 02:30): the one without the canary lists in full; whichever settles second finds
    the header rewritten and writes and deletes nothing. Nothing is lost, and the queue is
    back to its one canary after the next tick."""
    from manifest.repo import settle

    first, second = setup.repo(), setup.repo()
    assert first.begin().outcome == "baseline"
    upload(setup.raw, {"k.txt": b"1"})
    last = first.find_ref("last")
    held = first.scan(base=last, consume=True)  # holds the event and the canary
    listed = second.scan(base=last, consume=True)
    assert (held.source, listed.source) == ("events", "scan")
    assert "canary message is missing" in listed.reason
    settle(listed, True)
    settle(held, True)  # the header changed since it was read: hands its messages back
    assert waiting(s3, setup.queue) == (3, 0)  # the event, the old canary, the new one
    cycle = first.begin()
    assert cycle.changes.added == ("k.txt",)
    assert waiting(s3, setup.queue) == (1, 0)
    first.promote(cycle.snapshot or "")
    assert first.status().scan_source == "journal"


def test_two_ticks_settling_at_the_same_moment_lose_nothing(
    s3: S3Server, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the check above cannot see: the second tick settles between the first's
    check of the header and its write. The header is written by compare-and-swap, so the
    first hands its messages back instead of writing over the second's header (whose
    listing has a key the first never saw): the next tick still finds both changes."""
    from manifest.repo import settle
    from manifest.root import events as ev

    first, second = setup.repo(), setup.repo()
    assert first.begin().outcome == "baseline"
    last = first.find_ref("last")
    upload(setup.raw, {"a.txt": b"1"})
    held = first.scan(base=last, consume=True)  # the event for a.txt, and the canary
    upload(setup.raw, {"b.txt": b"2"})
    listed = second.scan(base=last, consume=True)  # no canary: a full listing
    assert (held.source, listed.source) == ("events", "scan")
    pause = ev.pause_for_tests
    raced: list[str] = []

    def meanwhile(point: str) -> None:
        if point == "checked" and not raced:
            raced.append(point)
            settle(listed, True)  # writes its header and deletes the event for b.txt
        pause(point)

    monkeypatch.setattr(ev, "pause_for_tests", meanwhile)
    settle(held, True)
    assert raced == ["checked"]
    cycle = first.begin()
    assert cycle.changes.added == ("a.txt", "b.txt")
    first.promote(cycle.snapshot or "")
    assert first.begin().outcome == "unchanged"


def test_a_key_settling_is_taken_later_without_another_event(s3: S3Server, setup: Setup) -> None:
    """Its message is deleted by the tick that saw it settling: the kept listing holds it,
    and a later tick records it once the cooldown is over."""
    assert setup.repo().begin().outcome == "baseline"
    upload(setup.raw, {"slow.csv": b"1"})
    early = setup.repo(cooldown_sec=30).begin()
    assert early.outcome == "unchanged" and "slow.csv" in early.unstable
    assert waiting(s3, setup.queue) == (1, 0)  # the event is gone: the listing has the key
    later = setup.repo(cooldown_sec=0).begin()  # (as once the cooldown is over)
    assert later.changes.added == ("slow.csv",)


def test_a_store_inside_the_root_does_not_keep_the_ticks_busy(s3: S3Server) -> None:
    """The store's own writes under the root send events too: they are left out (as the
    scan leaves the store out), and a tick that only deletes them writes nothing new."""
    bucket = s3.make_bucket("both")
    queue = s3.make_queue(bucket, "raw/")
    upload(f"s3://{bucket}/raw", SAMPLE)
    repo = Repository(
        load_config(
            root=f"s3://{bucket}/raw",
            store=f"s3://{bucket}/raw/.manifest",
            cooldown_sec=0,
            events_queue=queue,
            env=FAST,
        )
    )
    assert repo.begin().outcome == "baseline"
    for _ in range(2):
        assert repo.begin().outcome == "unchanged"
    assert waiting(s3, queue) == (1, 0)
    assert repo.status().scan_source == "journal"
