"""The real `manifest` command against a bucket root and store (a real S3 API on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.s3server import S3Server
from tests.test_bucket import SAMPLE, delete, upload


def _manifest(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manifest", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_cli_on_a_bucket_root_and_store(s3: S3Server, tmp_path: Path) -> None:
    raw = f"s3://{s3.make_bucket('raw')}/data/1_raw"
    state = f"s3://{s3.make_bucket('state')}/team/manifest"
    upload(raw, SAMPLE)
    env = {**os.environ, "NO_COLOR": "1", "RAW_SCAN_COOLDOWN_SEC": "0"}
    env.pop("RAW_DATA_DIR", None)
    env.pop("RAW_STATE_DIR", None)

    def run(*args: str, code: int = 0, **extra: str) -> str:
        done = _manifest({**env, **extra}, tmp_path, *args)
        assert done.returncode == code, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout + done.stderr

    out = run("--store", state, "init", "--root", raw)
    assert f"Initialized a manifest store in {state}" in out
    assert raw in out
    # the store's config.toml is on the bucket: the root need not be repeated
    status = json.loads(run("--store", state, "status", "--json"))
    assert status["root"] == raw and status["store"] == state
    assert len(status["added"]) == len(SAMPLE)
    run("--store", state, "snapshot", "--ref", "last", "-m", "first")
    assert json.loads(run("--store", state, "status", "--json"))["added"] == []

    upload(raw, {"links/analogy.txt": b"changed\n"})
    delete(raw, "concepts/descriptions/c1.txt")
    # the environment works as well as the flags
    out = run("status", RAW_STATE_DIR=state)
    assert "links/analogy.txt" in out and "concepts/descriptions/c1.txt" in out
    run("status", "--exit-code", code=1, RAW_STATE_DIR=state)
    run("snapshot", "--ref", "last", "-m", "second", RAW_STATE_DIR=state)
    log = json.loads(run("--store", state, "log", "--json"))
    assert [e["reason"] for e in log][:2] == ["snapshot: second", "snapshot: first"]
    diff = json.loads(run("--store", state, "diff", "last~1", "last", "--json"))
    assert diff["modified"] == ["links/analogy.txt"]
    assert diff["removed"] == ["concepts/descriptions/c1.txt"]
    run("--store", state, "reset", "last", "last~1")
    assert "links/analogy.txt" in run("--store", state, "status")
    out = run("--store", state, "fsck")
    assert "ok" in out.lower()
    run("--store", state, "gc", "--grace", "0", "--alone")


def test_cli_bucket_errors_are_one_line_with_exit_3(s3: S3Server, tmp_path: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    done = _manifest(env, tmp_path, "--root", "hdfs://n/raw", "--store", str(tmp_path), "status")
    assert done.returncode == 3
    assert "hdfs" in done.stderr and "s3://bucket/prefix" in done.stderr
    assert "Traceback" not in done.stderr
    state = f"s3://{s3.make_bucket('state')}/m"
    done = _manifest(
        env, tmp_path, "--root", "s3://missing-raw-bucket/x", "--store", state, "snapshot"
    )
    assert done.returncode == 3
    assert "s3://missing-raw-bucket/x" in done.stderr and "does not exist" in done.stderr
    done = _manifest(env, tmp_path, "--store", "s3://missing-state-bucket/m", "log")
    assert done.returncode == 3
    assert "missing-state-bucket" in done.stderr and "does not exist" in done.stderr
    secret = env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in done.stderr + done.stdout
