"""Issue 21's adopter story under the real daemon (`dagster-daemon run`, a cron tick every
minute, runs in their own processes): an exact file, a glob, per-file partitions with a
fan-in, ignored and excluded files; a supersede during a fan-in, a failure, a give-up, a
restore. Asserts the runs per change: none repeated, none missing. Slow (about 5 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config

from .harness import age_tree, edit
from .processes import running_daemon, wait_for
from .test_one_truth import FILES, PROJECT

REPO_ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def _ticks(instance: dg.DagsterInstance) -> list:  # type: ignore[type-arg]
    for state in instance.all_instigator_state():
        if state.name == "raw_schedule":
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id))
    return []


def _runs(instance: dg.DagsterInstance) -> Counter[tuple[str | None, str, str]]:
    """(partition, raw_paths, status) -> how many runs."""
    return Counter(
        (r.tags.get("dagster/partition"), r.tags.get("raw_paths", ""), r.status.value)
        for r in instance.get_runs()
    )


def _finished(instance: dg.DagsterInstance, n: int) -> bool:
    runs = instance.get_runs()
    return len(runs) >= n and all(r.is_finished for r in runs)


def test_the_adopter_story_under_the_daemon(tmp_path: Path) -> None:
    root, home = tmp_path / "raw", tmp_path / "dagster_home"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    age_tree(root)
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {PROJECT}\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), ADOPTER_ROOT=str(root), ADOPTER_MAX_ATTEMPTS="1")

    def status() -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "manifest", "status", "--json"],
            cwd=root,
            env={k: v for k, v in env.items() if k != "ADOPTER_ROOT"},  # only DAGSTER_HOME
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def store() -> Repository:
        return Repository(load_config(env={"DAGSTER_HOME": str(home)}))

    # The baseline, as the first tick takes it (the store is created where the factory's
    # default puts it and records the root and the exclude)
    baseline = Repository(
        load_config(root=root, store=home / "state" / "raw", exclude=("**/*.tmp",), env={})
    )
    assert baseline.begin().outcome == "baseline"
    assert store().config.root == root and store().config.exclude == ("**/*.tmp",)

    # An exact file and a partition change at once (plus an excluded and an ignored file)
    edit(root / "customers.csv", "3,Linus\n")
    edit(root / "notes" / "jan.txt", "and windy\n")
    edit(root / "new.tmp", "excluded\n", append=False)
    edit(root / "readme.md", "ignored\n")
    now = status()  # what the next tick processes, seen from the project folder
    assert now["added"] == [] and now["modified"] == [
        "customers.csv",
        "notes/jan.txt",
        "readme.md",
    ]
    log = tmp_path / "daemon.log"
    with running_daemon(workspace, env, log) as instance:
        wait_for(lambda: _finished(instance, 2), 150, "the partition and customers runs", log)
        assert store().find_ref("pending") is not None  # the fan-in is still owed
        # Before the fan-in is requested, an unrelated edit supersedes pending, and another
        # partition breaks: the glob and the broken partition run, nothing already done does
        good = (root / "notes" / "feb.txt").read_text()
        edit(root / "prices" / "b.csv", "z,9\n")
        edit(root / "notes" / "feb.txt", "FAIL\n")
        wait_for(lambda: _finished(instance, 4), 150, "the glob and the failing partition", log)
        # With one attempt allowed, the next tick gives up, and that tick FAILS, naming the
        # one file that failed (not the others pending covers)
        failed = wait_for(
            lambda: [t for t in _ticks(instance) if t.status.value == "FAILURE"],
            150,
            "the tick that gives up to fail",
            log,
        )
        error = failed[0].error.to_string()
        assert "gave up processing notes/feb.txt: " in error
        assert "jan.txt" not in error and "prices" not in error
        assert status()["pending_failure"] is not None

        # The restore: feb is reprocessed (requeued), then the fan-in once; nothing else runs
        edit(root / "notes" / "feb.txt", good, append=False)
        wait_for(lambda: _finished(instance, 6), 200, "the restored partition and fan-in", log)
        wait_for(lambda: store().find_ref("pending") is None, 60, "the promotion", log)
        assert _runs(instance) == Counter(
            {
                ("notes/jan.txt", "notes/jan.txt", "SUCCESS"): 1,
                (None, "customers.csv", "SUCCESS"): 1,
                (None, "prices/b.csv", "SUCCESS"): 1,
                ("notes/feb.txt", "notes/feb.txt", "FAILURE"): 1,
                ("notes/feb.txt", "notes/feb.txt", "SUCCESS"): 1,
                (None, "notes/feb.txt\nnotes/jan.txt", "SUCCESS"): 1,  # the fan-in, once
            }
        )
        reason = store().log("last")[0].reason
        assert "notes/feb.txt (requeued), notes/jan.txt (modified)" in reason
        assert "processed by earlier runs: customers.csv, prices/b.csv" in reason
        assert reason.endswith("not watched: readme.md")
        after = len(_ticks(instance))
        wait_for(lambda: len(_ticks(instance)) > after, 90, "one more tick", log)
        assert len(instance.get_runs()) == 6  # later ticks skip
