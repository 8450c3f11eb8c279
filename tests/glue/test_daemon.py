"""The real thing: `dagster-daemon run` ticks raw_schedule every minute, launches exactly one
run for an edit, promotes `last`, and the following tick launches nothing; with the store on
a bucket and a Postgres-backed instance, the deployed shape. (Dagster's default SQLite
storage under the daemon, and the factory's default store under DAGSTER_HOME, are the
adopter story's second half: tests/glue/test_daemon_adopter.py.) Slow (minutes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config
from tests.postgres import PostgresServer
from tests.s3server import S3Server

from .harness import SAMPLE, age_tree, edit
from .processes import (
    finished_ticks_after,
    last_run_ended,
    running_daemon,
    ticks_of,
    wait_for,
    write_instance_yaml,
)

REPO_ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _sample_deployment(tmp_path: Path, storage: str = "") -> tuple[Path, Path, Path]:
    """A copy of the sample root, a DAGSTER_HOME (its dagster.yaml naming ``storage``, else
    Dagster's default SQLite) and a workspace loading the sample."""
    root, home = tmp_path / "raw", tmp_path / "dagster_home"
    shutil.copytree(SAMPLE, root)
    age_tree(root)
    write_instance_yaml(home, storage)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: dagster_glue.sample.definitions\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    return root, home, workspace


def test_daemon_with_the_store_on_a_bucket_and_postgres(
    tmp_path: Path, s3_server: S3Server, postgres_server: PostgresServer
) -> None:
    """The daemon, its code server and each run's own process share one store on a bucket
    (a real S3 API on 127.0.0.1) and a Postgres-backed instance (a real PostgreSQL server),
    as pods of one deployment would. The run key and the tick history are Postgres's."""
    storage = postgres_server.storage_yaml(postgres_server.make_database("schedule"))
    root, home, workspace = _sample_deployment(tmp_path, storage)
    state = f"s3://{s3_server.make_bucket('state')}/dagster/raw"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_", "AWS_"))}
    env.update(
        s3_server.env(),
        DAGSTER_HOME=str(home),
        RAW_DATA_DIR=str(root),
        RAW_STATE_DIR=state,
        RAW_SCAN_CRON="* * * * *",
        RAW_SCHEDULE_ENABLED="true",
        RAW_SCAN_COOLDOWN_SEC="0",
        MANIFEST_CACHE_DIR=str(tmp_path / "cache"),
    )
    old_env = dict(os.environ)
    os.environ.update(s3_server.env())
    try:
        repo = Repository(load_config(env=env))
        assert repo.config.store_text == state
        assert repo.begin().outcome == "baseline"
        baseline = repo.find_ref("last")
        edit(root / "link_templates.csv", "", append=True)  # mtime moves, content does not
        edit(
            root / "evaluation_templates.csv",
            "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
        )
        log = tmp_path / "daemon.log"
        with running_daemon(workspace, env, log) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            promoted = wait_for(
                lambda: repo.find_ref("last") != baseline and repo.find_ref("last"),
                240,
                "the run to succeed and last to be promoted on the bucket",
                log,
            )
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
            assert runs[0].tags[".dagster/raw_fingerprint"] == promoted
            assert runs[0].tags["dagster/schedule_name"] == "raw_schedule"
            assert runs[0].tags["trigger"] == "raw_schedule"
            materialized = {
                k.to_user_string()
                for k in instance.get_asset_keys()
                if instance.get_latest_materialization_event(k) is not None
            }
            # the edited file's asset and its downstream (and, on this fresh instance, their
            # never-materialized ancestors)
            assert {"raw_evaluation_templates", "evaluation_tasks"} <= materialized
            assert repo.log("last")[0].runs == (runs[0].run_id,)
            ended = last_run_ended(instance)
            wait_for(lambda: finished_ticks_after(instance, ended), 90, "a tick after the run", log)
            assert len(instance.get_runs()) == 1
            assert repo.find_ref("pending") is None
            # The tick history: the tick that requested the run names it and its run key;
            # the ticks after it skipped (the one after the run may promote, and skips)
            ticks = ticks_of(instance)
            (requesting,) = [t for t in ticks if t.status.value == "SUCCESS"]
            assert requesting.run_ids == [runs[0].run_id]
            assert requesting.run_keys == [runs[0].tags["dagster/run_key"]]
            later = [t for t in ticks if t.timestamp > requesting.timestamp]
            assert later and {t.status.value for t in later} <= {"SKIPPED", "STARTED"}
        assert repo.fsck().ok
    finally:
        os.environ.clear()
        os.environ.update(old_env)
