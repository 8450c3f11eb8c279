"""A temp raw tree, a temp store and a real Dagster test instance, with helpers to tick the
schedule and execute what it requests in process."""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_glue.sample.definitions import build
from dagster_glue.sample.settings import GlueSettings
from manifest import Repository, load_config

SAMPLE = Path(__file__).parents[2] / "data" / "1_raw"


def age_tree(root: Path, seconds: float = 3600) -> None:
    stamp = time.time_ns() - int(seconds * 1e9)
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(stamp, stamp))


def edit(path: Path, text: str, *, append: bool = True) -> None:
    if append:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    stamp = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(stamp, stamp))


class Project:
    """Any definitions, ticked and run the way the daemon would: each tick one minute after
    the last, runs executed in process with the tags and partition the request carries."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs = defs
        self.instance = instance
        self.repository_def = defs.get_repository_def()
        self.clock = datetime.datetime.now(datetime.UTC)

    def context(self, when: datetime.datetime | None = None) -> dg.ScheduleEvaluationContext:
        if when is None:
            self.clock += datetime.timedelta(minutes=1)
            when = self.clock
        return dg.build_schedule_context(
            instance=self.instance,
            scheduled_execution_time=when,
            repository_def=self.repository_def,
            resources=self.defs.resources,
        )

    def tick(
        self, name: str = "raw_schedule", when: datetime.datetime | None = None
    ) -> dg.ScheduleExecutionData:
        schedule = self.repository_def.get_schedule_def(name)
        with self.context(when) as context:
            return schedule.evaluate_tick(context)

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        assert request.job_name is not None
        return self.repository_def.get_job(request.job_name).execute_in_process(
            instance=self.instance,
            asset_selection=request.asset_selection,
            tags=request.tags,
            partition_key=request.partition_key,
            raise_on_error=False,
        )

    def run_promotion_sensor(self, result: dg.ExecuteInProcessResult, name: str = "raw") -> None:
        """Evaluate ``<name>_promotion_sensor`` on a finished run, as the daemon does."""
        sensor = self.defs.resolve_sensor_def(f"{name}_promotion_sensor")
        context = dg.build_run_status_sensor_context(
            sensor_name=f"{name}_promotion_sensor",
            dagster_instance=self.instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(),
            resources=self.defs.resources,
            repository_def=self.repository_def,
        )
        sensor(context)

    def warm(self, job_name: str = "raw_reload_job") -> None:
        """Materialize everything once, as a user would after the baseline: unpartitioned
        assets in one run, then each registered file partition."""
        graph = self.repository_def.asset_graph
        job = self.repository_def.get_job(job_name)
        in_job = set(job.asset_layer.executable_asset_keys) & graph.materializable_asset_keys
        keys = [k for k in in_job if graph.get(k).partitions_def is None]
        assert job.execute_in_process(instance=self.instance, asset_selection=keys).success
        partitioned = [k for k in in_job if graph.get(k).partitions_def is not None]
        for name in {graph.get(k).partitions_def.name for k in partitioned}:  # type: ignore[union-attr]
            for key in self.instance.get_dynamic_partitions(name):
                result = job.execute_in_process(
                    instance=self.instance, asset_selection=partitioned, partition_key=key
                )
                assert result.success

    def materialized(self, result: dg.ExecuteInProcessResult) -> set[str]:
        return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


class Harness(Project):
    """The bundled sample, configured by RAW_* variables as ``dagster dev`` would be."""

    def __init__(
        self, root: Path, store: Path, instance: dg.DagsterInstance, settings: GlueSettings
    ) -> None:
        super().__init__(build(settings), instance)
        self.root = root
        self.store = store
        self.settings = settings
        observe = settings.get("asset_mode") == "observe"
        name = "observe_raw_sources" if observe else "raw_reload_job"
        self.job = self.repository_def.get_job(name)

    @property
    def repo(self) -> Repository:
        return Repository(load_config())

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.job.execute_in_process(
            instance=self.instance,
            asset_selection=request.asset_selection,
            tags=request.tags,
            partition_key=request.partition_key,
            raise_on_error=False,
        )


@functools.cache
def _template() -> Path:
    """This process's migrated instance folder, made once."""
    import atexit
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="manifest-test-instance-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    # One event log database for all runs (Dagster's default SQLite event log makes a
    # database per run, and checks its migrations at every connection: most of an
    # in-process run's cost). Its folder is the instance's own, so each copy has its own.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "code_servers:\n  wait_for_local_processes_on_shutdown: true\n"
        "event_log_storage:\n"
        "  module: dagster.core.storage.event_log\n"
        "  class: ConsolidatedSqliteEventLogStorage\n"
        "  config:\n"
        "    base_dir:\n"
        "      env: DAGSTER_HOME\n"
    )
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:  # creates and migrates
            instance.get_runs(limit=1)
            instance.all_instigator_state()
            instance.get_asset_keys()
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old
    return home


@contextmanager
def sqlite_instance() -> Iterator[dg.DagsterInstance]:
    """What ``dg.instance_for_test()`` gives (a SQLite-backed instance in a temporary
    folder, no telemetry, ``DAGSTER_HOME`` pointed at it while open), copied from one
    made and migrated once per process: instance_for_test creates and migrates every
    storage each time (0.4 s of CPU; a copy opens in 0.07 s), which the glue tests paid
    some 85 times a run."""
    import tempfile

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as top:
        home = Path(top) / "home"
        shutil.copytree(_template(), home)
        old = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(home)
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield instance
        finally:
            if old is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = old


@contextmanager
def harness_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The ``make_harness`` fixture's body (the fixture, in tests/conftest.py, imports this
    module only when a test asks for it)."""
    root = tmp_path / "raw"
    shutil.copytree(SAMPLE, root)
    age_tree(root)
    for key in list(os.environ):
        if key.startswith("RAW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RAW_DATA_DIR", str(root))
    monkeypatch.setenv("RAW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RAW_SCAN_COOLDOWN_SEC", "0")
    with sqlite_instance() as instance:

        def make(**settings: Any) -> Harness:
            return Harness(root, tmp_path / "state", instance, GlueSettings(**settings))

        yield make
