"""The sample pipeline's assets, in the two shapes ``RAW_ASSET_MODE`` chooses between.

* ``materialize``: each raw file is a loader ``@asset`` (value: the CSV's rows); derived
  assets take them as inputs. The schedule runs ``raw_reload_job`` for the changed raw assets
  plus everything downstream.
* ``observe``: the raw files are observable source assets; ``observe_raw_sources`` records a
  new data version (the file's fingerprint) for exactly the changed files, and derived assets
  recompute through ``AutomationCondition.eager()``.

Each raw asset declares its file under the metadata key ``source_path`` (relative to the raw
root); the path -> asset key mapping is read back from these definitions.

Not observed, by design: concept description ``.txt`` files and template ``.txt`` files. They
are read when a derived asset recomputes, but editing one alone triggers nothing.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_glue import sample
from manifest import load_config
from manifest.model import TreeEntry

SOURCE_PATH = "source_path"
MISSING_VERSION = "missing"

RAW_FILES: dict[str, str] = {
    "raw_concepts": sample.CONCEPTS_CSV,
    "raw_link_templates": sample.LINK_TEMPLATES_CSV,
    "raw_essay_templates": sample.ESSAY_TEMPLATES_CSV,
    "raw_evaluation_templates": sample.EVALUATION_TEMPLATES_CSV,
}
RAW_GROUP = "raw"
DERIVED_GROUP = "derived"


def raw_root() -> Path:
    """The data root, resolved by the same rule as the CLI (``RAW_DATA_DIR``...)."""
    return load_config().root


def _raw_spec(name: str, rel: str, **kwargs: Any) -> dg.AssetSpec:
    return dg.AssetSpec(
        name,
        group_name=RAW_GROUP,
        metadata={SOURCE_PATH: rel},
        description=f"The raw file {rel}.",
        **kwargs,
    )


def _rows_metadata(rel: str, rows: list[sample.Row]) -> dict[str, Any]:
    return {"path": rel, "rows": len(rows), "missing": not rows and not (raw_root() / rel).exists()}


# -- materialize path -------------------------------------------------------------------------


def _loader(name: str, rel: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name=RAW_GROUP,
        metadata={SOURCE_PATH: rel},
        description=f"Rows of the raw file {rel} (empty if the file was removed).",
    )
    def load(context: dg.AssetExecutionContext) -> dg.Output[list[sample.Row]]:
        rows = sample.load_csv(raw_root(), rel)
        meta = _rows_metadata(rel, rows)
        if meta["missing"]:
            context.log.warning(f"{rel} does not exist under {raw_root()}: empty table")
        return dg.Output(rows, metadata=meta)

    return load


def materialize_assets() -> list[dg.AssetsDefinition]:
    loaders = [_loader(name, rel) for name, rel in RAW_FILES.items()]

    @dg.asset(group_name=DERIVED_GROUP)
    def concepts(raw_concepts: list[sample.Row]) -> list[dict[str, Any]]:
        """One record per concept, with its description text."""
        return sample.build_concepts(raw_root(), raw_concepts)

    @dg.asset(group_name=DERIVED_GROUP)
    def concept_pairs(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every unordered pair of concepts."""
        return sample.build_concept_pairs(concepts)

    @dg.asset(group_name=DERIVED_GROUP)
    def link_generation_tasks(
        concept_pairs: list[dict[str, Any]], raw_link_templates: list[sample.Row]
    ) -> list[dict[str, Any]]:
        """Concept pairs x active link templates."""
        return sample.build_link_tasks(raw_root(), concept_pairs, raw_link_templates)

    @dg.asset(group_name=DERIVED_GROUP)
    def essay_generation_tasks(
        concept_pairs: list[dict[str, Any]],
        link_generation_tasks: list[dict[str, Any]],
        raw_essay_templates: list[sample.Row],
    ) -> list[dict[str, Any]]:
        """Concept pairs x active essay templates, listing the pair's link tasks."""
        return sample.build_essay_tasks(
            raw_root(), concept_pairs, link_generation_tasks, raw_essay_templates
        )

    @dg.asset(group_name=DERIVED_GROUP)
    def evaluation_tasks(
        essay_generation_tasks: list[dict[str, Any]],
        raw_evaluation_templates: list[sample.Row],
    ) -> list[dict[str, Any]]:
        """Essay tasks x active evaluation templates."""
        return sample.build_evaluation_tasks(
            raw_root(), essay_generation_tasks, raw_evaluation_templates
        )

    return [
        *loaders,
        concepts,
        concept_pairs,
        link_generation_tasks,
        essay_generation_tasks,
        evaluation_tasks,
    ]


