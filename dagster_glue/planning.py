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
    batches that must succeed before this one is requested (only a fan-in waits: for the
    partition runs it reads). ``paths``: the changed files this run processes itself;
    ``feeds``: the changed per-file partitions its fan-in assets read."""

    number: int
    roots: tuple[dg.AssetKey, ...]
    partition: str | None = None
    after: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()

    def processed(self) -> tuple[str, ...]:
        """Every changed path this run is for (its own and those its fan-in reads)."""
        return tuple(sorted({*self.paths, *self.feeds}))


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
    """The batches that process ``changes``: one run per changed file partition, the
    changed unpartitioned assets in chunks of ``batch_size``, and the fan-in (unpartitioned
    assets fed by changed partitions) after the partition runs. A chunk waits only when its
    own downstream includes a fan-in asset (it then runs that fan-in too).

    Paths in ``changes.done`` were processed already (a superseded pending's run succeeded
    for the same content): no run. Paths in ``changes.done_own``: their own run succeeded,
    only the fan-in they feed is still to run."""
    by_path: dict[str, list[dg.AssetKey]] = {}
    ignored: list[str] = []
    unpartitioned: dict[dg.AssetKey, set[str]] = {}
    partition_runs: dict[tuple[dg.AssetKey, str], str] = {}
    fed: dict[dg.AssetKey, set[str]] = {}  # partitioned asset -> changed paths feeding fan-in
    new: dict[str, set[str]] = {}
    gone: dict[str, set[str]] = {}
    removed = set(changes.removed)
    done, done_own = set(changes.done), set(changes.done_own)
    for path in changes.paths:
        hits = match(watched, path)
        if not hits:
            ignored.append(path)
            continue
        by_path[path] = [w.key for w in hits]
        for w in hits:
            if w.partitions is None:
                if path not in done and path not in done_own:
                    unpartitioned.setdefault(w.key, set()).add(path)
                continue
            if observe:
                raise ConfigError(
                    f"{w.key.to_user_string()} partitions_def",
                    w.partitions,
                    "no partitions in asset_mode='observe' (observations carry no "
                    "partition); use asset_mode='materialize' for per-file partitions",
                )
            partition = escape_path(path)
            if path in removed:
                gone.setdefault(w.partitions, set()).add(partition)
            else:
                new.setdefault(w.partitions, set()).add(partition)
            if path in done:
                continue
            fed.setdefault(w.key, set()).add(path)
            if path not in removed and path not in done_own:
                partition_runs[(w.key, partition)] = path
    batches: list[Batch] = []
    for (key, partition), path in sorted(
        partition_runs.items(), key=lambda kp: (kp[0][0].to_user_string(), kp[0][1])
    ):
        batches.append(Batch(len(batches) + 1, (key,), partition, paths=(path,)))
    stage_one = tuple(b.number for b in batches)
    fan_in: dict[dg.AssetKey, set[str]] = {}
    for key, paths in fed.items():
        for root in fan_in_roots(graph, [key]):
            fan_in.setdefault(root, set()).update(paths)
    ordered = sorted(unpartitioned, key=lambda k: k.to_user_string())
    left = dict(fan_in)
    fan_in_reach = {k: _downstream(graph, [k]) for k in fan_in}  # a fan-in and what it feeds
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i : i + batch_size]
        downstream = _downstream(graph, chunk)
        # a chunk that would run a fan-in, or anything a fan-in feeds, waits for the
        # partitions and runs that fan-in too: nothing is computed twice, or from stale input
        absorbed = sorted(
            (k for k in left if fan_in_reach[k] & downstream), key=lambda k: k.to_user_string()
        )
        feeds = sorted({p for k in absorbed for p in left.pop(k)})
        batches.append(
            Batch(
                len(batches) + 1,
                (*chunk, *(k for k in absorbed if k not in chunk)),
                None,
                stage_one if absorbed else (),
                paths=tuple(sorted({p for k in chunk for p in unpartitioned[k]})),
                feeds=tuple(feeds),
            )
        )
    if left:
        keys = sorted(left, key=lambda k: k.to_user_string())
        feeds = sorted({p for k in keys for p in left[k]})
        batches.append(Batch(len(batches) + 1, tuple(keys), None, stage_one, feeds=tuple(feeds)))
    return Plan(
        batches,
        ignored,
        {name: sorted(keys) for name, keys in new.items()},
        {name: sorted(keys) for name, keys in gone.items()},
        by_path,
    )


def _downstream(graph: object, keys: Sequence[dg.AssetKey]) -> set[dg.AssetKey]:
    selected = dg.AssetSelection.assets(*keys).downstream()
    return set(selected.resolve(graph))  # type: ignore[arg-type]


def progress(
    planned: Plan, changes: ChangeSet, succeeded: set[int]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """After some batches of ``planned`` succeeded: the paths with nothing left to run
    (``done``) and those whose own run succeeded but whose fan-in did not (``done_own``).
    A superseding pending carries them, so no succeeded batch is requested again."""
    own: dict[str, list[int]] = {}
    feeding: dict[str, list[int]] = {}
    for b in planned.batches:
        for path in b.paths:
            own.setdefault(path, []).append(b.number)
        for path in b.feeds:
            feeding.setdefault(path, []).append(b.number)
    done, done_own = [], []
    for path in changes.paths:
        own_ok = all(n in succeeded for n in own.get(path, ()))
        fan_ok = all(n in succeeded for n in feeding.get(path, ()))
        if path in changes.done or (own_ok and fan_ok):
            done.append(path)
        elif own_ok:
            done_own.append(path)
    return tuple(done), tuple(done_own)


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
