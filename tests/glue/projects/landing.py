"""A landing area watched by ``change_detection``, local or on a bucket (every asset reads
through the resource, never a local path): an exact file with a downstream asset, and one
file partition per event file (no fan-in, so one edit is one run). The daemon tests and
bench/sensor_latency.py load it; the environment sets the root (``LANDING_ROOT``), the
trigger (``LANDING_TRIGGER``: ``sensor`` or ``schedule``), the sensor's interval
(``LANDING_INTERVAL_SEC``), the cooldown (``LANDING_COOLDOWN_SEC``) and, for a bucket
root, the SQS queue its events go to (``LANDING_EVENTS_QUEUE``), and how long the exact
file's asset takes (``LANDING_RUN_SEC``, default 0: the daemon test makes its run outlast a
sensor interval, so that an evaluation meets it in flight). The store is the factory's
default, ``$DAGSTER_HOME/state/raw``."""

import os
import time

import dagster as dg

from dagster_glue import ManifestResource, change_detection

event_files = dg.DynamicPartitionsDefinition(name="event_files")


@dg.asset(group_name="raw", metadata={"source_path": "orders.csv"})
def orders(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    time.sleep(float(os.environ.get("LANDING_RUN_SEC", "0")))
    text = raw_manifest.read_text("orders.csv")
    meta = raw_manifest.source_metadata(context)
    return dg.MaterializeResult(metadata={**meta, "rows": len(text.splitlines()) - 1})


@dg.asset(deps=[orders])
def order_count(raw_manifest: ManifestResource) -> int:
    return len(raw_manifest.read_text("orders.csv").splitlines()) - 1


@dg.asset(
    group_name="raw",
    partitions_def=event_files,
    metadata={"source_path": "events/*.json"},
)
def events(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    rel = raw_manifest.source_file(context)
    size = len(raw_manifest.read_bytes(rel)) if rel in raw_manifest.list_files("events") else 0
    return dg.MaterializeResult(metadata={**raw_manifest.source_metadata(context), "bytes": size})


defs = dg.Definitions.merge(
    # steps in the run's process, or with LANDING_EXECUTOR=multiprocess (the daemon test)
    # Dagster's default, a process per step: the resource is set up again in each step's
    dg.Definitions(
        assets=[orders, order_count, events],
        executor=(
            None if os.environ.get("LANDING_EXECUTOR") == "multiprocess" else dg.in_process_executor
        ),
    ),
    change_detection(
        root=dg.EnvVar("LANDING_ROOT"),
        name="raw",
        selection="group:raw",
        trigger=os.environ.get("LANDING_TRIGGER", "sensor"),
        minimum_interval_seconds=int(os.environ.get("LANDING_INTERVAL_SEC", "10")),
        cron="* * * * *",
        cooldown_sec=float(os.environ.get("LANDING_COOLDOWN_SEC", "0")),
        events_queue=os.environ.get("LANDING_EVENTS_QUEUE") or None,
        enabled=True,
        max_attempts=1,
    ),
)
