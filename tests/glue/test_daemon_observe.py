"""The real daemon in observe mode, with two code locations in one workspace: the sample
(`RAW_ASSET_MODE=observe`) and a small project whose automation run fails once. An edit is
observed by exactly one run, `last` is promoted, the eager downstream recomputes through the
automation sensor, and Dagster's run retries re-execute a failed automation run. Both
projects use the sensor trigger (evaluated every few seconds, not on a cron minute: the
schedule under the daemon is tests/glue/test_daemon.py's and the adopter story's), so the
test waits for runs, not for minutes. Slow."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config

from .harness import SAMPLE, age_tree, edit
from .processes import running_daemon, wait_for

REPO_ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _materialized_by(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return instance.get_run_by_id(event.run_id) if event is not None else None


def _seen_by_automation(instance: dg.DagsterInstance, key: str) -> bool:
    """The automation sensor has evaluated ``key`` since its latest materialization."""
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    storage = instance.schedule_storage
    assert storage is not None
    latest = storage.get_auto_materialize_asset_evaluations(key=dg.AssetKey(key), limit=1)
    return event is not None and bool(latest) and latest[0].timestamp > event.timestamp


def test_daemon_observe_mode_and_run_retries(tmp_path: Path) -> None:
    root, home, flaky = tmp_path / "raw", tmp_path / "dagster_home", tmp_path / "flaky"
    shutil.copytree(SAMPLE, root)
    flaky.mkdir()
    (flaky / "readings.csv").write_text("t,v\n1,2\n")
    age_tree(root)
    age_tree(flaky)
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n      module_name: dagster_glue.sample.definitions\n"
        f"      working_directory: {REPO_ROOT}\n"
        "  - python_module:\n      module_name: tests.glue.projects.flaky_observe\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        RAW_DATA_DIR=str(root),
        RAW_ASSET_MODE="observe",
        RAW_TRIGGER="sensor",
        RAW_SENSOR_INTERVAL_SEC="4",
        RAW_SCHEDULE_ENABLED="true",
        RAW_SCAN_COOLDOWN_SEC="0",
        FLAKY_ROOT=str(flaky),
        FLAKY_STORE=str(tmp_path / "flaky_store"),
        FLAKY_DIR=str(tmp_path),
    )
    sample = Repository(load_config(env=env))
    flaky_repo = Repository(load_config(root=flaky, store=tmp_path / "flaky_store", env={}))
    log = tmp_path / "daemon.log"
    with running_daemon(workspace, env, log) as instance:
        # The first evaluations record baselines (and runless data versions); the automation
        # sensor materializes the never-materialized downstream once.
        baseline = wait_for(lambda: sample.find_ref("last"), 150, "the sample baseline", log)
        flaky_base = wait_for(lambda: flaky_repo.find_ref("last"), 150, "the flaky baseline", log)
        wait_for(
            lambda: (
                _materialized_by(instance, "summary") is not None
                and _materialized_by(instance, "evaluation_tasks") is not None
            ),
            180,
            "the automation sensor to materialize the missing downstream",
            log,
        )
        before_eval = _materialized_by(instance, "evaluation_tasks")
        assert before_eval is not None
        # ... and has evaluated them since: a materialization and a change upstream that one
        # evaluation sees together count as handled (Dagster's eager), and request nothing
        wait_for(
            lambda: all(_seen_by_automation(instance, k) for k in ("evaluation_tasks", "summary")),
            120,
            "the automation sensor to see the downstream materialized",
            log,
        )

        edit(
            root / "evaluation_templates.csv",
            "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
        )
        (tmp_path / "fail_next").write_text("1")
        edit(flaky / "readings.csv", "2,3\n")

        promoted = wait_for(
            lambda: sample.find_ref("last") != baseline and sample.find_ref("last"),
            180,
            "the sample's observation run and promotion",
            log,
        )
        observed = instance.get_runs(dg.RunsFilter(tags={"trigger": "raw_sensor"}))
        assert len(observed) == 1 and observed[0].tags[".dagster/raw_fingerprint"] == promoted
        assert observed[0].job_name == "observe_raw_sources"
        after = wait_for(
            lambda: (
                (r := _materialized_by(instance, "evaluation_tasks")) is not None
                and r.run_id != before_eval.run_id
                and r.is_finished
                and r
            ),
            180,
            "evaluation_tasks to recompute through automation (and its run to finish)",
            log,
        )
        assert after.status == dg.DagsterRunStatus.SUCCESS

        # The flaky project: its observation succeeded (last promoted) while the automation
        # run failed once; run retries re-executed it.
        wait_for(lambda: flaky_repo.find_ref("last") != flaky_base, 180, "flaky promotion", log)
        retried = wait_for(
            lambda: (
                (r := _materialized_by(instance, "summary")) is not None
                and "dagster/parent_run_id" in r.tags
                and r
            ),
            240,
            "the retry of the failed automation run",
            log,
        )
        parent = instance.get_run_by_id(retried.tags["dagster/parent_run_id"])
        assert parent is not None and parent.status == dg.DagsterRunStatus.FAILURE
        assert not (tmp_path / "fail_next").exists()
        assert flaky_repo.find_ref("pending") is None
