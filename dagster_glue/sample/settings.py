"""The sample's settings: those the environment sets, each through the variable
``ManifestResource`` declares for it (``RAW_ASSET_MODE``, ``RAW_SCAN_CRON``, ...; the table in
docs/dagster.md lists them), as keyword arguments of ``change_detection``. The library
itself takes arguments and reads no variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster_glue import ManifestResource

GlueSettings = dict[str, Any]  # keyword arguments of change_detection


def load_glue_settings(env: Mapping[str, str] | None = None) -> GlueSettings:
    """The settings ``env`` (default: this process's environment) sets; a bad value is a
    ``ConfigError`` naming its variable."""
    return ManifestResource.settings_from_env(os.environ if env is None else env)
