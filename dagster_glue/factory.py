"""``change_detection(...)``: what a Dagster project adds to watch one raw root.

Its keyword arguments are ``ManifestResource``'s fields, with their defaults (a test holds
the two, and the Component, to exactly the same settings): it reads the ``dg.EnvVar``s read
at load, builds the resource, which checks every value, and derives the rest from it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import dagster as dg

from dagster_glue.resource import (
    ASSET_MODES,
    ManifestResource,
    parse_cron,
    resource_key,
    setting_of,
)
from dagster_glue.sensors import automation_sensor, promotion_sensor
from dagster_glue.tick import Glue
from manifest.config import DEFAULT_COOLDOWN_SEC, DEFAULT_LOCK_TIMEOUT_SEC

__all__ = ["ASSET_MODES", "change_detection", "parse_cron"]


def _value(value: Any) -> Any:
    """A ``dg.EnvVar`` for a setting read at load: read it now."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def _shown(root: str | dg.EnvVar) -> str:
    """The root as descriptions name it: the path, and the variable it came from."""
    if not isinstance(root, dg.EnvVar):
        return root
    value = root.get_value()
    return f"{value} (${root.env_var_name})" if value else f"${root.env_var_name}"


def _setting(name: str, value: Any) -> Any:
    """An argument as ``ManifestResource`` takes it: an ``AssetSelection`` as Dagster's text
    for it, a ``dg.EnvVar`` read now unless the setting is read when the resource is used."""
    if name == "selection" and isinstance(value, dg.AssetSelection):
        return str(value)
    if setting_of(ManifestResource.model_fields[name]).read_at_use:
        return value
    return _value(value)


def change_detection(
    *,
    root: str | dg.EnvVar,
    state_dir: str | dg.EnvVar | None = None,
    name: str | dg.EnvVar = "raw",
    asset_mode: str | dg.EnvVar = "materialize",
    selection: dg.AssetSelection | str | None = None,
    cron: str | dg.EnvVar = "*/5 * * * *",
    trigger: str | dg.EnvVar = "schedule",
    minimum_interval_seconds: int | dg.EnvVar = 10,
    full_hash_cron: str | dg.EnvVar = "30 2 * * *",
    enabled: bool | str | dg.EnvVar = False,
    hash_mode: str | dg.EnvVar | None = None,
    cooldown_sec: float | dg.EnvVar = DEFAULT_COOLDOWN_SEC,
    include: Sequence[str] | dg.EnvVar | None = None,
    exclude: Sequence[str] | dg.EnvVar | None = None,
    batch_size: int | dg.EnvVar = 50,
    max_attempts: int | dg.EnvVar = 3,
    run_grace_sec: float | dg.EnvVar = 300.0,
    bootstrap: str | dg.EnvVar = "baseline",
    lock_timeout_sec: float | dg.EnvVar = DEFAULT_LOCK_TIMEOUT_SEC,
    events_queue: str | dg.EnvVar | None = None,
) -> dg.Definitions:
    """The job, ``{name}_schedule`` (``{name}_sensor`` with ``trigger="sensor"``),
    ``{name}_full_hash_check``, ``{name}_promotion_sensor`` (and in observe mode
    ``{name}_automation_sensor``) and the ``{name}_manifest`` resource that watch ``root``.
    Merge it with your own definitions; your assets declare their file with ``source_path``
    metadata. Each argument is the ``ManifestResource`` field of the
    same name (see its descriptions).

    Every setting may be a ``dg.EnvVar``: ``root``, ``state_dir`` and ``hash_mode`` are read
    when the resource is used; the others when the definitions load. The store records its
    root, mode and filters when it is created; ``hash_mode``, ``include`` and ``exclude``
    left as None take the store's, and any that differ from the store's are an error."""
    arguments = dict(locals())  # first, so exactly the keyword arguments: one per setting
    resource = ManifestResource(**{key: _setting(key, v) for key, v in arguments.items()})
    name, mode = resource.name, resource.asset_mode
    observe = mode == "observe"
    job_selection: dg.AssetSelection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # include_sources is marked beta
        if selection is None:
            job_selection = dg.AssetSelection.all(include_sources=observe)
        elif isinstance(selection, str):
            job_selection = dg.AssetSelection.from_string(selection, include_sources=True)
        else:
            job_selection = selection
        if not observe:
            job_selection = job_selection.downstream()
    job_name = f"observe_{name}_sources" if observe else f"{name}_reload_job"
    shown_root = _shown(root)
    job = dg.define_asset_job(
        job_name,
        selection=job_selection,
        description=(
            f"Observe the changed files under {shown_root}."
            if observe
            else f"Reload the changed files under {shown_root} and recompute downstream "
            "(the schedule selects the subset)."
        ),
    )
    schedule_name = f"{name}_sensor" if resource.trigger == "sensor" else f"{name}_schedule"
    glue = Glue(
        name=name,
        asset_mode=mode,  # type: ignore[arg-type]
        job_name=job_name,
        schedule_name=schedule_name,
        selection=selection,
    )
    status = (
        dg.DefaultScheduleStatus.RUNNING if resource.enabled else dg.DefaultScheduleStatus.STOPPED
    )
    key = resource_key(name)

    def schedule(
        schedule: str, cron_text: str, description: str, *, rehash_all: bool
    ) -> dg.ScheduleDefinition:
        @dg.schedule(
            name=schedule,
            cron_schedule=cron_text,
            job=job,
            default_status=status,
            required_resource_keys={key},
            description=description,
        )
        def _tick(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
            return glue.tick(context, schedule=schedule, rehash_all=rehash_all)

        return _tick

    scan_description = f"Scan {shown_root} and request one run for what changed since last."
    sensors: list[dg.SensorDefinition] = [promotion_sensor(glue, job)]
    schedules = []
    if resource.trigger == "sensor":

        @dg.sensor(
            name=f"{name}_sensor",
            job=job,
            minimum_interval_seconds=resource.minimum_interval_seconds,
            default_status=dg.DefaultSensorStatus.RUNNING
            if resource.enabled
            else dg.DefaultSensorStatus.STOPPED,
            required_resource_keys={key},
            description=scan_description,
        )
        def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
            return glue.tick(context, schedule=schedule_name)

        sensors.append(_sensor)
    else:
        schedules.append(schedule(schedule_name, resource.cron, scan_description, rehash_all=False))
    schedules += [
        schedule(
            f"{name}_full_hash_check",
            resource.full_hash_cron,
            f"Re-hash every file under {shown_root}, ignoring the stat cache, and request "
            "whatever content differs from last.",
            rehash_all=True,
        ),
    ]
    if observe:
        sensors.append(automation_sensor(glue))
    return dg.Definitions(
        jobs=[job],
        schedules=schedules,
        sensors=sensors,
        resources={key: resource},
    )
