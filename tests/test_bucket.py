"""Roots and stores on a bucket, against a real S3 API server (moto, on 127.0.0.1)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import obstore
import pytest

from manifest import Repository, load_config
from manifest.errors import (
    ConfigError,
    RootError,
    StoreError,
)
from manifest.location import BucketURL, parse_location
from manifest.model import ChangeSet
from manifest.store.s3 import Bucket, open_bucket
from tests.s3server import S3Server

SAMPLE = {
    "concepts/concepts_metadata.csv": b"concept_id,name\nc1,tide\nc2,ember\n",
    "concepts/descriptions/c1.txt": b"The tide.\n",
    "concepts/descriptions/c2.txt": b"An ember.\n",
    "link_templates.csv": b"template_id,template_file\nanalogy,links/analogy.txt\n",
    "links/analogy.txt": b"{concept_a} is like {concept_b}\n",
}


def upload(url: str, files: dict[str, bytes]) -> None:
    where = parse_location(url, "test")
    assert isinstance(where, BucketURL)
    store = open_bucket(where)
    for key, data in files.items():
        obstore.put(store, key, data)


def delete(url: str, key: str) -> None:
    where = parse_location(url, "test")
    assert isinstance(where, BucketURL)
    obstore.delete(open_bucket(where), key)


def bucket_repo(root: str, store: str, **overrides: object) -> Repository:
    kwargs: dict[str, object] = {"root": root, "store": store, "cooldown_sec": 0, "env": {}}
    kwargs.update(overrides)
    return Repository(load_config(**kwargs))  # type: ignore[arg-type]


@pytest.fixture
def urls(s3: S3Server) -> tuple[str, str]:
    raw = f"s3://{s3.make_bucket('raw')}/data/1_raw"
    state = f"s3://{s3.make_bucket('state')}/manifest"
    upload(raw, SAMPLE)
    return raw, state


# -- locations ---------------------------------------------------------------------------


def test_locations_parse_and_unknown_schemes_are_refused(tmp_path: Path) -> None:
    assert parse_location("s3://bkt/a/b/", "--root") == BucketURL("s3", "bkt", "a/b")
    assert str(parse_location("s3://bkt", "--root")) == "s3://bkt"
    assert parse_location("gs://bkt/x", "--root") == BucketURL("gs", "bkt", "x")
    assert parse_location("file:///srv/raw", "--root") == Path("/srv/raw")
    assert parse_location("data/1_raw", "--root") == Path("data/1_raw")
    with pytest.raises(ConfigError, match=r"--root='ftp://h/x'.*'ftp' is not supported"):
        parse_location("ftp://h/x", "--root")
    with pytest.raises(ConfigError, match="bucket name is missing"):
        parse_location("s3:///x", "RAW_DATA_DIR")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        parse_location("s3://b/a/../c", "RAW_STATE_DIR")
    # the old behaviour took s3://... as a local folder named "s3:"; now the scheme is read
    config = load_config(root="s3://raw/x", store=tmp_path / "state", env={})
    assert config.root_url == BucketURL("s3", "raw", "x")
    assert config.root_text == "s3://raw/x"
    with pytest.raises(ConfigError, match="RAW_DATA_DIR"):
        load_config(store=tmp_path / "state", env={"RAW_DATA_DIR": "hdfs://n/x"})
    with pytest.raises(ConfigError, match="etag"):
        load_config(root=tmp_path, store=tmp_path / "s", mode="etag", env={})


def test_plain_http_endpoint_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.example.com:9000")
    with pytest.raises(ConfigError, match="https:// endpoint"):
        open_bucket(BucketURL("s3", "b", ""))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://[::1]:9000")
    open_bucket(BucketURL("s3", "b", ""))  # loopback: allowed


def test_missing_bucket_is_a_clear_error(s3: S3Server, tmp_path: Path) -> None:
    repo = bucket_repo(str(tmp_path), "s3://no-such-bucket-here/state")
    with pytest.raises(StoreError, match="does not exist") as info:
        repo.begin()
    assert "s3://no-such-bucket-here/state" in str(info.value)
    state = f"s3://{s3.make_bucket('state')}/m"
    repo = bucket_repo("s3://no-such-raw-bucket/x", state)
    with pytest.raises(RootError, match=r"s3://no-such-raw-bucket/x.*does not exist"):
        repo.status()


def test_a_root_inside_its_store_is_refused_a_store_inside_its_root_is_skipped(
    s3: S3Server,
) -> None:
    with pytest.raises(ConfigError, match="would scan itself"):
        load_config(root="s3://b/state/raw", store="s3://b/state", env={})
    with pytest.raises(ConfigError, match="would scan itself"):
        load_config(root="s3://b/same", store="s3://b/same", env={})
    bucket = s3.make_bucket("both")
    upload(f"s3://{bucket}/raw", SAMPLE)
    repo = bucket_repo(f"s3://{bucket}/raw", f"s3://{bucket}/raw/.manifest")
    assert repo.begin().outcome == "baseline"  # wrote objects and refs below the root
    status = repo.status()
    assert (status.files, status.changes) == (len(SAMPLE), ChangeSet())


# -- the cycle on a bucket ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["content_hash", "etag", "mtime_size"])
def test_cycle_on_a_bucket_root_and_store(urls: tuple[str, str], mode: str) -> None:
    raw, state = urls
    repo = bucket_repo(raw, state, mode=mode)
    if mode == "mtime_size":
        time.sleep(1.1)  # a key waits out its LastModified second (issue 22.7)
    first = repo.begin()
    assert first.outcome == "baseline"
    assert repo.status().changes == ChangeSet()
    assert repo.begin().outcome == "unchanged"

    if mode == "mtime_size":
        time.sleep(1.1)  # S3's last-modified has whole seconds
        # ... and the status below must fall in the same second as the upload: start at the
        # top of one (under load, uploads and status late in a second crossed into the next)
        time.sleep(1.01 - time.time() % 1)
    upload(raw, {"links/analogy.txt": b"{concept_a} is LIKE {concept_b}\n"})  # same size
    upload(raw, {"concepts/descriptions/c3.txt": b"A stone.\n"})
    delete(raw, "concepts/descriptions/c1.txt")
    if mode == "mtime_size":
        settling = repo.status()  # the same second: not yet, and the delete at once
        assert settling.changes.removed == ("concepts/descriptions/c1.txt",)
        assert "links/analogy.txt" in settling.unstable
        time.sleep(1.1)
    started = repo.begin()
    assert started.outcome == "started"
    assert started.changes == ChangeSet(
        added=("concepts/descriptions/c3.txt",),
        modified=("links/analogy.txt",),
        removed=("concepts/descriptions/c1.txt",),
    )
    assert repo.begin().outcome == "in_flight"  # one run at a time
    promoted = repo.promote(started.snapshot or "")
    assert promoted.outcome == "promoted"
    assert repo.find_ref("last") == started.snapshot
    assert repo.find_ref("pending") is None
    assert repo.begin().outcome == "unchanged"
    assert [e.reason.split(":")[0] for e in repo.log()] == ["promoted", "baseline"]
    assert repo.fsck().ok


def test_content_hash_reads_only_objects_whose_etag_changed(urls: tuple[str, str]) -> None:
    raw, state = urls
    repo = bucket_repo(raw, state)
    repo.begin()
    again = bucket_repo(raw, state)  # another process: the hash cache is in the store
    status = again.status()
    assert (status.files, status.hashed) == (5, 0)
    upload(raw, {"concepts/descriptions/c2.txt": b"Two embers\n"})
    status = again.status()
    assert status.hashed == 1
    assert status.changes == ChangeSet(modified=("concepts/descriptions/c2.txt",))


def test_cooldown_applies_to_last_modified(urls: tuple[str, str]) -> None:
    raw, state = urls
    bucket_repo(raw, state).begin()
    time.sleep(4.2)  # older than the cooldown below, from the end of its LastModified second
    upload(raw, {"links/new.txt": b"fresh\n"})
    status = bucket_repo(raw, state, cooldown_sec=2.5).status()
    assert status.unstable == ("links/new.txt",)
    assert status.changes == ChangeSet()  # not there yet: it may still be being written
    assert bucket_repo(raw, state).status().changes == ChangeSet(added=("links/new.txt",))


def test_local_root_with_a_bucket_store(s3: S3Server, raw: Path) -> None:
    state = f"s3://{s3.make_bucket('state')}/m"
    repo = bucket_repo(str(raw), state)
    assert repo.begin().outcome == "baseline"
    (raw / "links" / "analogy.txt").write_text("changed\n")
    started = repo.begin()
    assert started.changes == ChangeSet(modified=("links/analogy.txt",))
    assert repo.promote(started.snapshot or "").outcome == "promoted"
    assert repo.fsck().ok
    assert (repo.store.cache_dir / "index").is_file()  # the stat cache stays on this machine


# -- objects and refs on the bucket ------------------------------------------------------


def test_gc_and_expiry_on_a_bucket(urls: tuple[str, str]) -> None:
    raw, state = urls
    repo = bucket_repo(raw, state)
    base = repo.begin().snapshot or ""
    upload(raw, {"links/x.txt": b"x\n"})
    dropped, _ = repo.snapshot(message="never referenced")
    assert repo.gc(grace_seconds=3600).removed == 0  # young objects are kept
    # issue 22.12: no lock reaches other hosts, so a grace below the floor needs --alone
    with pytest.raises(ConfigError, match="at least 900 seconds on a bucket store"):
        repo.gc(grace_seconds=0)
    result = repo.gc(grace_seconds=0, alone=True)
    assert result.removed >= 1
    assert repo.objects.find_snapshot(dropped) is None
    assert repo.objects.find_snapshot(base) is not None
    upload(raw, {"links/y.txt": b"y\n"})
    started = repo.begin()
    repo.promote(started.snapshot or "")
    assert len(repo.refs.read_reflog("last")) == 2
    assert (
        repo.gc(grace_seconds=0, expire_seconds=0, alone=True).reflog_lines_expired == 2
    )  # last, pending
    assert [(e.old, e.new) for e in repo.refs.read_reflog("last")] == [(base, started.snapshot)]
    assert repo.fsck().ok


RACER = """
import sys
from manifest import Repository, load_config
from manifest.errors import RefConflictError
from manifest.model import Counts, Snapshot
raw, state, me, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
repo = Repository(load_config(root=raw, store=state, cooldown_sec=0, env={}))
wins = 0
root = repo.read_snapshot(repo.find_ref("last")).root
for i in range(rounds):
    current = repo.find_ref("last")
    snap = repo.objects.write_object(
        Snapshot(root, current, i, "content_hash", raw, Counts(), message=f"{me}-{i}")
    )
    try:
        repo.refs.update_ref("last", snap, expected=current, reason=f"{me} round {i}")
        wins += 1
    except RefConflictError:
        pass
