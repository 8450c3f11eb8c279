"""``change_detection(...)``: what a Dagster project adds to watch one raw root."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import dagster as dg

from dagster_glue.resource import ManifestResource, resource_key, validate_name
from dagster_glue.sensors import automation_sensor, promotion_sensor
from dagster_glue.tick import Glue
from manifest.config import DEFAULT_COOLDOWN_SEC, DEFAULT_LOCK_TIMEOUT_SEC, parse_seconds
from manifest.errors import ConfigError

ASSET_MODES = ("materialize", "observe")


def _value(value: Any) -> Any:
    """Definition-time settings (cron, enabled, mode) may be ``dg.EnvVar``s: read them now."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def parse_cron(value: Any, variable: str) -> str:
    """A 5-field cron expression (a ``dg.EnvVar`` is read now), or a ``ConfigError``."""
    text = str(_value(value) or "").strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg.ScheduleDefinition(name="_check", cron_schedule=text, target="*")
    except Exception as exc:  # Dagster raises its own error types for a bad cron string
        raise ConfigError(
            variable, text, "a 5-field cron expression such as '*/5 * * * *'"
        ) from exc
    return text


def _globs(value: Sequence[str] | dg.EnvVar | None) -> list[str] | None:
    """A list of globs, or an ``EnvVar`` holding them separated by commas or newlines; None
    (or an unset variable): the store's."""
    if isinstance(value, dg.EnvVar):
        text = value.get_value()
        if text is None:
            return None
        return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
    return None if value is None else list(value)


def _shown(root: str | dg.EnvVar) -> str:
    """The root as descriptions name it: the path, and the variable it came from."""
    if not isinstance(root, dg.EnvVar):
        return root
    value = root.get_value()
    return f"{value} (${root.env_var_name})" if value else f"${root.env_var_name}"


def _count(value: Any, variable: str) -> int:
    value = _value(value)
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(variable, value, "a whole number >= 1") from None
    if number < 1:
        raise ConfigError(variable, value, "a whole number >= 1")
    return number


def _seconds(value: Any, variable: str) -> float:
    return parse_seconds(_value(value), variable)


def _bool(value: Any, variable: str) -> bool:
    value = _value(value)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(variable, value, "true or false")
    return text in ("true", "1", "yes")


def change_detection(
    *,
    root: str | dg.EnvVar,
    state_dir: str | dg.EnvVar | None = None,
    name: str | dg.EnvVar = "raw",
    asset_mode: str = "materialize",
    selection: dg.AssetSelection | str | None = None,
    cron: str | dg.EnvVar = "*/5 * * * *",
    full_hash_cron: str | dg.EnvVar = "30 2 * * *",
    enabled: bool | str | dg.EnvVar = False,
    hash_mode: str | dg.EnvVar | None = None,
    cooldown_sec: float | dg.EnvVar = DEFAULT_COOLDOWN_SEC,
    include: Sequence[str] | dg.EnvVar | None = None,
    exclude: Sequence[str] | dg.EnvVar | None = None,
    batch_size: int | dg.EnvVar = 50,
    max_attempts: int | dg.EnvVar = 3,
    run_grace_sec: float | dg.EnvVar = 300,
    bootstrap: str | dg.EnvVar = "baseline",
    lock_timeout_sec: float | dg.EnvVar = DEFAULT_LOCK_TIMEOUT_SEC,
) -> dg.Definitions:
    """The job, ``{name}_schedule``, ``{name}_full_hash_check``, ``{name}_promotion_sensor``
    (and in observe mode ``{name}_automation_sensor``) and the ``{name}_manifest`` resource
    that watch ``root``. Merge it with your own definitions; your assets declare their file
    with ``source_path`` metadata.

    Every setting may be a ``dg.EnvVar``: ``root``, ``state_dir`` and ``hash_mode`` are read
    when the resource is used; the others when the definitions load. The store records its
    root, mode and filters when it is created; ``hash_mode``, ``include`` and ``exclude``
    left as None take the store's, and any that differ from the store's are an error."""
    name = validate_name(str(_value(name)))
    mode = str(_value(asset_mode))
    if mode not in ASSET_MODES:
        raise ConfigError("asset_mode", mode, " or ".join(ASSET_MODES))
    resource = ManifestResource(
        root=root,
        state_dir=state_dir,
        name=name,
        asset_mode=mode,
        hash_mode=hash_mode,
        cooldown_sec=_seconds(cooldown_sec, "cooldown_sec"),
        include=_globs(include),
        exclude=_globs(exclude),
        batch_size=_count(batch_size, "batch_size"),
        max_attempts=_count(max_attempts, "max_attempts"),
        run_grace_sec=_seconds(run_grace_sec, "run_grace_sec"),
        bootstrap=bootstrap,
        lock_timeout_sec=_seconds(lock_timeout_sec, "lock_timeout_sec"),
    )
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
    schedule_name = f"{name}_schedule"
    glue = Glue(
        name=name,
        asset_mode=mode,  # type: ignore[arg-type]
        job_name=job_name,
        schedule_name=schedule_name,
        selection=selection,
    )
    status = (
        dg.DefaultScheduleStatus.RUNNING
        if _bool(enabled, "enabled")
        else dg.DefaultScheduleStatus.STOPPED
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

    schedules = [
        schedule(
            schedule_name,
            parse_cron(cron, "cron"),
            f"Scan {shown_root} and request one run for what changed since last.",
            rehash_all=False,
        ),
        schedule(
            f"{name}_full_hash_check",
            parse_cron(full_hash_cron, "full_hash_cron"),
            f"Re-hash every file under {shown_root}, ignoring the stat cache, and request "
            "whatever content differs from last.",
            rehash_all=True,
        ),
    ]
    sensors: list[dg.SensorDefinition] = [promotion_sensor(glue, job)]
    if observe:
        sensors.append(automation_sensor(glue))
    return dg.Definitions(
        jobs=[job],
        schedules=schedules,
        sensors=sensors,
        resources={key: resource},
    )
