"""From changed paths to work: which watched assets (and per-file partitions) a change maps
to, split into batches, and the asset selection of each batch.

Watched assets are read from the code location's own definitions at tick time: every asset
whose metadata has ``source_path`` (a path relative to the root, or a glob with the engine's
syntax), optionally narrowed by a selection.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import dagster as dg

from dagster_glue.resource import SOURCE_PATH
from manifest import ChangeSet
from manifest.errors import ConfigError
from manifest.globs import compile_globs
from manifest.text import escape_path


class Watched(NamedTuple):
    key: dg.AssetKey
    source_path: str
    pattern: re.Pattern[str]
    partitions: str | None  # the DynamicPartitionsDefinition's name for per-file partitions
    observable: bool


class Batch(NamedTuple):
    """One run: ``roots`` (the changed watched assets, or the unpartitioned assets fed by
    changed partitions) at ``partition`` (an escaped path) or unpartitioned. ``after``: the
    batches that must succeed before this one is requested."""

    number: int
    roots: tuple[dg.AssetKey, ...]
    partition: str | None = None
    after: tuple[int, ...] = ()


class Plan(NamedTuple):
    batches: list[Batch]
    ignored: list[str]  # changed paths no watched asset matches
    new_partitions: dict[str, list[str]]  # partitions def name -> keys to register
    gone_partitions: dict[str, list[str]]  # partitions def name -> keys to delete
    by_path: dict[str, list[dg.AssetKey]]


def _resolve(selection: dg.AssetSelection | str | None, graph: object) -> set[dg.AssetKey]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # include_sources is marked beta
        if isinstance(selection, str):
            selection = dg.AssetSelection.from_string(selection, include_sources=True)
        if selection is None:
            selection = dg.AssetSelection.all(include_sources=True)
        return set(selection.resolve(graph))  # type: ignore[arg-type]


def find_watched(
    repository_def: dg.RepositoryDefinition, selection: dg.AssetSelection | str | None
) -> list[Watched]:
    """Every asset with ``source_path`` metadata, in the selection, sorted by key."""
    graph = repository_def.asset_graph
    watched = []
    for key in sorted(_resolve(selection, graph), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        source = (node.metadata or {}).get(SOURCE_PATH)
        if source is None:
            continue
        text = str(getattr(source, "value", source))
        pattern = compile_globs([text], f"{key.to_user_string()} {SOURCE_PATH}")
        assert pattern is not None
        pdef = node.partitions_def
        if pdef is not None and not isinstance(pdef, dg.DynamicPartitionsDefinition):
            raise ConfigError(
                f"{key.to_user_string()} partitions_def",
                type(pdef).__name__,
                "none, or a DynamicPartitionsDefinition (one partition per file)",
            )
        partitions = pdef.name if isinstance(pdef, dg.DynamicPartitionsDefinition) else None
        watched.append(
            Watched(
                key, text, pattern, partitions, node.is_observable and not node.is_materializable
            )
        )
    return watched


def match(watched: Sequence[Watched], path: str) -> list[Watched]:
    return [w for w in watched if w.pattern.match(path)]


def _same_partitioned_descendants(graph: object, key: dg.AssetKey) -> set[dg.AssetKey]:
    get = graph.get  # type: ignore[attr-defined]
    pdef = get(key).partitions_def
    seen, stack = {key}, [key]
    while stack:
        for child in get(stack.pop()).child_keys:
            if child not in seen and get(child).partitions_def == pdef:
                seen.add(child)
                stack.append(child)
    return seen


def fan_in_roots(graph: object, keys: Iterable[dg.AssetKey]) -> set[dg.AssetKey]:
    """Unpartitioned children of the same-partitioned family of ``keys``."""
    get = graph.get  # type: ignore[attr-defined]
    roots: set[dg.AssetKey] = set()
    for key in keys:
        for member in _same_partitioned_descendants(graph, key):
            roots.update(c for c in get(member).child_keys if get(c).partitions_def is None)
    return roots


def plan(
    changes: ChangeSet,
    watched: Sequence[Watched],
    graph: object,
    *,
    batch_size: int,
    observe: bool,
) -> Plan:
    by_path: dict[str, list[dg.AssetKey]] = {}
    ignored: list[str] = []
    unpartitioned: set[dg.AssetKey] = set()
    partition_runs: set[tuple[dg.AssetKey, str]] = set()
    changed_partitioned: set[dg.AssetKey] = set()
    new: dict[str, set[str]] = {}
    gone: dict[str, set[str]] = {}
    removed = set(changes.removed)
    for path in changes.paths:
        hits = match(watched, path)
        if not hits:
            ignored.append(path)
            continue
        by_path[path] = [w.key for w in hits]
        for w in hits:
            if w.partitions is None:
                unpartitioned.add(w.key)
                continue
            if observe:
                raise ConfigError(
                    f"{w.key.to_user_string()} partitions_def",
                    w.partitions,
                    "no partitions in asset_mode='observe' (observations carry no "
                    "partition); use asset_mode='materialize' for per-file partitions",
                )
            partition = escape_path(path)
            changed_partitioned.add(w.key)
            if path in removed:
                gone.setdefault(w.partitions, set()).add(partition)
            else:
                new.setdefault(w.partitions, set()).add(partition)
                partition_runs.add((w.key, partition))
    batches: list[Batch] = []
    for key, partition in sorted(partition_runs, key=lambda kp: (kp[0].to_user_string(), kp[1])):
        batches.append(Batch(len(batches) + 1, (key,), partition))
    stage_one = tuple(b.number for b in batches)
    fan_in = sorted(fan_in_roots(graph, changed_partitioned), key=lambda k: k.to_user_string())
    ordered = sorted(unpartitioned, key=lambda k: k.to_user_string())
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    if fan_in:
        if chunks:
            chunks[0] = [*chunks[0], *(k for k in fan_in if k not in chunks[0])]
        else:
            chunks = [fan_in]
    for chunk in chunks:
        batches.append(Batch(len(batches) + 1, tuple(chunk), None, stage_one))
    return Plan(
        batches,
        ignored,
        {name: sorted(keys) for name, keys in new.items()},
        {name: sorted(keys) for name, keys in gone.items()},
        by_path,
    )


def selection(
    batch: Batch, graph: object, instance: dg.DagsterInstance, *, observe: bool
) -> tuple[list[dg.AssetKey], list[dg.AssetKey], list[dg.AssetKey]]:
    """(asset selection, never-materialized ancestors added, partitioned downstream left out).

    A partition batch: the watched asset and its same-partitioned downstream at that key.
    Otherwise (materialize): the roots and their unpartitioned downstream, plus any
    unselected unpartitioned ancestor never materialized (else the run fails loading its
    input). Observe: just the roots."""
    by_name = lambda k: k.to_user_string()  # noqa: E731
    get = graph.get  # type: ignore[attr-defined]
    if batch.partition is not None:
        (root,) = batch.roots
        return sorted(_same_partitioned_descendants(graph, root), key=by_name), [], []
    if observe:
        return sorted(batch.roots, key=by_name), [], []
    downstream = set(dg.AssetSelection.assets(*batch.roots).downstream().resolve(graph))  # type: ignore[arg-type]
    left_out = {k for k in downstream if get(k).partitions_def is not None}
    selected = downstream - left_out
    added: list[dg.AssetKey] = []
    stack = list(selected)
    while stack:
        key = stack.pop()
        for parent in get(key).parent_keys:
            node = get(parent)
            if parent in selected or not node.is_materializable or node.partitions_def:
                continue
            if instance.get_latest_materialization_event(parent) is None:
                selected.add(parent)
                added.append(parent)
                stack.append(parent)
    return sorted(selected, key=by_name), sorted(added, key=by_name), sorted(left_out, key=by_name)
