"""The real thing: `dagster-daemon run` ticks raw_schedule every minute, launches exactly one
run for an edit, promotes `last`, and the following tick launches nothing. Slow (minutes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config

from .harness import SAMPLE, age_tree, edit

REPO_ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-4000:]}")


def _schedule_ticks(instance: dg.DagsterInstance) -> list[dg.TickStatus]:
    ticks = []
    for state in instance.all_instigator_state():
        if state.name == "raw_schedule":
            ticks.extend(
                t.status for t in instance.get_ticks(state.instigator_origin_id, state.selector_id)
            )
    return ticks


def test_daemon_launches_exactly_one_run_and_promotes(tmp_path: Path) -> None:
    root, home = tmp_path / "raw", tmp_path / "dagster_home"
    shutil.copytree(SAMPLE, root)
    age_tree(root)
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: dagster_glue.definitions\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        RAW_DATA_DIR=str(root),
        RAW_SCAN_CRON="* * * * *",
        RAW_SCHEDULE_ENABLED="true",
        RAW_SCAN_COOLDOWN_SEC="0",
    )
    config = load_config(env=env)
    assert config.store == home / "state"
    repo = Repository(config)
    assert repo.begin().outcome == "baseline"  # the same store the daemon will use
    baseline = repo.find_ref("last")

    edit(
        root / "evaluation_templates.csv",
        "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
    )
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        instance = dg.DagsterInstance.get()
        promoted = _wait(
            lambda: repo.find_ref("last") != baseline and repo.find_ref("last"),
            240,
            "the run to succeed and last to be promoted",
            log,
        )
        runs = instance.get_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["raw_fingerprint"] == promoted
        assert run.tags["trigger"] == "raw_schedule"
        assert repo.find_ref("pending") is None
        materialized = {
            k.to_user_string()
            for k in instance.get_asset_keys()
            if instance.get_latest_materialization_event(k) is not None
        }
        assert {"raw_evaluation_templates", "evaluation_tasks"} <= materialized
        ticks_after = len(_schedule_ticks(instance))
        _wait(
            lambda: len(_schedule_ticks(instance)) > ticks_after,
            90,
            "one more tick after the promotion",
            log,
        )
        assert len(instance.get_runs()) == 1
        assert repo.find_ref("last") == promoted and repo.find_ref("pending") is None
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    assert daemon.returncode is not None
