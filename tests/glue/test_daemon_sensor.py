"""Issue 24 under the real daemon: ``trigger="sensor"``. `dagster-daemon run` evaluates
``raw_sensor`` every few seconds (no cron minute to wait for): one edit is exactly one run,
launched within the cooldown + 15 s; the evaluations after it launch nothing until the next
edit; success promotes ``last``. A new file is a new file partition and one run for it; a
removed file deletes its partition and runs nothing.

The same story for a local root and a root on a bucket (a real S3 API on 127.0.0.1 whose
event notifications go to its SQS queue, ``events_queue``: an evaluation reads the queue and
lists nothing, counted through a proxy), both on a Postgres-backed instance (a real
PostgreSQL server, as deployments run it): the run keys, the tick history and the dynamic
partitions are Postgres's. (The schedule's daemon tests run on SQLite and on Postgres; the
sensor on SQLite is tested in process, tests/glue/test_sensor_trigger.py.) Two slow tests, a
root each, about a minute and a half each."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config
from manifest.errors import ManifestError
from tests.postgres import PostgresServer
from tests.s3server import CountingProxy, S3Server
from tests.test_bucket import delete, upload

from . import processes
from .processes import (
    finished_ticks_after,
    last_run_ended,
    latency,
    running_daemon,
    wait_for,
    write_instance_yaml,
)

REPO_ROOT = Path(__file__).parents[2]
PROJECT = Path(__file__).parent / "projects" / "landing.py"
pytestmark = pytest.mark.slow

COOLDOWN_SEC = 1.0
INTERVAL_SEC = 4
BOUND_SEC = COOLDOWN_SEC + 15  # issue 24: edit to run launched
FILES = {
    "orders.csv": "id,item\n1,tea\n2,bread\n",
    "events/a.json": '{"a": 1}\n',
    "events/b.json": '{"b": 2}\n',
    "readme.md": "nothing watches this\n",
}
SENSOR = "raw_sensor"
PENDING_TAG = ".dagster/raw_fingerprint"


def ticks_of(instance: dg.DagsterInstance) -> list:  # type: ignore[type-arg]
    """The sensor's ticks, newest first."""
    return processes.ticks_of(instance, SENSOR)


class Landing:
    """The landing project in a workspace: its root (a folder, or a prefix of a bucket),
    DAGSTER_HOME (its dagster.yaml naming the storage) and the daemon's environment. Files
    are written as a producer would: with the current time."""

    def __init__(self, tmp_path: Path, s3: S3Server | None, postgres: PostgresServer) -> None:
        self.home = tmp_path / "dagster_home"
        # the run queue hands runs to the launcher every second (Dagster's default: 5 s), as
        # the sensor's interval and the cooldown are short: the test waits less
        queue = (
            "run_coordinator:\n"
            "  module: dagster._core.run_coordinator\n"
            "  class: QueuedRunCoordinator\n"
            "  config:\n"
            "    dequeue_interval_seconds: 1\n"
        )
        tmp_path.mkdir(parents=True, exist_ok=True)
        storage = postgres.storage_yaml(postgres.make_database("sensor"))
        write_instance_yaml(self.home, storage, queue)
        self.workspace = tmp_path / "workspace.yaml"
        self.workspace.write_text(
            f"load_from:\n  - python_file:\n      relative_path: {PROJECT}\n"
            f"      working_directory: {REPO_ROOT}\n"
        )
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_", "AWS_"))
        }
        self.proxy: CountingProxy | None = None
        if s3 is not None:
            self.bucket = s3.make_bucket("landing")
            self.root = f"s3://{self.bucket}/incoming"
            queue = s3.make_queue(self.bucket, "incoming/")
            # the daemon reaches the server through a proxy that counts its requests
            self.proxy = CountingProxy(s3.endpoint)
            self.env.update(
                s3.env(),
                AWS_ENDPOINT_URL=self.proxy.endpoint,
                MANIFEST_CACHE_DIR=str(tmp_path / "cache"),
                LANDING_EVENTS_QUEUE=queue.replace(s3.endpoint, self.proxy.endpoint),
            )
        else:
            self.root = str(tmp_path / "raw")
        self.env.update(
            DAGSTER_HOME=str(self.home),
            LANDING_ROOT=self.root,
            LANDING_TRIGGER="sensor",
            LANDING_INTERVAL_SEC=str(INTERVAL_SEC),
            # the exact file's run outlasts an interval: an evaluation meets it in flight
            LANDING_RUN_SEC=str(INTERVAL_SEC + 2),
            # Dagster's default executor, a process per step: the resource set up again in
            # each step's process, as in a deployment that keeps the default
            LANDING_EXECUTOR="multiprocess",
            LANDING_COOLDOWN_SEC=str(COOLDOWN_SEC),
        )
        self.log = tmp_path / "daemon.log"
        for rel, text in FILES.items():
            self.write(rel, text)

    @property
    def on_bucket(self) -> bool:
        return self.root.startswith("s3://")

    def write(self, rel: str, text: str) -> None:
        if self.on_bucket:
            upload(self.root, {rel: text.encode()})
        else:
            (Path(self.root) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(self.root) / rel).write_text(text)

    def remove(self, rel: str) -> None:
        if self.on_bucket:
            delete(self.root, rel)
        else:
            (Path(self.root) / rel).unlink()

    def find_last(self) -> str | None:
        """``last`` of the store the sensor keeps (None until its first evaluation)."""
        try:
            repo = Repository(load_config(env={"DAGSTER_HOME": str(self.home)}))
            return repo.find_ref("last")
        except ManifestError:
            return None

    def store(self) -> Repository:
        return Repository(load_config(env={"DAGSTER_HOME": str(self.home)}))


