"""Issue 21's adopter story under the real daemon (`dagster-daemon run`, a cron tick every
minute, runs in their own processes): an exact file, a glob, per-file partitions with a
fan-in, ignored and excluded files; a supersede during a fan-in, a failure, a give-up, a
restore. Asserts the runs per change: none repeated, none missing.

The story takes six ticks, one a minute. It is told in two halves that run side by side
(each its own daemon, instance and store), three ticks each: the first half under the
daemon from the baseline to the give-up; the second half reaches the same give-up in
process (the project's own schedule evaluated against the daemon's instance, its runs
executed in process, as test_one_truth.py does), then the daemon takes it from the restore
to the promotion. The first half runs on a Postgres-backed instance
(a real PostgreSQL server, the deployed shape), the second on Dagster's default SQLite.
Both halves run each run's steps in the run's process (``ADOPTER_EXECUTOR``): a process
per step is the sensor daemon test's (tests/glue/test_daemon_sensor.py). Slow (about 3
minutes each)."""

from __future__ import annotations

import datetime
import json
import os
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from manifest import Repository, load_config
from tests.postgres import PostgresServer

from .harness import Project, age_tree, edit
from .processes import (
    running_daemon,
    wait_for,
    write_instance_yaml,
)
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


# The runs of the first half: the partition and customers (tick 1), then the glob and the
# failing partition (tick 2); tick 3 gives up
FIRST_HALF = Counter(
    {
        ("notes/jan.txt", "notes/jan.txt", "SUCCESS"): 1,
        (None, "customers.csv", "SUCCESS"): 1,
        (None, "prices/b.csv", "SUCCESS"): 1,
        ("notes/feb.txt", "notes/feb.txt", "FAILURE"): 1,
    }
)


class Deployment:
    """The adopter's project in a workspace, its root, DAGSTER_HOME and the daemon's env."""

    def __init__(self, tmp_path: Path, storage: str = "", executor: str = "") -> None:
        self.root, self.home = tmp_path / "raw", tmp_path / "dagster_home"
        for rel, text in FILES.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text(text)
        age_tree(self.root)
        write_instance_yaml(self.home, storage)
        self.workspace = tmp_path / "workspace.yaml"
        self.workspace.write_text(
            f"load_from:\n  - python_file:\n      relative_path: {PROJECT}\n"
            f"      working_directory: {REPO_ROOT}\n"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
        self.env.update(
            DAGSTER_HOME=str(self.home),
            ADOPTER_ROOT=str(self.root),
            ADOPTER_MAX_ATTEMPTS="1",
            ADOPTER_EXECUTOR=executor,
        )
        self.log = tmp_path / "daemon.log"

    def status(self) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "manifest", "status", "--json"],
            cwd=self.root,
            env={k: v for k, v in self.env.items() if k != "ADOPTER_ROOT"},  # only DAGSTER_HOME
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def store(self) -> Repository:
        return Repository(load_config(env={"DAGSTER_HOME": str(self.home)}))

    def baseline(self) -> None:
        """The baseline, as the first tick takes it (the store is created where the
        factory's default puts it and records the root and the exclude)."""
        repo = Repository(
            load_config(
                root=self.root, store=self.home / "state" / "raw", exclude=("**/*.tmp",), env={}
            )
        )
        assert repo.begin().outcome == "baseline"
        assert self.store().config.root == self.root
        assert self.store().config.exclude == ("**/*.tmp",)

    def first_edits(self) -> None:
        """An exact file and a partition change at once (plus an excluded and an ignored
        file)."""
        edit(self.root / "customers.csv", "3,Linus\n")
        edit(self.root / "notes" / "jan.txt", "and windy\n")
        edit(self.root / "new.tmp", "excluded\n", append=False)
        edit(self.root / "readme.md", "ignored\n")

    def second_edits(self) -> str:
        """Before the fan-in is requested, an unrelated edit supersedes pending, and another
        partition breaks. Returns feb's good content."""
        good = (self.root / "notes" / "feb.txt").read_text()
        edit(self.root / "prices" / "b.csv", "z,9\n")
        edit(self.root / "notes" / "feb.txt", "FAIL\n")
        return good


