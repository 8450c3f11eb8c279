"""``defs``: the sample pipeline plus ``change_detection`` for ``data/1_raw``, configured by
the ``RAW_*`` environment variables (as the CLI is). ``dagster dev`` finds it through
``[tool.dagster]`` in pyproject.toml."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_glue import ManifestResource, change_detection, resource_key
from dagster_glue.sample.assets import sample_assets
from dagster_glue.sample.settings import load_glue_settings
from manifest import Config, load_config


def build(
    settings: Mapping[str, Any] | None = None,
    config: Config | None = None,
    env: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """The sample definitions for ``settings`` (keyword arguments of ``change_detection``)
    and the engine ``config`` (default: both from the environment). The engine's settings
    (root, store, hash mode, cooldown, globs, bootstrap, lock timeout) come from ``config``,
    resolved as the CLI resolves them, so both find the same store."""
    settings = settings if settings is not None else load_glue_settings(env)
    config = config if config is not None else load_config(env=env, name=_store_name(env))
    watch = change_detection(
        **{
            **settings,
            "root": config.root_text,
            "state_dir": config.store_text,
            "name": "raw",
            "hash_mode": config.mode,
            "cooldown_sec": config.cooldown_sec,
            "include": config.include,
            "exclude": config.exclude,
            "bootstrap": config.bootstrap,
            "lock_timeout_sec": config.lock_timeout_sec,
        }
    )
    resource: ManifestResource = (watch.resources or {})[resource_key("raw")]
    # Each run's steps run in the run's own process: the sample's assets are small, and a
    # process per step (Dagster's default executor) costs more than they do. The glue works
    # with either; the sensor daemon test runs tests/glue/projects/landing.py with the default.
    assets = dg.Definitions(
        assets=sample_assets(resource.asset_mode), executor=dg.in_process_executor
    )
    return dg.Definitions.merge(assets, watch)


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