def _run_for(instance: dg.DagsterInstance, n: int, log: Path) -> dg.DagsterRun:
    """Wait for the ``n``-th run (1-based) and return it."""
    runs = wait_for(
        lambda: (r := instance.get_runs()) and len(r) >= n and r,
        BOUND_SEC + 60,
        f"run {n}",
        log,
    )
    return sorted(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)[
        n - 1
    ]


def _promoted(d: Landing, instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """Wait for ``run`` to finish and for ``last`` to become the snapshot it processed."""
    wait_for(
        lambda: d.find_last() == run.tags[PENDING_TAG],
        120,
        f"run {run.run_id} to succeed and last to be promoted",
        d.log,
    )
    done = wait_for(
        lambda: (r := instance.get_run_by_id(run.run_id)) and r.is_finished and r,
        60,
        "the run to be recorded as finished",
        d.log,
    )
    assert done.status == dg.DagsterRunStatus.SUCCESS
    return done


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_the_sensor_under_the_daemon(
    where: str, tmp_path: Path, postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> None:
    """A local root and a bucket root, each its own daemon (two slow tests, side by side on
    two workers: each waits for its runs, not for the CPU). The local root's story edits
    the exact file, then adds and removes a partition's file; the bucket root's only adds
    and removes (a run fewer: the exact file's run is the same code)."""
    # the S3 server only where it is used (each worker starts its own)
    s3 = request.getfixturevalue("s3") if where == "bucket" else None
    d = Landing(tmp_path / where, s3, postgres_server)
    try:
        _sensor_story(d, exact=where == "local")
    finally:
        if d.proxy is not None:
            d.proxy.close()


def _sensor_story(d: Landing, *, exact: bool) -> None:
    with running_daemon(d.workspace, d.env, d.log) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # The first evaluation takes the baseline (no run) and registers a partition per
        # event file; the next ones find nothing to do
        baseline = wait_for(d.find_last, 90, "the baseline", d.log)
        # the daemon adds the evaluation's partitions after it returns, so after `last` moved
        wait_for(
            lambda: (
                instance.get_dynamic_partitions("event_files") == ["events/a.json", "events/b.json"]
            ),
            30,
            "the baseline's partitions",
            d.log,
        )
        wait_for(
            lambda: any(t.skip_reason == "no changes since last" for t in ticks_of(instance)),
            60,
            "a quiet evaluation",
            d.log,
        )
        assert instance.get_runs() == []
        if d.proxy is not None:
            # with the bucket's events, a quiet evaluation reads the queue and lists nothing
            d.proxy.take(d.bucket)
            since = time.time()
            wait_for(
                lambda: len(finished_ticks_after(instance, since, SENSOR)) >= 2,
                60,
                "two quiet evaluations",
                d.log,
            )
            quiet = d.proxy.take(d.bucket)
            assert quiet.get("SQS ReceiveMessage", 0) >= 2, quiet
            assert quiet.get("LIST", 0) == 0, quiet

        runs: list[dg.DagsterRun] = []
        if exact:
            runs.append(_edit_the_exact_file(d, instance, baseline))
        # A new file: its partition is registered, and exactly one run processes it
        edited = time.time()
        d.write("events/c.json", '{"c": 3}\n')
        added = _promoted(d, instance, _run_for(instance, len(runs) + 1, d.log))
        runs.append(added)
        assert added.tags["dagster/partition"] == "events/c.json"
        assert added.tags["raw_paths"] == "events/c.json"
        assert added.tags["trigger"] == SENSOR and added.tags[PENDING_TAG] != baseline
        took = latency(instance, added.run_id, edited)
        print(f"events/c.json added: {took}")
        assert took.launched is not None and took.launched <= BOUND_SEC, took
        assert instance.get_dynamic_partitions("event_files") == [
            "events/a.json",
            "events/b.json",
            "events/c.json",
        ]
        assert instance.get_materialized_partitions(dg.AssetKey("events")) == {"events/c.json"}

        # A removed file: its partition is deleted, and nothing runs (last advances alone)
        before = d.find_last()
        d.remove("events/a.json")
        wait_for(lambda: d.find_last() != before, 60, "last to advance without a run", d.log)
        assert instance.get_dynamic_partitions("event_files") == ["events/b.json", "events/c.json"]
        assert len(instance.get_runs()) == len(runs)
        reason = d.store().log("last")[0].reason
        assert reason.endswith("no run needed: already processed events/a.json")

        # The tick history: one SUCCESS tick per run, naming that run and its run key; the
        # evaluations of the same pending while its run was in flight found the run (by its
        # tag) and asked for nothing; every other evaluation skipped
        ticks = ticks_of(instance)
        succeeded = [t for t in ticks if t.status.value == "SUCCESS"]
        assert sorted(t.run_ids[0] for t in succeeded) == sorted(r.run_id for r in runs)
        assert all(len(t.run_ids) == 1 and len(t.run_keys) == 1 for t in succeeded)
        by_run = {t.run_ids[0]: t.run_keys[0] for t in succeeded}
        assert all(by_run[r.run_id] == r.tags["dagster/run_key"] for r in runs)
        finished = [t for t in ticks if t.status.value != "STARTED"]
        assert {t.status.value for t in finished} == {"SUCCESS", "SKIPPED"}
        in_flight = [t for t in ticks if "still queued or running" in (t.skip_reason or "")]
        assert all(any(r.run_id in (t.skip_reason or "") for r in runs) for t in in_flight)
        if exact:  # its run outlasts an interval (LANDING_RUN_SEC): met in flight
            assert any(runs[0].run_id in (t.skip_reason or "") for t in in_flight), [
                t.skip_reason for t in ticks
            ]
        assert any(
            (t.skip_reason or "").startswith("removed file partitions deleted; nothing to run")
            for t in ticks
        )


def _edit_the_exact_file(d: Landing, instance: dg.DagsterInstance, baseline: str) -> dg.DagsterRun:
    """One edit: exactly one run, launched within the cooldown + 15 s; success promotes,
    and the evaluations after it launch nothing."""
    edited = time.time()
    d.write("orders.csv", FILES["orders.csv"] + "3,jam\n")
    first = _run_for(instance, 1, d.log)
    first = _promoted(d, instance, first)
    assert first.tags["trigger"] == SENSOR
    assert first.tags["raw_paths"] == "orders.csv"
    assert first.tags["dagster/sensor_name"] == SENSOR
    assert first.tags["dagster/run_key"] == f"raw-{first.tags[PENDING_TAG][:16]}-b1-a1"
    assert first.tags[PENDING_TAG] != baseline
    took = latency(instance, first.run_id, edited)
    print(f"orders.csv edited: {took}")
    assert took.launched is not None and took.launched <= BOUND_SEC, took
    materialized = {
        k.to_user_string()
        for k in instance.get_asset_keys()
        if instance.get_latest_materialization_event(k) is not None
    }
    assert materialized == {"orders", "order_count"}
    ended = last_run_ended(instance)
    wait_for(
        lambda: len(finished_ticks_after(instance, ended, SENSOR)) >= 2,
        60,
        "two evaluations after the run",
        d.log,
    )
    assert [r.run_id for r in instance.get_runs()] == [first.run_id]
    assert d.store().find_ref("pending") is None
    return first
