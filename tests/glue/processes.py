"""Real Dagster processes for the slow tests: start them in their own process group, wait for
a condition with the log at hand, stop them (SIGINT, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TypeVar

import dagster as dg

T = TypeVar("T")


# The suite runs six daemon tests side by side with the fast tests on two cores: a wait
# that takes seconds alone can take minutes there. ``timeout`` is what a quiet machine needs;
# a wait gives up only after this many times it (a passing test never waits longer for it).
LOAD_SLACK = 2.5


def wait_for(predicate: Callable[[], T], timeout: float, what: str, log: Path) -> T:
    deadline = time.monotonic() + timeout * LOAD_SLACK
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()[-4000:]}")


def write_instance_yaml(home: Path, storage: str = "", extra: str = "") -> None:
    """``home/dagster.yaml``: no telemetry, then ``storage`` (e.g. a Postgres block, from
    ``PostgresServer.storage_yaml``; empty: Dagster's default, SQLite files under ``home``)
    and ``extra``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + storage + extra)


def ticks_of(instance: dg.DagsterInstance, name: str = "raw_schedule") -> list:  # type: ignore[type-arg]
    """Every tick of the schedule or sensor ``name``, newest first."""
    return [
        tick
        for state in instance.all_instigator_state()
        if state.name == name
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id)
    ]


def finished_ticks_after(
    instance: dg.DagsterInstance, when: float, schedule: str = "raw_schedule"
) -> list:  # type: ignore[type-arg]
    """The ticks of ``schedule`` (or a sensor) after ``when`` (a timestamp) that have
    finished."""
    return [
        tick
        for tick in ticks_of(instance, schedule)
        if tick.timestamp > when and tick.status.value != "STARTED"
    ]


class Latency(NamedTuple):
    """Seconds from an edit to its run being created (requested by the tick), launched (the
    run coordinator hands it to the launcher: ``RUN_STARTING``) and started (its own process
    runs it: ``RUN_START``); None while not yet."""

    requested: float
    launched: float | None
    started: float | None


def latency(instance: dg.DagsterInstance, run_id: str, edited: float) -> Latency:
    record = instance.get_run_record_by_id(run_id)
    assert record is not None, run_id

    def first(kind: dg.DagsterEventType) -> float | None:
        found = instance.all_logs(run_id, of_type=kind)
        return min(e.timestamp for e in found) - edited if found else None

    return Latency(
        record.create_timestamp.timestamp() - edited,
        first(dg.DagsterEventType.RUN_STARTING),
        first(dg.DagsterEventType.RUN_START),
    )


def last_run_ended(instance: dg.DagsterInstance) -> float:
    """When the latest of the finished runs ended."""
    ends = [r.end_time for r in instance.get_run_records() if r.end_time is not None]
    assert ends, "no run has ended"
    return max(ends)


def stop(proc: subprocess.Popen[bytes], first: int = signal.SIGINT) -> None:
    """Stop a process group gently, then for good."""
    os.killpg(proc.pid, first)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running_daemon(workspace: Path, env: dict[str, str], log: Path) -> Iterator[dg.DagsterInstance]:
    """`dagster-daemon run -w workspace`, and this process's view of its instance.

    The instance's storages (SQLite files, or a Postgres database's tables) are created here
    first: the daemon, its code server and this process creating them at once can stamp
    alembic twice ("more than one head")."""
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
        instance.get_asset_keys()
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            start_new_session=True,
        )
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        yield dg.DagsterInstance.get()
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home
        stop(daemon)
