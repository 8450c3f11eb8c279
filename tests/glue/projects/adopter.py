"""The adopter's project of issue 21, built from docs/dagster.md alone: an exact file with two
downstream assets, a glob, per-file partitions with a fan-in, files nothing watches, and
excluded ``*.tmp`` files. Any asset whose file holds ``FAIL`` fails its run. The store is the
factory's default, ``$DAGSTER_HOME/state/raw``; the root is ``$ADOPTER_ROOT``."""

import os

import dagster as dg

from dagster_glue import ManifestResource, change_detection

note_files = dg.DynamicPartitionsDefinition(name="note_files")


def _read(raw_manifest: ManifestResource, rel: str) -> str:
    text = raw_manifest.read_text(rel)
    if "FAIL" in text:
        raise RuntimeError(f"{rel} holds FAIL")
    return text


@dg.asset(group_name="raw", metadata={"source_path": "customers.csv"})
def customers(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    text = _read(raw_manifest, "customers.csv")
    meta = raw_manifest.source_metadata(context)
    return dg.MaterializeResult(metadata={**meta, "rows": len(text.splitlines()) - 1})


@dg.asset(deps=[customers])
def customer_report(raw_manifest: ManifestResource) -> int:
    return len(_read(raw_manifest, "customers.csv").splitlines()) - 1


@dg.asset(deps=[customers])
def customer_names(raw_manifest: ManifestResource) -> list[str]:
    return [line.split(",")[1] for line in _read(raw_manifest, "customers.csv").splitlines()[1:]]


@dg.asset(group_name="raw", metadata={"source_path": "prices/*.csv"})
def prices(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    for rel in raw_manifest.list_files("prices"):
        _read(raw_manifest, rel)
    return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))


@dg.asset(
    group_name="raw",
    partitions_def=note_files,
    metadata={"source_path": "notes/**/*.txt"},
)
def notes(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):  # type: ignore[no-untyped-def]
    rel = raw_manifest.source_file(context)
    if raw_manifest.path(rel).exists():
        _read(raw_manifest, rel)
    return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))


@dg.asset(partitions_def=note_files, deps=[notes])
def note_words(context: dg.AssetExecutionContext, raw_manifest: ManifestResource) -> int:
    path = raw_manifest.path(raw_manifest.source_file(context))
    return len(path.read_text().split()) if path.exists() else 0


@dg.asset(deps=[note_words])
def notes_digest(raw_manifest: ManifestResource) -> int:
    return len(raw_manifest.list_files("notes"))


# Dagster's default executor (a process per step under a daemon), or with
# ADOPTER_EXECUTOR=in_process (the daemon tests) every step in the run's process
defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[
            customers,
            customer_report,
            customer_names,
            prices,
            notes,
            note_words,
            notes_digest,
        ],
        executor=(
            dg.in_process_executor if os.environ.get("ADOPTER_EXECUTOR") == "in_process" else None
        ),
    ),
    change_detection(
        root=dg.EnvVar("ADOPTER_ROOT"),
        name="raw",
        selection="group:raw",
        exclude=["**/*.tmp"],
        cron="* * * * *",
        enabled=True,
        cooldown_sec=0,
        max_attempts=int(os.environ.get("ADOPTER_MAX_ATTEMPTS", "2")),
    ),
)
