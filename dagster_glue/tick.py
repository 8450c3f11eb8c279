"""One schedule tick: reconcile an in-flight ``pending`` with its runs (``manifest.reconcile``
decides), else ``begin``; map the changes to watched assets; request the runs.

Everything the tick needs comes from its context: the watched root's ``ManifestResource``
(``context.resources``), the assets (``context.repository_def``), the instance.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from typing import Literal

import dagster as dg

from dagster_glue import planning
from dagster_glue import tags as T
from dagster_glue.resource import ManifestResource, observation_version, resource_key
from manifest import REF_LAST, REF_PENDING, ChangeSet, ManifestError, Repository
from manifest.reconcile import Decision, RunInfo, RunState, reconcile
from manifest.text import escape_path

AssetMode = Literal["materialize", "observe"]
LABEL_TICK = "dagster_tick"
LABEL_MODE = "asset_mode"
_SUCCESS = {dg.DagsterRunStatus.SUCCESS}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

# a schedule's tick or the trigger sensor's evaluation (``trigger="sensor"``): the same logic
Evaluation = dg.ScheduleEvaluationContext | dg.SensorEvaluationContext


class Glue:
    """The definition-time facts of one watched root: its name, mode, selection and job."""

    def __init__(
        self,
        *,
        name: str,
        asset_mode: AssetMode,
        job_name: str,
        schedule_name: str,
        selection: dg.AssetSelection | str | None = None,
    ) -> None:
        self.name = name
        self.observe = asset_mode == "observe"
        self.asset_mode = asset_mode
        self.job_name = job_name
        self.schedule_name = schedule_name
        self.selection = selection
        self.resource_key = resource_key(name)
        self._registered: set[tuple[str, str | None]] = set()
        self._watched: tuple[dg.RepositoryDefinition, list[planning.Watched]] | None = None

    # -- facts ----------------------------------------------------------------------------

    def watched(self, repository_def: dg.RepositoryDefinition) -> list[planning.Watched]:
        """The watched assets of these definitions (resolved once per definitions object:
        a tick asks several times, and a code location's definitions do not change)."""
        if self._watched is None or self._watched[0] is not repository_def:
            self._watched = (repository_def, planning.find_watched(repository_def, self.selection))
        return self._watched[1]

    def plan(
        self, res: ManifestResource, repository_def: dg.RepositoryDefinition, changes: ChangeSet
    ) -> planning.Plan:
        return planning.plan(
            changes,
            self.watched(repository_def),
            repository_def.asset_graph,
            batch_size=res.batch_size,
            observe=self.observe,
        )

    def _runs(self, instance: dg.DagsterInstance, pending: str) -> list[tuple[int, dg.DagsterRun]]:
        """The runs of ``pending`` with their batch number, oldest first."""
        records = {
            r.storage_id: r.dagster_run
            for tag in (T.pending(self.name), T.legacy_pending(self.name))  # legacy: before 0.2
            for r in instance.get_run_records(filters=dg.RunsFilter(tags={tag: pending}))
        }
        out = []
        for _, run in sorted(records.items()):
            try:
                out.append((int(run.tags.get(T.batch(self.name), "1/1").split("/")[0]), run))
            except ValueError:
                continue
        return out

    def runs_by_batch(self, instance: dg.DagsterInstance, pending: str) -> dict[int, list[RunInfo]]:
        out: dict[int, list[RunInfo]] = {}
        for batch, run in self._runs(instance, pending):
            state: RunState = (
                "success"
                if run.status in _SUCCESS
                else "failure"
                if run.status in _FAILED
                else "in_progress"
            )
            out.setdefault(batch, []).append(RunInfo(run.run_id, state))
        return out

    def succeeded(
        self, instance: dg.DagsterInstance, pending: str, planned: planning.Plan
    ) -> set[int]:
        """The batches of ``planned`` whose latest run succeeded *for exactly that batch*:
        its tags name the same batch count, partition and paths (a code reload can change
        the plan; a run of another plan's batch n never counts as this one's)."""
        latest = dict(self._runs(instance, pending))
        total = len(planned.batches)
        key = f"{self.name}_paths"
        out = set()
        for number, run in latest.items():
            if run.status not in _SUCCESS or not 1 <= number <= total:
                continue
            batch = planned.batches[number - 1]
            if (
                run.tags.get(T.batch(self.name)) == f"{number}/{total}"
                and run.tags.get("dagster/partition") == batch.partition
                and run.tags.get(key) == T.paths_tag(self.name, batch.processed())[key]
            ):
                out.add(number)
        return out

    def decide(
        self,
        res: ManifestResource,
        repo: Repository,
        repository_def: dg.RepositoryDefinition,
        instance: dg.DagsterInstance,
        pending: str,
        *,
        tick: str | None = None,
    ) -> tuple[Decision, planning.Plan, ChangeSet]:
        last = repo.find_ref(REF_LAST)
        changes = repo.pending_changes(pending, last)
        planned = self.plan(res, repository_def, changes)
        moves = repo.log(REF_PENDING, 1)
        age = (time.time_ns() - moves[0].time_ns) / 1e9 if moves else float("inf")
        taken_by = repo.read_snapshot(pending).label(LABEL_TICK) or ""
        owner = tick is not None and _is_later_tick(taken_by, tick)
        decision = reconcile(
            max(len(planned.batches), 1),
            self.runs_by_batch(instance, pending),
            pending_age_sec=age,
            grace_sec=res.run_grace_sec,
            max_attempts=res.max_attempts,
            tree_changed=lambda: bool(repo.status(against=pending).changes),
            after={b.number: b.after for b in planned.batches},
            owner=owner,
        )
        return decision, planned, changes

    # -- acting ---------------------------------------------------------------------------

    def run_requests(
        self,
        repo: Repository,
        instance: dg.DagsterInstance,
        graph: object,
        pending: str,
        changes: ChangeSet,
        planned: planning.Plan,
        batches: Sequence[int],
        attempt: int,
        log: logging.Logger | None = None,
    ) -> list[dg.RunRequest]:
        last = repo.find_ref(REF_LAST)
        base = {
            T.TAG_TRIGGER: self.schedule_name,  # the schedule, or the sensor, that asks
            T.pending(self.name): pending,
            T.last(self.name): last or "",
            T.attempt(self.name): str(attempt),
        }
        requests = []
        for number in batches:
            batch = planned.batches[number - 1]
            keys, ancestors, left_out = planning.selection(
                batch, graph, instance, observe=self.observe
            )
            tags = {
                **base,
                **T.paths_tag(self.name, batch.processed()),
                T.batch(self.name): f"{number}/{len(planned.batches)}",
            }
            if ancestors:
                tags[f"{self.name}_added_ancestors"] = ",".join(
                    k.to_user_string() for k in ancestors
                )
            if left_out and log is not None:
                log.warning(
                    "not recomputed (partitioned downstream of an unpartitioned change; "
                    "launch a backfill if they read it): "
                    + ", ".join(k.to_user_string() for k in left_out)
                )
            if batch.partition is not None:
                tags[f"{self.name}_partition"] = batch.partition
            requests.append(
                dg.RunRequest(
                    run_key=T.run_key(self.name, pending, number, attempt),
                    job_name=self.job_name,
                    asset_selection=keys,
                    partition_key=batch.partition,
                    tags=tags,
                )
            )
        return requests

    def sync_partitions(self, instance: dg.DagsterInstance, planned: planning.Plan) -> None:
        for name, keys in planned.new_partitions.items():
            instance.add_dynamic_partitions(name, keys)
        for name, keys in planned.gone_partitions.items():
            for key in keys:
                if instance.has_dynamic_partition(name, key):
                    instance.delete_dynamic_partition(name, key)

    def register_all(
        self,
        repo: Repository,
        repository_def: dg.RepositoryDefinition,
        instance: dg.DagsterInstance,
        snapshot: str,
        *,
        only_empty: bool = False,
    ) -> int:
        """Baseline: one partition per file already there, for every per-file asset. With
        ``only_empty``, just for partition sets with no partition at all (a baseline taken
        by the CLI, or a new Dagster instance on an existing store)."""
        watched = [w for w in self.watched(repository_def) if w.partitions is not None]
        if only_empty:
            # checked once per snapshot and partition set in this process, not every tick
            # (a glob that matches nothing would otherwise walk the whole snapshot each time)
            todo = {(snapshot, w.partitions) for w in watched} - self._registered
            watched = [
                w
                for w in watched
                if (snapshot, w.partitions) in todo
                and not instance.get_dynamic_partitions(w.partitions or "")
            ]
            self._registered |= todo
        if not watched:
            return 0
        found: dict[str, list[str]] = {}
        for path, _entry in repo.iter_files(snapshot):
            for w in planning.match(watched, path):
                found.setdefault(w.partitions or "", []).append(escape_path(path))
        for name, keys in found.items():
            instance.add_dynamic_partitions(name, keys)
        return sum(len(v) for v in found.values())

    def record_versions(
        self,
        repo: Repository,
        repository_def: dg.RepositoryDefinition,
        instance: dg.DagsterInstance,
        snapshot: str,
        *,
        only_missing: bool,
    ) -> int:
        """Observe mode: a runless observation per watched source carrying its version, so
        downstream is not blocked and the first real change is the only change."""
        count = 0
        for w in self.watched(repository_def):
            if not w.observable:
                continue
            if only_missing and instance.get_latest_data_version_record(w.key) is not None:
                continue
            version = observation_version(repo.find_file(snapshot, w.source_path))
            instance.report_runless_asset_event(
                dg.AssetObservation(
                    asset_key=w.key,
                    tags={"dagster/data_version": version},
                    metadata={"source_path": w.source_path, "fingerprint_new": version},
                )
            )
            count += 1
        return count

    def promote_if_done(
        self,
        res: ManifestResource,
        repo: Repository,
        repository_def: dg.RepositoryDefinition,
        instance: dg.DagsterInstance,
        pending: str,
    ) -> str:
        decision, planned, changes = self.decide(res, repo, repository_def, instance, pending)
        if decision.action != "promote":
            return f"not promoted yet: {decision.message}"
        return _promote(repo, pending, decision, changes, planned)

    # -- the tick -------------------------------------------------------------------------

    def tick(
        self,
        context: Evaluation,
        *,
        schedule: str | None = None,
        rehash_all: bool = False,
    ) -> dg.SkipReason | list[dg.RunRequest]:
        """One evaluation. A lock held by another process (or a lost compare-and-swap) is a
        skip to retry next tick; any other engine error fails the tick with its message."""
        try:
            return self._tick(context, schedule or self.schedule_name, rehash_all=rehash_all)
        except ManifestError as exc:
            if not exc.retryable:
                raise
            context.log.info(f"store busy, retrying next tick: {exc}")
            return dg.SkipReason(f"retrying next tick: {exc}")

    def _tick(
        self, context: Evaluation, schedule: str, *, rehash_all: bool
    ) -> dg.SkipReason | list[dg.RunRequest]:
        res: ManifestResource = getattr(context.resources, self.resource_key)
        repo = res.repository()
        repository_def = context.repository_def
        assert repository_def is not None  # the daemon and build_*_context give one
        graph = repository_def.asset_graph
        instance = context.instance
        log = context.log
        previewed = _is_preview(context)
        now = datetime.datetime.now(datetime.UTC)
        # A preview ("Preview tick result" in the UI) evaluates at a time the dialog picks,
        # often past: record when it really happened.
        scheduled = getattr(context, "scheduled_execution_time", None)  # a sensor has none
        when = now if previewed or scheduled is None else scheduled
        tick = f"{schedule}@{when.astimezone(datetime.UTC).isoformat()}"
        reason_prefix = (
            f"previewed by {schedule} at {now:%Y-%m-%dT%H:%M:%SZ} (no run launched; the next "
            "tick requests it)"
            if previewed
            else tick
        )
        pending = repo.find_ref(REF_PENDING)
        if pending is not None:
            decision, planned, changes = self.decide(
                res, repo, repository_def, instance, pending, tick=tick
            )
            log.info(f"pending {pending[:12]}: {decision.action}: {decision.message}")
            if decision.action == "promote":
                _promote(repo, pending, decision, changes, planned)
            elif decision.action == "abandon":
                succeeded = self.succeeded(instance, pending, planned)
                done, done_own = planning.progress(planned, changes, succeeded)
                repo.abandon(
                    pending,
                    reason=f"superseded: {decision.message}",
                    done=done,
                    done_own=done_own,
                )
                left = [p for p in changes.paths if p not in done]
                log.info(
                    "its unfinished paths are carried into the next request"
                    + (f": {T.describe_paths(left, 20)}" if left else "")
                    + (
                        f"; already processed, not requested again: {T.describe_paths(done, 20)}"
                        if done
                        else ""
                    )
                )
            elif decision.action == "request":
                self.sync_partitions(instance, planned)
                requests = self.run_requests(
                    repo,
                    instance,
                    graph,
                    pending,
                    changes,
                    planned,
                    decision.batches,
                    decision.attempt,
                    log,
                )
                self._log_requests(log, requests)
                return requests
            elif decision.action == "give_up":
                paths = sorted(
                    {p for b in decision.batches for p in planned.batches[b - 1].processed()}
                )
                message = f"gave up processing {T.describe_paths(paths, 20)}: {decision.message}"
                failure = repo.find_failure()
                if failure is None or failure.runs != decision.runs:
                    repo.record_failure(pending, decision.runs, message)
                log.error(message)
                # A failed tick (red in the schedule's tick history, the message on it), on
                # every tick until the data is fixed or `last` is rolled back: never grey.
                raise GaveUpError(message)
            else:
                return dg.SkipReason(self._waiting_message(decision, changes))
        started_ns = time.monotonic_ns()
        result = repo.begin(
            rehash_all=rehash_all,
            labels={LABEL_TICK: tick, LABEL_MODE: self.asset_mode},
            reason_prefix=reason_prefix,
        )
        log.info(
            f"scanned {res.root_location()} in {(time.monotonic_ns() - started_ns) / 1e9:.2f}s: "
            f"{result.message}"
        )
        for problem in result.problems:
            log.warning(f"scan problem: {problem}")
        if result.outcome == "baseline":
            assert result.snapshot is not None
            parts = self.register_all(repo, repository_def, instance, result.snapshot)
            versions = (
                self.record_versions(
                    repo, repository_def, instance, result.snapshot, only_missing=False
                )
                if self.observe
                else 0
            )
            extra = f"; registered {parts} file partitions" if parts else ""
            extra += f"; recorded the data version of {versions} sources" if versions else ""
            return dg.SkipReason(result.message + extra)
        switched = self._mode_switch(repo, repository_def, instance, result.last, log)
        if result.last is not None:
            registered = self.register_all(
                repo, repository_def, instance, result.last, only_empty=True
            )
            if registered:
                log.info(f"registered {registered} file partitions found in last")
        if result.outcome != "started" or result.snapshot is None:
            settling = (
                f"; waiting for {escape_path(result.unstable[0])}"
                + (f" and {len(result.unstable) - 1} more" if len(result.unstable) > 1 else "")
                + f" to settle ({res.cooldown_sec:g}s without writes)"
                if result.unstable
                else ""
            )
            base = "no changes since last" if result.outcome == "unchanged" else result.message
            return dg.SkipReason(base + settling + switched)
        changes = result.changes
        planned = self.plan(res, repository_def, changes)
        log.info(
            f"changed under {res.root_location()}: {len(changes.paths)} path(s): "
            + T.describe_paths(changes.paths, 20)
        )
        for path, keys in planned.by_path.items():
            log.info(f"  {escape_path(path)} -> {', '.join(k.to_user_string() for k in keys)}")
        if not planned.batches:
            self.sync_partitions(instance, planned)
            processed = [p for p in changes.paths if p not in planned.ignored]
            what = (f"ignored {T.describe_paths(planned.ignored)}" if planned.ignored else "") + (
                f"{'; ' if planned.ignored else ''}already processed {T.describe_paths(processed)}"
                if processed
                else ""
            )
            repo.promote(result.snapshot, reason=f"no run needed: {what}")
            message = f"nothing to run, so last advanced without a run: {what}"
            if planned.gone_partitions:
                message = "removed file partitions deleted; " + message
            log.info(message)
            return dg.SkipReason(message)
        if planned.ignored:
            log.info(f"not watched (no run): {T.describe_paths(planned.ignored, 20)}")
        self.sync_partitions(instance, planned)
        first = [b.number for b in planned.batches if not b.after]
        requests = self.run_requests(
            repo, instance, graph, result.snapshot, changes, planned, first, 1, log
        )
        self._log_requests(log, requests)
        waiting = len(planned.batches) - len(first)
        if waiting:
            log.info(f"{waiting} batch(es) follow once these succeed (fan-in downstream)")
        return requests

    # -- wording --------------------------------------------------------------------------

    def _log_requests(self, log: logging.Logger, requests: Sequence[dg.RunRequest]) -> None:
        for r in requests:
            keys = ", ".join(k.to_user_string() for k in r.asset_selection or [])
            part = f" partition {r.partition_key}" if r.partition_key else ""
            log.info(f"requesting run {r.run_key}{part}: {keys}")

    def _waiting_message(self, decision: Decision, changes: ChangeSet) -> str:
        what = T.describe_paths(changes.paths)
        message = f"processing {what}: {decision.message}"
        if decision.retry_in_sec is not None:
            until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=decision.retry_in_sec
            )
            message += f"; waiting until {until:%H:%M:%S} UTC at most"
        return message

    def _mode_switch(
        self,
        repo: Repository,
        repository_def: dg.RepositoryDefinition,
        instance: dg.DagsterInstance,
        last: str | None,
        log: logging.Logger,
    ) -> str:
        """``last`` was processed in the other asset mode: say so, and in observe mode record
        the current data version of every source that has none (so nothing is blocked)."""
        if last is None:
            return ""
        previous = repo.read_snapshot(last).label(LABEL_MODE)
        if previous is None or previous == self.asset_mode:
            return ""
        recorded = 0
        if self.observe:
            recorded = self.record_versions(repo, repository_def, instance, last, only_missing=True)
        message = (
            f"; last was processed in {previous} mode, this tick runs in {self.asset_mode} "
            f"mode (recorded {recorded} source data versions); the next change is processed "
            f"the {self.asset_mode} way"
        )
        log.warning(message[2:])
        return message


