"""The sample pipeline's assets: a consumer of the public API like any user's project.

Raw files declare themselves with ``source_path`` metadata; derived assets are written once
and read the raw files through the ``raw_manifest`` resource, so the same definitions serve
both asset modes:

* ``materialize``: each raw CSV is an ``@asset`` that validates the file and records its
  source; the schedule runs ``raw_reload_job`` for the changed ones plus downstream.
* ``observe``: the raw CSVs are observable sources; ``observe_raw_sources`` records a new data
  version for exactly the changed files, and derived assets recompute through
  ``AutomationCondition.eager()``.

Per-file partitions (materialize mode): every ``feedback/*.txt`` is a partition of
``raw_feedback`` and ``feedback_words``; ``feedback_digest`` fans them in.

Not watched, by design: concept description and template ``.txt`` files. They are read when
a derived asset recomputes, but editing one alone triggers nothing.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dagster_glue import SOURCE_PATH, ManifestResource
from dagster_glue.sample import pipeline as S

RAW_FILES: dict[str, str] = {
    "raw_concepts": S.CONCEPTS_CSV,
    "raw_link_templates": S.LINK_TEMPLATES_CSV,
    "raw_essay_templates": S.ESSAY_TEMPLATES_CSV,
    "raw_evaluation_templates": S.EVALUATION_TEMPLATES_CSV,
}
RAW_GROUP = "raw"
DERIVED_GROUP = "derived"
FEEDBACK_PARTITIONS = "raw_feedback_files"


def _rows(rows: list[Any]) -> dict[str, Any]:
    return {"rows": dg.MetadataValue.int(len(rows))}


def _raw_loader(name: str, rel: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name=RAW_GROUP,
        metadata={SOURCE_PATH: rel},
        description=f"The raw file {rel}: validated, its rows counted.",
    )
    def load(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.MaterializeResult:
        rows = S.load_csv(raw_manifest.root_path(), rel)
        if not rows and not raw_manifest.path(rel).exists():
            context.log.warning(f"{raw_manifest.path(rel)} does not exist: empty table")
        return dg.MaterializeResult(
            metadata={**raw_manifest.source_metadata(context), **_rows(rows)}
        )

    return load


def _raw_sources() -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            name,
            group_name=RAW_GROUP,
            metadata={SOURCE_PATH: rel},
            description=f"The raw file {rel}.",
        )
        for name, rel in RAW_FILES.items()
    ]

    @dg.multi_observable_source_asset(specs=specs, can_subset=True, name="raw_sources")
    def raw_sources(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> Iterator[dg.ObserveResult]:
        yield from raw_manifest.observe(context)

    return raw_sources


def _derived(eager: bool) -> list[dg.AssetsDefinition]:
    auto = dg.AutomationCondition.eager() if eager else None

    def derived(**kwargs: Any) -> Any:
        return dg.asset(group_name=DERIVED_GROUP, automation_condition=auto, **kwargs)

    @derived(deps=["raw_concepts"])
    def concepts(raw_manifest: ManifestResource) -> dg.Output[list[dict[str, Any]]]:
        """One record per concept, with its description text."""
        root = raw_manifest.root_path()
        out = S.build_concepts(root, S.load_csv(root, S.CONCEPTS_CSV))
        return dg.Output(out, metadata=_rows(out))

    @derived()
    def concept_pairs(concepts: list[dict[str, Any]]) -> dg.Output[list[dict[str, Any]]]:
        """Every unordered pair of concepts."""
        out = S.build_concept_pairs(concepts)
        return dg.Output(out, metadata=_rows(out))

    @derived(deps=["raw_link_templates"])
    def link_generation_tasks(
        concept_pairs: list[dict[str, Any]], raw_manifest: ManifestResource
    ) -> dg.Output[list[dict[str, Any]]]:
        """Concept pairs x active link templates."""
        root = raw_manifest.root_path()
        out = S.build_link_tasks(root, concept_pairs, S.load_csv(root, S.LINK_TEMPLATES_CSV))
        return dg.Output(out, metadata=_rows(out))

    @derived(deps=["raw_essay_templates"])
    def essay_generation_tasks(
        concept_pairs: list[dict[str, Any]],
        link_generation_tasks: list[dict[str, Any]],
        raw_manifest: ManifestResource,
    ) -> dg.Output[list[dict[str, Any]]]:
        """Concept pairs x active essay templates, listing the pair's link tasks."""
        root = raw_manifest.root_path()
        templates = S.load_csv(root, S.ESSAY_TEMPLATES_CSV)
        out = S.build_essay_tasks(root, concept_pairs, link_generation_tasks, templates)
        return dg.Output(out, metadata=_rows(out))

    @derived(deps=["raw_evaluation_templates"])
    def evaluation_tasks(
        essay_generation_tasks: list[dict[str, Any]], raw_manifest: ManifestResource
    ) -> dg.Output[list[dict[str, Any]]]:
        """Essay tasks x active evaluation templates."""
        root = raw_manifest.root_path()
        templates = S.load_csv(root, S.EVALUATION_TEMPLATES_CSV)
        out = S.build_evaluation_tasks(root, essay_generation_tasks, templates)
        return dg.Output(out, metadata=_rows(out))

    return [
        concepts,
        concept_pairs,
        link_generation_tasks,
        essay_generation_tasks,
        evaluation_tasks,
    ]


def _feedback() -> list[dg.AssetsDefinition]:
    # One definition object per build: Dagster caches instance state on it.
    partitions = dg.DynamicPartitionsDefinition(name=FEEDBACK_PARTITIONS)

    @dg.asset(
        group_name=RAW_GROUP,
        partitions_def=partitions,
        metadata={SOURCE_PATH: S.FEEDBACK_GLOB},
        description="One partition per feedback/*.txt file.",
    )
    def raw_feedback(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))

    @dg.asset(group_name=DERIVED_GROUP, partitions_def=partitions, deps=[raw_feedback])
    def feedback_words(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.Output[dict[str, Any]]:
        """The words of one feedback file."""
        out = S.feedback_words(raw_manifest.root_path(), raw_manifest.source_file(context))
        return dg.Output(out, metadata={"words": dg.MetadataValue.int(out["words"])})

    @dg.asset(group_name=DERIVED_GROUP, deps=[feedback_words])
    def feedback_digest(raw_manifest: ManifestResource) -> dg.Output[list[dict[str, Any]]]:
        """Every feedback file and its word count (fans in all partitions)."""
        out = S.build_feedback_digest(raw_manifest.root_path())
        return dg.Output(out, metadata=_rows(out))

    return [raw_feedback, feedback_words, feedback_digest]


def sample_assets(asset_mode: str) -> list[dg.AssetsDefinition]:
    """The sample pipeline for ``asset_mode``; per-file partitions only when materializing
    (an observation carries no partition)."""
    if asset_mode == "observe":
        return [_raw_sources(), *_derived(eager=True)]
    raw = [_raw_loader(name, rel) for name, rel in RAW_FILES.items()]
    return [*raw, *_derived(eager=False), *_feedback()]
