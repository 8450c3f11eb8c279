"""A code location for the real-daemon test: one observed source whose eager downstream
fails once (while ``$FLAKY_DIR/fail_next`` exists), to show Dagster's run retries
re-executing the automation run after the sensor's part already succeeded."""

from pathlib import Path

import dagster as dg

from dagster_glue import ManifestResource, change_detection


@dg.multi_observable_source_asset(
    specs=[dg.AssetSpec("readings", metadata={"source_path": "readings.csv"})]
)
def readings(context: dg.AssetExecutionContext, flaky_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    yield from flaky_manifest.observe(context)


@dg.asset(deps=["readings"], automation_condition=dg.AutomationCondition.eager())
def summary(context: dg.AssetExecutionContext, flaky_manifest: ManifestResource) -> int:
    marker = Path(dg.EnvVar("FLAKY_DIR").get_value() or ".") / "fail_next"
    if marker.exists():
        marker.unlink()
        raise RuntimeError("failing once on purpose (the test's marker file)")
    return len(flaky_manifest.path("readings.csv").read_text().splitlines())


defs = dg.Definitions.merge(
    # steps in the run's process (the landing project's daemon test keeps a process per step)
    dg.Definitions(assets=[readings, summary], executor=dg.in_process_executor),
    change_detection(
        root=dg.EnvVar("FLAKY_ROOT"),
        state_dir=dg.EnvVar("FLAKY_STORE"),
        name="flaky",
        asset_mode="observe",
        trigger="sensor",
        minimum_interval_seconds=4,
        enabled=True,
        cooldown_sec=0,
    ),
)