print(wins)
"""


def test_processes_racing_ref_moves_lose_no_history(urls: tuple[str, str], s3: S3Server) -> None:
    raw, state = urls
    bucket_repo(raw, state).begin()
    rounds, racers = 15, 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, raw, state, f"p{n}", str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for n in range(racers)
    ]
    wins = [int(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    log = bucket_repo(raw, state).refs.read_reflog("last")
    # one line per successful move, and they chain: each move started from the one before,
    # so exactly one process won each round (no two moves from the same value)
    assert len(log) == 1 + sum(wins)
    assert sum(wins) >= 1
    for before, after in itertools.pairwise(log):
        assert after.old == before.new
    olds = [e.old for e in log]
    assert len(olds) == len(set(olds))
    assert bucket_repo(raw, state).find_ref("last") == log[-1].new
    assert bucket_repo(raw, state).fsck().ok


def test_a_fresh_machine_needs_nothing_local(urls: tuple[str, str]) -> None:
    """Another pod: no cache folder yet, and its first call only reads (format checked)."""
    import shutil

    raw, state = urls
    first = bucket_repo(raw, state)
    first.begin()
    shutil.rmtree(first.store.cache_dir)
    other = bucket_repo(raw, state)
    assert other.find_ref("last") == first.find_ref("last")  # a read first
    upload(raw, {"links/pod.txt": b"from another pod\n"})
    started = other.begin()
    assert started.changes == ChangeSet(added=("links/pod.txt",))
    shutil.rmtree(other.store.cache_dir)
    assert bucket_repo(raw, state).gc(grace_seconds=0, alone=True).kept > 0


def test_gc_on_a_bucket_fails_closed(urls: tuple[str, str]) -> None:
    raw, state = urls
    repo = bucket_repo(raw, state)
    repo.begin()
    upload(raw, {"links/x.txt": b"x\n"})
    orphan, _ = repo.snapshot(message="unreferenced")
    bucket = Bucket(parse_location(state, "t"))  # type: ignore[arg-type]
    bucket.put("refs/keep/damaged", b"not a ref document")
    with pytest.raises(StoreError, match=r"refs/keep/damaged.*deleted nothing"):
        repo.gc(grace_seconds=0, alone=True)
    assert repo.objects.find_snapshot(orphan) is not None  # nothing was deleted
    problems = [p.subject for p in repo.fsck().problems]
    assert any("refs/keep/damaged" in p or "keep/damaged" in p for p in problems)
    bucket.delete("refs/keep/damaged")
    assert repo.gc(grace_seconds=0, alone=True).removed >= 1
    assert repo.objects.find_snapshot(orphan) is None


def test_a_reused_tree_is_freshened_on_a_bucket_and_unchanged_ones_are_not(
    urls: tuple[str, str],
) -> None:
    """Issue 22.12 on a bucket root and store: a tree built again after it fell out of every
    ref is put again (a new LastModified, so gc's grace protects it); the trees the base
    snapshot has are not written at all."""
    raw, state = urls
    repo = bucket_repo(raw, state)
    upload(raw, {"flip/f.csv": b"A\n"})
    old, _ = repo.snapshot(message="state A, never referenced")
    upload(raw, {"flip/f.csv": b"B\n"})
    repo.snapshot(ref="last")

    def stamps() -> dict[str, float]:
        return {oid: mtime for oid, mtime, _ in repo.objects.iter_infos()}

    before = stamps()
    time.sleep(1.1)  # LastModified has whole seconds
    repo.snapshot(ref="last")  # nothing changed: nothing is written
    after = stamps()
    assert {k: after[k] for k in before} == before  # no existing object was put again
    upload(raw, {"flip/f.csv": b"A\n"})
    repo.snapshot(ref="last")
    root_a = repo.read_snapshot(old).root
    assert stamps()[root_a] > before[root_a]  # put again: freshened


def test_the_bucket_cooldown_counts_from_the_end_of_the_last_modified_second(
    urls: tuple[str, str],
) -> None:
    """Issue 22.7: LastModified has whole seconds, so a key written at 10.9 s shows 10 s; its
    cooldown must not end 0.9 s early."""
    from manifest.globs import PathFilter
    from manifest.root.bucket import scan_bucket
    from manifest.scanresult import BaseTrees
    from manifest.store.s3 import Bucket

    raw, _state = urls
    upload(raw, {"fresh.csv": b"x\n"})
    where = parse_location(raw, "test")
    assert isinstance(where, BucketURL)
    bucket = Bucket(where)
    (meta,) = [m for m in bucket.iter_keys() if m["path"] == "fresh.csv"]
    second_ns = int(meta["last_modified"].timestamp()) * 10**9

    def unstable(now_ns: int, cooldown_ns: int, mode: str = "etag") -> bool:
        result = scan_bucket(
            bucket,
            mode=mode,
            cooldown_ns=cooldown_ns,
            path_filter=PathFilter((), ()),
            base=BaseTrees(None, None),
            hashes={},
            now_ns=now_ns,
        )
        return "fresh.csv" in result.unstable

    half = 5 * 10**8
    assert unstable(second_ns + 14 * 10**8, half)  # 1.4 s after the second began: 0.4 s old
    assert not unstable(second_ns + 16 * 10**8, half)
    assert unstable(second_ns + 9 * 10**8, 0, "mtime_size")  # the same second: not yet
    assert not unstable(second_ns + 9 * 10**8, 0, "etag")  # an ETag changes with the bytes


@pytest.mark.parametrize("mode", ["mtime_size", "etag", "content_hash"])
def test_folder_markers_are_ignored_in_every_mode(s3: S3Server, tmp_path: Path, mode: str) -> None:
    """Issue 22.5: `dir/` keys (consoles, many tools) are no file and no problem, whether the
    server lists them with the slash or, as this one does, without; a real empty file is
    still a file."""
    import urllib.request

    bucket = s3.make_bucket("markers")
    raw, state = f"s3://{bucket}/raw", f"s3://{s3.make_bucket('state')}/m"
    for key, body in [("raw/dir/", b""), ("raw/dir/f.csv", b"f\n"), ("raw/emptydir/", b"")]:
        request = urllib.request.Request(f"{s3.endpoint}/{bucket}/{key}", body, method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    upload(raw, {"empty.csv": b""})
    time.sleep(1.1)  # mtime_size waits out the LastModified second
    repo = bucket_repo(raw, state, mode=mode)
    status = repo.status()
    assert status.problems == () and status.unstable == ()
    assert status.changes.added == ("dir/f.csv", "empty.csv")
    repo.snapshot(ref="last")
    assert repo.status().changes == ChangeSet()


def test_a_key_that_becomes_a_prefix_has_one_verdict(urls: tuple[str, str]) -> None:
    """Issue 22.6: `k` in last, then `k/x` written: `k` is left out, the problem says it
    counts as removed, and the changes say exactly that."""
    raw, state = urls
    upload(raw, {"k": b"file\n"})
    repo = bucket_repo(raw, state, mode="etag")
    repo.snapshot(ref="last")
    upload(raw, {"k/x": b"below\n"})
    status = repo.status()
    assert status.changes.removed == ("k",) and status.changes.added == ("k/x",)
    (problem,) = status.problems
    assert problem.path == "k" and "counts as removed" in problem.message


def test_a_ref_write_whose_response_is_lost_is_not_a_conflict(
    urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22.13: the conditional write applied, the response was lost, the client's
    retry failed its precondition: the ref holds the caller's own move, so it succeeded."""
    from manifest.store.s3 import Bucket

    raw, state = urls
    repo = bucket_repo(raw, state)
    repo.begin()  # the baseline
    upload(raw, {"new.csv": b"n\n"})
    real = Bucket.replace
    lost = []

    def replace_then_lose_the_answer(self: Bucket, key: str, data: bytes, etag: str | None) -> bool:
        applied = real(self, key, data, etag)
        if key.endswith("last") and applied and not lost:
            lost.append(key)
            return False  # what the retry of an applied write reports
        return applied

    monkeypatch.setattr(Bucket, "replace", replace_then_lose_the_answer)
    sid, _ = repo.snapshot(ref="last", message="mine")
    assert lost and repo.find_ref("last") == sid
    assert repo.log("last")[0].reason == "snapshot: mine"


def test_a_key_named_like_the_store_is_named_and_reading_needs_no_cache_folder(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22.15: a data key named exactly like the store's prefix inside a bucket root is
    listed among the skipped paths, not silently dropped; and a read-only command works
    when this machine's cache folder cannot be created."""
    bucket = s3.make_bucket("inside")
    raw = f"s3://{bucket}/raw"
    upload(raw, {"a.csv": b"a\n", ".manifest": b"data, not the store\n"})
    repo = bucket_repo(raw, f"{raw}/.manifest")
    repo.snapshot(ref="last")
    status = repo.status()
    assert status.skipped == (".manifest",) and status.changes == ChangeSet()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    monkeypatch.setenv("MANIFEST_CACHE_DIR", str(blocker / "cache"))
    reader = bucket_repo(raw, f"{raw}/.manifest")
    assert reader.status().changes == ChangeSet()  # no cache folder, no error
    assert reader.log("last")


def test_one_invalid_key_does_not_stop_the_root(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22.4: keys such as `a//b`, `./x`, `x/../y` or with a tab or ESC (anyone can
    upload them) are reported as problems, named, and left out; the rest is scanned."""
    import urllib.parse
    import urllib.request

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.make_bucket("hostile")
    raw, state = f"s3://{bucket}/raw", f"s3://{s3.make_bucket('state')}/m"
    upload(raw, {"ok.csv": b"ok\n"})
    hostile = ["a//b", "./x", "x/../y", "t\tab", "e\x1bsc"]
    for key in hostile:
        quoted = urllib.parse.quote(f"raw/{key}", safe="/")
        request = urllib.request.Request(f"{s3.endpoint}/{bucket}/{quoted}", b"1", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    repo = bucket_repo(raw, state, mode="etag")
    status = repo.status()
    assert status.changes.added == ("ok.csv",)
    assert sorted(p.path for p in status.problems) == sorted(hostile)
    assert all("left out" in p.message for p in status.problems)
    repo.snapshot(ref="last")
    assert repo.status().changes == ChangeSet()


def test_keys_listed_url_encoded_decode_as_s3_sends_them() -> None:
    from manifest.store.s3list import decode_key

    assert decode_key("a+b.txt") == "a b.txt"  # S3 sends a space as "+"
    assert decode_key("a%2Bb.txt") == "a+b.txt"
    assert decode_key("t%09ab") == "t\tab"


def test_empty_keys_cost_no_request_where_markers_keep_their_slash(
    urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty keys (Spark's _SUCCESS, .keep) are probed for being folder markers only on a
    server shown to drop markers' slashes; otherwise a scan makes no request per key."""
    from manifest.store.s3 import Bucket

    raw, state = urls
    upload(raw, {f"out/part{i}/_SUCCESS": b"" for i in range(20)})
    heads: list[str] = []
    real = Bucket.exists

    def counting(self: Bucket, key: str) -> bool:
        heads.append(key)
        return real(self, key)

    monkeypatch.setattr(Bucket, "exists", counting)
    time.sleep(1.1)
    status = bucket_repo(raw, state, mode="etag").status()
    assert "out/part0/_SUCCESS" in status.changes.added
    assert not any(k.endswith("_SUCCESS") for k in heads)