def test_the_adopter_story_under_the_daemon_to_the_give_up(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """On a Postgres-backed instance (the deployed shape): the file partitions, run keys
    and the failed tick are Postgres's."""
    d = Deployment(
        tmp_path,
        postgres_server.storage_yaml(postgres_server.make_database("adopter")),
        executor="in_process",
    )
    d.baseline()
    d.first_edits()
    now = d.status()  # what the next tick processes, seen from the project folder
    assert now["added"] == [] and now["modified"] == [
        "customers.csv",
        "notes/jan.txt",
        "readme.md",
    ]
    with running_daemon(d.workspace, d.env, d.log) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        wait_for(lambda: _finished(instance, 2), 150, "the partition and customers runs", d.log)
        assert d.store().find_ref("pending") is not None  # the fan-in is still owed
        # the first tick registered a partition per note of the baseline (taken by the CLI,
        # so the partition set was still empty)
        assert instance.get_dynamic_partitions("note_files") == ["notes/feb.txt", "notes/jan.txt"]
        # The glob and the broken partition run, nothing already done does
        d.second_edits()
        wait_for(lambda: _finished(instance, 4), 150, "the glob and the failing partition", d.log)
        # With one attempt allowed, the next tick gives up, and that tick FAILS, naming the
        # one file that failed (not the others pending covers)
        failed = wait_for(
            lambda: [t for t in _ticks(instance) if t.status.value == "FAILURE"],
            150,
            "the tick that gives up to fail",
            d.log,
        )
        error = failed[0].error.to_string()
        assert "gave up processing notes/feb.txt: " in error
        assert "jan.txt" not in error and "prices" not in error
        assert d.status()["pending_failure"] is not None
        # The edits race the daemon's cron: when the test notices the first two runs only
        # after the next tick (under load), that tick has already asked for jan's fan-in,
        # which then ran once before the edits superseded pending. Either way nothing ran
        # twice and nothing already done ran again.
        early_fan_in = Counter({(None, "notes/jan.txt", "SUCCESS"): 1})
        assert _runs(instance) in (FIRST_HALF, FIRST_HALF + early_fan_in)
        # Every run has its own run key, named by the tick that requested it
        runs = instance.get_runs()
        keys = [r.tags["dagster/run_key"] for r in runs]
        assert len(set(keys)) == len(keys)
        requested = {k for t in _ticks(instance) for k in t.run_keys}
        assert requested == set(keys)


def test_the_adopter_story_under_the_daemon_from_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Deployment(tmp_path, executor="in_process")
    d.baseline()
    # The first half in process, against the instance the daemon will use: the schedule's
    # ticks at past minutes (the daemon's later ones own pending after them), the runs
    # requested executed with their tags and partitions
    for key, value in d.env.items():
        if key.startswith(("DAGSTER_", "ADOPTER_")):
            monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("RAW_")]:
        monkeypatch.delenv(key)
    defs = runpy.run_path(str(PROJECT))["defs"]
    start = datetime.datetime.now(datetime.UTC).replace(second=0, microsecond=0)
    minutes = (start - datetime.timedelta(minutes=10 - n) for n in range(3))
    with dg.DagsterInstance.from_config(str(d.home)) as instance:
        project = Project(defs, instance)
        d.first_edits()
        first = project.tick(when=next(minutes)).run_requests
        assert sorted((r.partition_key or "", r.tags["raw_paths"]) for r in first) == [
            ("", "customers.csv"),
            ("notes/jan.txt", "notes/jan.txt"),
        ]
        assert all(project.execute(r).success for r in first)
        assert d.store().find_ref("pending") is not None  # the fan-in is still owed
        good = d.second_edits()
        second = project.tick(when=next(minutes)).run_requests
        assert sorted((r.partition_key or "", r.tags["raw_paths"]) for r in second) == [
            ("", "prices/b.csv"),
            ("notes/feb.txt", "notes/feb.txt"),
        ]
        assert [project.execute(r).success for r in second] == [
            r.partition_key is None for r in second
        ]
        with pytest.raises(dg.DagsterUserCodeExecutionError) as info:
            project.tick(when=next(minutes))
        assert str(info.value.__cause__).startswith("gave up processing notes/feb.txt: ")
        assert _runs(instance) == FIRST_HALF
    assert d.status()["pending_failure"] is not None

    # The restore: feb is reprocessed (requeued), then the fan-in once; nothing else runs
    edit(d.root / "notes" / "feb.txt", good, append=False)
    with running_daemon(d.workspace, d.env, d.log) as instance:
        wait_for(lambda: _finished(instance, 6), 200, "the restored partition and fan-in", d.log)
        wait_for(lambda: d.store().find_ref("pending") is None, 60, "the promotion", d.log)
        assert _runs(instance) == FIRST_HALF + Counter(
            {
                ("notes/feb.txt", "notes/feb.txt", "SUCCESS"): 1,
                (None, "notes/feb.txt\nnotes/jan.txt", "SUCCESS"): 1,  # the fan-in, once
            }
        )
        reason = d.store().log("last")[0].reason
        assert "notes/feb.txt (requeued), notes/jan.txt (modified)" in reason
        assert "processed by earlier runs: customers.csv, prices/b.csv" in reason
        assert reason.endswith("not watched: readme.md")
        # (The tick after a run, which skips, is test_daemon.py's and the sensor test's
        # under the daemon, and the in-process story's after this same fan-in: waiting for
        # it here cost up to a minute of the suite's longest test.)
        assert len(instance.get_runs()) == 6
