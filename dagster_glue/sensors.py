"""The promotion sensor (promote ``pending`` as soon as its last batch succeeds) and, in
observe mode, the automation sensor that recomputes what the observations made stale."""

from __future__ import annotations

import inspect

import dagster as dg

from dagster_glue import tags as T
from dagster_glue.resource import ManifestResource
from dagster_glue.tick import Glue
from manifest import REF_PENDING, ManifestError


def promotion_sensor(glue: Glue, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    def promote(context: dg.RunStatusSensorContext, **resources: ManifestResource) -> dg.SkipReason:
        snapshot = T.snapshot_of(glue.name, context.dagster_run.tags)
        if not snapshot:
            return dg.SkipReason(f"run was not started by {glue.schedule_name}")
        res = resources[glue.resource_key]
        try:
            repo = res.repository()  # one for the whole promotion
            if repo.find_ref(REF_PENDING) != snapshot:
                return dg.SkipReason(f"{snapshot[:12]} is no longer pending")
            repository_def = context.repository_def
            assert repository_def is not None
            message = glue.promote_if_done(res, repo, repository_def, context.instance, snapshot)
        except ManifestError as exc:
            if not exc.retryable:
                raise
            message = f"store busy, the next tick promotes: {exc}"
        context.log.info(message)
        return dg.SkipReason(message)

    # Run status sensors receive resources as parameters named by their key; the key
    # depends on the watched root's name, so the signature says which one.
    promote.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "context",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=dg.RunStatusSensorContext,
            ),
            inspect.Parameter(
                glue.resource_key, inspect.Parameter.KEYWORD_ONLY, annotation=ManifestResource
            ),
        ],
        return_annotation=dg.SkipReason,
    )
    return dg.run_status_sensor(
        name=f"{glue.name}_promotion_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Promote {glue.name}'s pending snapshot to last as soon as its last "
        "outstanding batch succeeds (the schedule's next tick would do it too).",
    )(promote)


def automation_sensor(glue: Glue) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        f"{glue.name}_automation_sensor",
        target=_target(glue.selection),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Recompute what the observations of changed raw files made stale.",
    )


def _target(selection: dg.AssetSelection | str | None) -> dg.AssetSelection:
    """What the watched sources feed: all assets, or the selection and its downstream."""
    if selection is None:
        return dg.AssetSelection.all()
    if isinstance(selection, str):
        selection = dg.AssetSelection.from_string(selection, include_sources=True)
    return selection.downstream()
