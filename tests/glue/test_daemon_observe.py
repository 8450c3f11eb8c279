"""The real daemon in observe mode: a project whose observed source has an eager downstream
(tests/glue/projects/flaky_observe.py) that fails once. An edit is observed by exactly one
run, `last` is promoted, the eager downstream recomputes through the automation sensor, and
Dagster's run retries re-execute the failed automation run. The project uses the sensor
trigger (evaluated every few seconds, not on a cron minute: the schedule under the daemon is
tests/glue/test_daemon.py's and the adopter story's), so the test waits for runs, not for
minutes. (The sample in observe mode is tests/test_option_b_end_to_end.py's, in process.)
Slow."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config

from .harness import age_tree, edit
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
    root, home = tmp_path / "flaky", tmp_path / "dagster_home"
    root.mkdir()
    (root / "readings.csv").write_text("t,v\n1,2\n")
    age_tree(root)
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n      module_name: tests.glue.projects.flaky_observe\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        FLAKY_ROOT=str(root),
        FLAKY_STORE=str(tmp_path / "store"),
        FLAKY_DIR=str(tmp_path),
    )
    repo = Repository(load_config(root=root, store=tmp_path / "store", env={}))
    log = tmp_path / "daemon.log"
    with running_daemon(workspace, env, log) as instance:
        # The first evaluation records the baseline (and a runless data version); the
        # automation sensor materializes the never-materialized downstream once
        baseline = wait_for(lambda: repo.find_ref("last"), 90, "the baseline", log)
        first = wait_for(
            lambda: _materialized_by(instance, "summary"),
            180,
            "the automation sensor to materialize the missing downstream",
            log,
        )
        # ... and has evaluated it since: a materialization and a change upstream that one
        # evaluation sees together count as handled (Dagster's eager), and request nothing
        wait_for(
            lambda: _seen_by_automation(instance, "summary"),
            120,
            "the automation sensor to see the downstream materialized",
            log,
        )
        assert instance.get_runs(dg.RunsFilter(tags={"trigger": "flaky_sensor"})) == []

        (tmp_path / "fail_next").write_text("1")
        edit(root / "readings.csv", "2,3\n")
        promoted = wait_for(
            lambda: repo.find_ref("last") != baseline and repo.find_ref("last"),
            120,
            "the observation run and promotion",
            log,
        )
        observed = instance.get_runs(dg.RunsFilter(tags={"trigger": "flaky_sensor"}))
        assert len(observed) == 1 and observed[0].tags[".dagster/flaky_fingerprint"] == promoted
        assert observed[0].job_name == "observe_flaky_sources"
        assert observed[0].status == dg.DagsterRunStatus.SUCCESS

        # The automation run failed once (after the observation had succeeded and promoted);
        # run retries re-executed it, and the retry recomputed the downstream
        retried = wait_for(
            lambda: (
                (r := _materialized_by(instance, "summary")) is not None
                and r.run_id != first.run_id
                and "dagster/parent_run_id" in r.tags
                and r
            ),
            240,
            "the retry of the failed automation run",
            log,
        )
        parent = instance.get_run_by_id(retried.tags["dagster/parent_run_id"])
        assert parent is not None and parent.status == dg.DagsterRunStatus.FAILURE
        # one observation run in all: the retry and the automation are not the sensor's
        assert len(instance.get_runs(dg.RunsFilter(tags={"trigger": "flaky_sensor"}))) == 1
