"""Kill a process (SIGKILL) at random points of snapshots, the cycle, hand resets and gc
with reflog expiry, many times; fsck and status then find the store sound."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from manifest import Repository, load_config
from tests.s3server import S3Server

from .conftest import write

CHILD = r"""
import os, sys, time
from manifest import Repository, load_config
root, store, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
repo = Repository(load_config(root=root, store=store, cooldown_sec=0, env={}), lock_timeout=0.5)
i = 0
print("ready", flush=True)
while True:
    i += 1
    path = os.path.join(root, f"d{i % 7}", f"f{(seed * 31 + i) % 13}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"{seed},{i}\n" * (i % 50 + 1))
    old = time.time_ns() - 10**10
    os.utime(path, ns=(old, old))
    result = repo.begin()
    if result.snapshot and result.outcome in ("started", "in_flight"):
        if i % 3:
            repo.promote(result.snapshot, reason=f"promoted {i}")
        else:
            repo.abandon(result.snapshot, reason=f"abandoned {i}")
    if i % 5 == 0:
        repo.snapshot(ref="manual", message=str(i))
    if i % 4 == 0:
        repo.reset("manual", "last", message=f"by hand {i}", create=True)
    if i % 6 == 0:
        repo.gc(grace_seconds=0, expire_seconds=0.5, alone=True)
"""


def test_killed_writers_leave_a_sound_store(tmp_path: Path) -> None:
    root, store = tmp_path / "raw", tmp_path / "state"
    write(root / "seed.csv", "seed\n")
    rng = random.Random(1234)
    kills = 0
    for attempt in range(40):
        for lock in store.rglob("*.lock") if store.exists() else []:
            lock.unlink()  # what an operator does after a crash (fsck names them)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(store), str(attempt)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", (
            child.stderr.read() if child.stderr else ""
        )
        time.sleep(rng.uniform(0.01, 0.25))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert kills == 40
    repo = Repository(load_config(root=root, store=store, cooldown_sec=0, env={}))
    report = repo.fsck()
    errors = [p for p in report.problems if p.severity == "error"]
    # the only damage a kill may leave: the dead process's lock, named with its rm command
    assert all("stale lock" in p.message and "rm '" in p.message for p in errors), errors
    for lock in store.rglob("*.lock"):
        lock.unlink()
    report = repo.fsck()
    assert report.ok, report.problems
    assert report.snapshots > 0
    for name, value in repo.refs.iter_refs():
        assert value is not None, name
        snap = repo.read_snapshot(value)
        list(repo.iter_files(value))  # every tree of every ref'd snapshot is complete
        assert snap.counts.files >= 1
    # And the cycle still works.
    assert repo.status().stale_locks == ()
    pending = repo.find_ref("pending")
    if pending:
        repo.abandon(pending)
    assert repo.begin().outcome in ("started", "unchanged")


def test_killed_writers_leave_a_sound_bucket_store(tmp_path: Path, s3: S3Server) -> None:
    """The same, with the store on a bucket (a real S3 API): a ref move is one conditional
    write carrying its reflog, so a kill leaves at worst unreferenced objects."""
    root = tmp_path / "raw"
    store = f"s3://{s3.make_bucket('crash')}/state"
    write(root / "seed.csv", "seed\n")
    rng = random.Random(4321)
    for attempt in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), store, str(attempt)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", (
            child.stderr.read() if child.stderr else ""
        )
        time.sleep(rng.uniform(0.05, 1.0))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    repo = Repository(load_config(root=root, store=store, cooldown_sec=0, env={}))
    report = repo.fsck()
    assert report.ok, report.problems  # no locks to leave behind on a bucket
    assert report.snapshots > 0
    for name, value in repo.refs.iter_refs():
        assert value is not None, name
        list(repo.iter_files(value))
        moves = repo.refs.read_reflog(name)
        assert moves[-1].new == value  # the ref and its history never disagree
    pending = repo.find_ref("pending")
    if pending:
        repo.abandon(pending)
    assert repo.begin().outcome in ("started", "unchanged")
