"""``defs``: the sample pipeline, its job, ``raw_schedule``, the nightly full-hash check and
the promotion sensor. ``dagster dev`` finds it through ``[tool.dagster]`` in pyproject.toml."""

import dagster as dg

from dagster_glue.assets import RAW_FILES, materialize_assets, observe_assets
from dagster_glue.schedule import TAG_FINGERPRINT, RawGlue
from dagster_glue.settings import GlueSettings, load_glue_settings
from manifest import Repository, load_config
from manifest.refs import REF_PENDING

RELOAD_JOB = "raw_reload_job"
OBSERVE_JOB = "observe_raw_sources"


def build(settings: GlueSettings | None = None) -> tuple[dg.Definitions, RawGlue]:
    settings = settings if settings is not None else load_glue_settings()
    observe = settings.asset_mode == "observe"
    assets = observe_assets() if observe else materialize_assets()
    if observe:
        job = dg.define_asset_job(
            OBSERVE_JOB,
            selection=dg.AssetSelection.assets(*RAW_FILES),
            description="Observe the changed raw files.",
        )
    else:
        job = dg.define_asset_job(
            RELOAD_JOB,
            selection=dg.AssetSelection.all(),
            description="Reload changed raw files and recompute "
            "downstream (the schedule selects the subset).",
        )
    glue = RawGlue(assets, job_name=job.name, settings=settings)
    status = (
        dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED
    )

    @dg.schedule(
        name="raw_schedule",
        cron_schedule=settings.cron,
        job=job,
        default_status=status,
        description="Scan data/1_raw and request one run for what changed.",
    )
    def raw_schedule(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
        return glue.tick(context)

    @dg.schedule(
        name="raw_full_hash_check",
        cron_schedule=settings.full_hash_cron,
        job=job,
        default_status=status,
        description="Re-hash every raw file, ignoring the stat cache, and request "
        "whatever content differs from last.",
    )
    def raw_full_hash_check(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.SkipReason | list[dg.RunRequest]:
        return glue.tick(context, rehash_all=True)

    @dg.run_status_sensor(
        name="raw_promotion_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Promote pending to last as soon as its last outstanding batch succeeds.",
    )
    def raw_promotion_sensor(context: dg.RunStatusSensorContext) -> dg.SkipReason | None:
        snapshot = context.dagster_run.tags.get(TAG_FINGERPRINT)
        if not snapshot:
            return dg.SkipReason("run was not started by raw_schedule")
        repo = Repository(load_config())
        if repo.find_ref(REF_PENDING) != snapshot:
            return dg.SkipReason(f"{snapshot[:12]} is no longer pending")
        return dg.SkipReason(glue.promote_if_done(repo, context.instance, snapshot))

    sensors: list[dg.SensorDefinition] = [raw_promotion_sensor]
    if observe:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "raw_automation_sensor",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
            )
        )
    defs = dg.Definitions(
        assets=assets, jobs=[job], schedules=[raw_schedule, raw_full_hash_check], sensors=sensors
    )
    return defs, glue


defs, glue = build()