# -- observe path -----------------------------------------------------------------------------


def observation_version(entry: TreeEntry | None) -> str:
    """The data version of a raw file: its manifest fingerprint, or ``missing``."""
    return entry.fingerprint if entry is not None else MISSING_VERSION


def _observe_entries(context: dg.AssetExecutionContext) -> dict[str, TreeEntry | None]:
    """The entries of the snapshot this run processes (tag ``raw_fingerprint``), or of a
    fresh snapshot when the run was launched by hand."""
    from manifest import Repository

    repo = Repository(load_config())
    snapshot = context.run.tags.get("raw_fingerprint")
    if not snapshot:
        snapshot, _ = repo.snapshot(message=f"observation run {context.run_id}")
    return {rel: repo.find_file(snapshot, rel) for rel in RAW_FILES.values()}


def observe_assets() -> list[dg.AssetsDefinition]:
    eager = dg.AutomationCondition.eager()
    specs = [_raw_spec(name, rel) for name, rel in RAW_FILES.items()]

    @dg.multi_observable_source_asset(specs=specs, can_subset=True, name="raw_sources")
    def raw_sources(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        entries = _observe_entries(context)
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            rel = context.assets_def.specs_by_key[key].metadata[SOURCE_PATH]
            entry = entries[rel]
            version = observation_version(entry)
            yield dg.ObserveResult(
                asset_key=key,
                data_version=dg.DataVersion(version),
                metadata={
                    "path": rel,
                    "size": entry.size if entry is not None else 0,
                    "mtime_ns": entry.mtime_ns if entry is not None else 0,
                    "fingerprint": version,
                },
            )

    def read(rel: str) -> list[sample.Row]:
        return sample.load_csv(raw_root(), rel)

    @dg.asset(group_name=DERIVED_GROUP, deps=["raw_concepts"], automation_condition=eager)
    def concepts() -> list[dict[str, Any]]:
        """One record per concept, with its description text."""
        return sample.build_concepts(raw_root(), read(sample.CONCEPTS_CSV))

    @dg.asset(group_name=DERIVED_GROUP, automation_condition=eager)
    def concept_pairs(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every unordered pair of concepts."""
        return sample.build_concept_pairs(concepts)

    @dg.asset(group_name=DERIVED_GROUP, deps=["raw_link_templates"], automation_condition=eager)
    def link_generation_tasks(concept_pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Concept pairs x active link templates."""
        return sample.build_link_tasks(raw_root(), concept_pairs, read(sample.LINK_TEMPLATES_CSV))

    @dg.asset(group_name=DERIVED_GROUP, deps=["raw_essay_templates"], automation_condition=eager)
    def essay_generation_tasks(
        concept_pairs: list[dict[str, Any]], link_generation_tasks: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Concept pairs x active essay templates, listing the pair's link tasks."""
        return sample.build_essay_tasks(
            raw_root(), concept_pairs, link_generation_tasks, read(sample.ESSAY_TEMPLATES_CSV)
        )

    @dg.asset(
        group_name=DERIVED_GROUP, deps=["raw_evaluation_templates"], automation_condition=eager
    )
    def evaluation_tasks(essay_generation_tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Essay tasks x active evaluation templates."""
        return sample.build_evaluation_tasks(
            raw_root(), essay_generation_tasks, read(sample.EVALUATION_TEMPLATES_CSV)
        )

    return [
        raw_sources,
        concepts,
        concept_pairs,
        link_generation_tasks,
        essay_generation_tasks,
        evaluation_tasks,
    ]
