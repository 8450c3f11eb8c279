"""The sample definitions' knobs, read from ``RAW_*`` environment variables (the library
itself takes arguments; see ``change_detection``). The engine's own variables (root, store,
hash mode, cooldown, globs, bootstrap) are read by ``manifest.load_config``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from dagster_glue import ASSET_MODES, parse_cron
from manifest.config import parse_seconds
from manifest.errors import ConfigError

AssetMode = Literal["materialize", "observe"]

ENV_ASSET_MODE = "RAW_ASSET_MODE"
ENV_CRON = "RAW_SCAN_CRON"
ENV_ENABLED = "RAW_SCHEDULE_ENABLED"
ENV_MAX_ATTEMPTS = "RAW_MAX_ATTEMPTS"
ENV_BATCH_SIZE = "RAW_BATCH_SIZE"
ENV_FULL_HASH_CRON = "RAW_FULL_HASH_CRON"
ENV_RUN_GRACE = "RAW_RUN_GRACE_SEC"

DEFAULT_CRON = "*/5 * * * *"
DEFAULT_FULL_HASH_CRON = "30 2 * * *"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BATCH_SIZE = 50
DEFAULT_RUN_GRACE_SEC = 300.0


class GlueSettings(msgspec.Struct, frozen=True):
    asset_mode: AssetMode = "materialize"
    cron: str = DEFAULT_CRON
    enabled: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    batch_size: int = DEFAULT_BATCH_SIZE
    full_hash_cron: str = DEFAULT_FULL_HASH_CRON
    run_grace_sec: float = DEFAULT_RUN_GRACE_SEC


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(name, text, "a whole number >= 1") from None
    if value < 1:
        raise ConfigError(name, text, "a whole number >= 1")
    return value


def load_glue_settings(env: Mapping[str, str] | None = None) -> GlueSettings:
    env = os.environ if env is None else env
    mode = env.get(ENV_ASSET_MODE, "").strip() or "materialize"
    if mode not in ASSET_MODES:
        raise ConfigError(ENV_ASSET_MODE, mode, " or ".join(ASSET_MODES))
    enabled_text = env.get(ENV_ENABLED, "").strip().lower() or "false"
    if enabled_text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(ENV_ENABLED, enabled_text, "true or false")
    return GlueSettings(
        asset_mode=mode,  # type: ignore[arg-type]
        cron=parse_cron(env.get(ENV_CRON, "").strip() or DEFAULT_CRON, ENV_CRON),
        enabled=enabled_text in ("true", "1", "yes"),
        max_attempts=_positive_int(env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS),
        batch_size=_positive_int(env, ENV_BATCH_SIZE, DEFAULT_BATCH_SIZE),
        full_hash_cron=parse_cron(
            env.get(ENV_FULL_HASH_CRON, "").strip() or DEFAULT_FULL_HASH_CRON, ENV_FULL_HASH_CRON
        ),
        run_grace_sec=parse_seconds(env.get(ENV_RUN_GRACE) or DEFAULT_RUN_GRACE_SEC, ENV_RUN_GRACE),
    )
