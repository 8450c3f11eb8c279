"""The real thing: `dagster-daemon run` ticks raw_schedule every minute, launches exactly one
run for an edit, promotes `last`, and the following tick launches nothing. Slow (minutes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config
from tests.s3server import S3Server

from .harness import SAMPLE, age_tree, edit
from .processes import finished_ticks_after, last_run_ended, running_daemon, wait_for

REPO_ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _sample_deployment(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the sample root, a DAGSTER_HOME and a workspace loading the sample."""
    root, home = tmp_path / "raw", tmp_path / "dagster_home"
    shutil.copytree(SAMPLE, root)
    age_tree(root)
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: dagster_glue.sample.definitions\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    return root, home, workspace


def test_daemon_launches_exactly_one_run_and_promotes(tmp_path: Path) -> None:
    root, home, workspace = _sample_deployment(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        RAW_DATA_DIR=str(root),
        RAW_SCAN_CRON="* * * * *",
        RAW_SCHEDULE_ENABLED="true",
        RAW_SCAN_COOLDOWN_SEC="0",
    )
    config = load_config(env=env)
    assert config.store == home / "state" / "raw"  # where change_detection keeps it
    repo = Repository(config)
    assert repo.begin().outcome == "baseline"  # the same store the daemon will use
    baseline = repo.find_ref("last")

    edit(
        root / "evaluation_templates.csv",
        "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
    )
    log = tmp_path / "daemon.log"
    with running_daemon(workspace, env, log) as instance:
        promoted = wait_for(
            lambda: repo.find_ref("last") != baseline and repo.find_ref("last"),
            240,
            "the run to succeed and last to be promoted",
            log,
        )
        runs = instance.get_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags[".dagster/raw_fingerprint"] == promoted
        assert run.tags["trigger"] == "raw_schedule"
        assert repo.find_ref("pending") is None
        materialized = {
            k.to_user_string()
            for k in instance.get_asset_keys()
            if instance.get_latest_materialization_event(k) is not None
        }
        assert {"raw_evaluation_templates", "evaluation_tasks"} <= materialized
        # The tick after the run (it promotes, if the promotion sensor has not yet)
        ended = last_run_ended(instance)
        wait_for(lambda: finished_ticks_after(instance, ended), 90, "a tick after the run", log)
        assert len(instance.get_runs()) == 1
        assert repo.find_ref("last") == promoted and repo.find_ref("pending") is None


def test_daemon_with_the_store_on_a_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    """The daemon, its code server and each run's own process share one store on a bucket
    (a real S3 API on 127.0.0.1), as pods of one deployment would."""
    root, home, workspace = _sample_deployment(tmp_path)
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
            promoted = wait_for(
                lambda: repo.find_ref("last") != baseline and repo.find_ref("last"),
                240,
                "the run to succeed and last to be promoted on the bucket",
                log,
            )
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
            assert runs[0].tags[".dagster/raw_fingerprint"] == promoted
            assert repo.log("last")[0].runs == (runs[0].run_id,)
            ended = last_run_ended(instance)
            wait_for(lambda: finished_ticks_after(instance, ended), 90, "a tick after the run", log)
            assert len(instance.get_runs()) == 1
            assert repo.find_ref("pending") is None
        assert repo.fsck().ok
    finally:
        os.environ.clear()
        os.environ.update(old_env)
