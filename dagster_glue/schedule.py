"""The thin orchestration face: turn the engine's change sets into Dagster requests.

Each tick: reconcile an in-flight ``pending`` with its runs (``manifest.reconcile`` decides),
then ``begin``; map changed files to raw asset keys; return one ``RunRequest`` per batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import dagster as dg
from blake3 import blake3

from dagster_glue.assets import SOURCE_PATH, observation_version
from dagster_glue.settings import GlueSettings
from manifest import ChangeSet, ManifestError, Repository, load_config
from manifest.reconcile import Decision, RunInfo, RunState, reconcile
from manifest.refs import REF_PENDING

TAG_TRIGGER: Final = "trigger"
TRIGGER_VALUE: Final = "raw_schedule"
TAG_FINGERPRINT: Final = "raw_fingerprint"
TAG_BATCH: Final = "raw_batch"
TAG_ATTEMPT: Final = "raw_attempt"
TAG_ADDED: Final = "raw_added"
TAG_MODIFIED: Final = "raw_modified"
TAG_REMOVED: Final = "raw_removed"
TAG_ANCESTORS: Final = "raw_added_ancestors"

_SUCCESS = {dg.DagsterRunStatus.SUCCESS}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class RawGlue:
    """What the schedule needs to know about the definitions: the path -> key mapping (read
    from each raw asset's ``source_path`` metadata), the asset graph, the job, the mode."""

    def __init__(
        self,
        assets: Sequence[dg.AssetsDefinition],
        *,
        job_name: str,
        settings: GlueSettings,
    ) -> None:
        self.settings = settings
        self.job_name = job_name
        self.observe = settings.asset_mode == "observe"
        self.asset_graph = dg.Definitions(assets=list(assets)).resolve_asset_graph()
        self.key_by_path: dict[str, dg.AssetKey] = {}
        for assets_def in assets:
            for spec in assets_def.specs:
                source = (spec.metadata or {}).get(SOURCE_PATH)
                if source is not None:
                    self.key_by_path[str(source)] = spec.key

    def path_to_asset_key(self, rel_path: str) -> dg.AssetKey | None:
        return self.key_by_path.get(rel_path)

    # -- planning -------------------------------------------------------------------------

    def plan(self, changes: ChangeSet) -> tuple[list[list[dg.AssetKey]], list[str]]:
        """Batches of changed raw asset keys, and the changed paths that map to no asset."""
        keys: set[dg.AssetKey] = set()
        ignored: list[str] = []
        for path in changes.paths:
            key = self.path_to_asset_key(path)
            if key is None:
                ignored.append(path)
            else:
                keys.add(key)
        ordered = sorted(keys, key=lambda k: k.to_user_string())
        size = self.settings.batch_size
        return [ordered[i : i + size] for i in range(0, len(ordered), size)], ignored

    def selection(
        self, raw_keys: Sequence[dg.AssetKey], instance: dg.DagsterInstance
    ) -> tuple[list[dg.AssetKey], list[dg.AssetKey]]:
        """Materialize path: the raw keys plus downstream, plus any unselected ancestor that
        was never materialized (else the run fails loading its input). Observe path: just
        the raw keys. Returns (selection, ancestors added)."""
        if self.observe:
            return list(raw_keys), []
        selected = set(dg.AssetSelection.assets(*raw_keys).downstream().resolve(self.asset_graph))
        added: list[dg.AssetKey] = []
        stack = list(selected)
        while stack:
            key = stack.pop()
            for parent in self.asset_graph.get(key).parent_keys:
                if parent in selected or not self.asset_graph.get(parent).is_materializable:
                    continue
                if instance.get_latest_materialization_event(parent) is None:
                    selected.add(parent)
                    added.append(parent)
                    stack.append(parent)
        by_name = lambda k: k.to_user_string()  # noqa: E731
        return sorted(selected, key=by_name), sorted(added, key=by_name)

    def run_requests(
        self,
        repo: Repository,
        instance: dg.DagsterInstance,
        pending: str,
        changes: ChangeSet,
        batches: Sequence[int] | None = None,
        attempt: int = 1,
    ) -> list[dg.RunRequest]:
        planned, _ = self.plan(changes)
        wanted = batches if batches is not None else range(1, len(planned) + 1)
        fingerprints = "\n".join(
            f"{path}\t{observation_version(repo.find_file(pending, path))}"
            for path in changes.paths
        )
        digest = blake3(fingerprints.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        requests = []
        for batch in wanted:
            selection, ancestors = self.selection(planned[batch - 1], instance)
            tags = {
                TAG_TRIGGER: TRIGGER_VALUE,
                TAG_FINGERPRINT: pending,
                TAG_BATCH: f"{batch}/{len(planned)}",
                TAG_ATTEMPT: str(attempt),
                TAG_ADDED: str(len(changes.added)),
                TAG_MODIFIED: str(len(changes.modified)),
                TAG_REMOVED: str(len(changes.removed)),
            }
            if ancestors:
                tags[TAG_ANCESTORS] = ",".join(k.to_user_string() for k in ancestors)
            run_key = f"{digest}-b{batch}" + (f"-a{attempt}" if attempt > 1 else "")
            requests.append(
                dg.RunRequest(
                    run_key=run_key, job_name=self.job_name, asset_selection=selection, tags=tags
                )
            )
        return requests

    # -- reconciling ----------------------------------------------------------------------

    def decide(self, repo: Repository, instance: dg.DagsterInstance, pending: str) -> Decision:
        last = repo.find_ref("last")
        planned, _ = self.plan(repo.diff_snapshots(last, pending))
        runs_by_batch: dict[int, list[RunInfo]] = {}
        runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_FINGERPRINT: pending}))
        for run in reversed(list(runs)):  # oldest first
            batch_tag = run.tags.get(TAG_BATCH, "1/1")
            try:
                batch = int(batch_tag.split("/")[0])
            except ValueError:
                continue
            state: RunState = (
                "success"
                if run.status in _SUCCESS
                else "failure"
                if run.status in _FAILED
                else "in_progress"
            )
            runs_by_batch.setdefault(batch, []).append(RunInfo(run.run_id, state))
        moves = repo.log(REF_PENDING, 1)
        age = (time.time_ns() - moves[0].time_ns) / 1e9 if moves else float("inf")
        return reconcile(
            max(len(planned), 1),
            runs_by_batch,
            pending_age_sec=age,
            grace_sec=self.settings.run_grace_sec,
            max_attempts=self.settings.max_attempts,
            tree_changed=lambda: bool(repo.status(against=pending).changes),
        )

    def promote_if_done(self, repo: Repository, instance: dg.DagsterInstance, pending: str) -> str:
        decision = self.decide(repo, instance, pending)
        if decision.action != "promote":
            return decision.message
        result = repo.promote(pending, reason=f"promoted after run {', '.join(decision.runs)}")
        return result.message

    # -- the tick -------------------------------------------------------------------------

    def tick(
        self, context: dg.ScheduleEvaluationContext, *, rehash_all: bool = False
    ) -> dg.SkipReason | list[dg.RunRequest]:
        """One evaluation. A lock held by another process (or a lost compare-and-swap) is a
        skip to retry next tick; any other engine error fails the tick with its message."""
        try:
            return self._tick(context, rehash_all=rehash_all)
        except ManifestError as exc:
            if not exc.retryable:
                raise
            return dg.SkipReason(f"retrying next tick: {exc}")

    def _tick(
        self, context: dg.ScheduleEvaluationContext, *, rehash_all: bool
    ) -> dg.SkipReason | list[dg.RunRequest]:
        repo = Repository(load_config())
        instance = context.instance
        pending = repo.find_ref(REF_PENDING)
        if pending is not None:
            decision = self.decide(repo, instance, pending)
            if decision.action == "promote":
                repo.promote(pending, reason=f"promoted after run {', '.join(decision.runs)}")
            elif decision.action == "abandon":
                repo.abandon(pending, reason=f"superseded: {decision.message}")
            elif decision.action == "request":
                changes = repo.diff_snapshots(repo.find_ref("last"), pending)
                return self.run_requests(
                    repo, instance, pending, changes, decision.batches, decision.attempt
                )
            else:
                return dg.SkipReason(f"pending {pending[:12]}: {decision.message}")
        result = repo.begin(rehash_all=rehash_all)
        if result.outcome == "baseline":
            if self.observe and result.snapshot:
                self.record_versions(repo, instance, result.snapshot)
            return dg.SkipReason(result.message)
        if result.outcome != "started" or result.snapshot is None:
            return dg.SkipReason(result.message)
        batches, ignored = self.plan(result.changes)
        if not batches:
            repo.promote(
                result.snapshot,
                reason=f"no observed file changed; ignored {', '.join(ignored)}",
            )
            return dg.SkipReason(
                f"changes map to no asset, last advanced without a run; ignored: "
                f"{', '.join(ignored)}"
            )
        return self.run_requests(repo, instance, result.snapshot, result.changes)

    def record_versions(
        self, repo: Repository, instance: dg.DagsterInstance, snapshot: str
    ) -> None:
        """Observe path baseline: a runless observation per raw file, carrying its version,
        so downstream is not blocked and the first real change is the only change."""
        from dagster._core.definitions.data_version import DATA_VERSION_TAG

        for path, key in sorted(self.key_by_path.items()):
            version = observation_version(repo.find_file(snapshot, path))
            instance.report_runless_asset_event(
                dg.AssetObservation(
                    asset_key=key,
                    tags={DATA_VERSION_TAG: version},
                    metadata={"path": path, "fingerprint": version, "baseline": True},
                )
            )


def path_to_asset_key(rel_path: str) -> dg.AssetKey | None:
    """The raw asset key a file under the raw root maps to, from the sample definitions."""
    from dagster_glue.definitions import glue

    return glue.path_to_asset_key(rel_path)