class GaveUpError(ManifestError):
    """The schedule stopped retrying a batch: the tick fails, naming the files."""


def _promote(
    repo: Repository,
    pending: str,
    decision: Decision,
    changes: ChangeSet,
    planned: planning.Plan,
) -> str:
    """Promote, saying in the reflog what the runs processed (requeued paths included), what
    earlier runs had processed already, and what nothing watches."""

    def listed(paths: Sequence[str], kind: bool = True) -> str:
        shown = [f"{escape_path(p)} ({changes.kind(p)})" if kind else escape_path(p) for p in paths]
        more = len(shown) - 5
        return ", ".join(shown[:5]) + (f" and {more} more" if more > 0 else "")

    ignored = set(planned.ignored)
    earlier = [p for p in changes.done if p not in ignored]
    ran = [p for p in changes.paths if p not in ignored and p not in changes.done]
    runs = ", ".join(r[:8] for r in decision.runs)
    reason = f"promoted after run{'s' if len(decision.runs) > 1 else ''} {runs}: {listed(ran)}"
    if earlier:
        reason += f"; processed by earlier runs: {listed(earlier, kind=False)}"
    if ignored:
        reason += f"; not watched: {listed(sorted(ignored), kind=False)}"
    return repo.promote(pending, reason=reason, runs=decision.runs).message


def _is_preview(context: Evaluation) -> bool:
    """A "Preview tick result" in the UI: Dagster names its logs by the scheduled time
    (``YYYYmmdd_HHMMSS``); the daemon names a tick's logs by the tick's id (digits). A
    sensor's evaluation is never taken for one (it has no scheduled time)."""
    if not isinstance(context, dg.ScheduleEvaluationContext):
        return False
    key = context.log_key
    return key is not None and len(key) > 0 and not str(key[-1]).isdigit()


def _is_later_tick(taken_by: str, tick: str) -> bool:
    """Same schedule, an earlier scheduled time (ISO UTC strings compare in order)."""
    name, _, when = taken_by.rpartition("@")
    my_name, _, my_when = tick.rpartition("@")
    return bool(name) and name == my_name and when < my_when
