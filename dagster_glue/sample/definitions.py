"""``defs``: the sample pipeline plus ``change_detection`` for ``data/1_raw``, configured by
the ``RAW_*`` environment variables (as the CLI is). ``dagster dev`` finds it through
``[tool.dagster]`` in pyproject.toml."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from dagster_glue import change_detection
from dagster_glue.sample.assets import sample_assets
from dagster_glue.sample.settings import GlueSettings, load_glue_settings
from manifest import Config, load_config


def build(
    settings: GlueSettings | None = None,
    config: Config | None = None,
    env: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """The sample definitions for ``settings`` and the engine ``config`` (default: both
    from the environment)."""
    settings = settings if settings is not None else load_glue_settings(env)
    config = config if config is not None else load_config(env=env, name=_store_name(env))
    return dg.Definitions.merge(
        dg.Definitions(assets=sample_assets(settings.asset_mode)),
        change_detection(
            root=config.root_text,
            state_dir=config.store_text,
            name="raw",
            asset_mode=settings.asset_mode,
            cron=settings.cron,
            full_hash_cron=settings.full_hash_cron,
            enabled=settings.enabled,
            hash_mode=config.mode,
            cooldown_sec=config.cooldown_sec,
            include=config.include,
            exclude=config.exclude,
            bootstrap=config.bootstrap,
            lock_timeout_sec=config.lock_timeout_sec,
            batch_size=settings.batch_size,
            max_attempts=settings.max_attempts,
            run_grace_sec=settings.run_grace_sec,
        ),
    )


def _store_name(env: Mapping[str, str] | None) -> str | None:
    """The sample's store is ``$DAGSTER_HOME/state/raw`` (its ``name``), as for any adopter
    of ``change_detection``; one kept at ``$DAGSTER_HOME/state`` itself (before 0.2) is
    still used."""
    env = os.environ if env is None else env
    home = env.get("DAGSTER_HOME", "").strip()
    if not home or (Path(home) / "state" / "FORMAT").is_file():
        return None
    return "raw"


defs = build()
