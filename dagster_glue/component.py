"""``ChangeDetectionComponent``: the factory as a Dagster Component, for a ``dg`` project's
``defs.yaml``::

    type: dagster_glue.ChangeDetectionComponent
    attributes:
      root: "{{ env.RAW_DATA_DIR }}"
      name: raw
      selection: "group:raw"
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from dagster_glue.factory import change_detection
from manifest.config import DEFAULT_COOLDOWN_SEC


class ChangeDetectionComponent(dg.Component, dg.Model, dg.Resolvable):
    """Watch a raw root: every asset of this code location whose metadata has
    ``source_path`` (narrowed by ``selection``) is requested when its file changes."""

    root: str
    state_dir: str | None = None
    name: str = "raw"
    asset_mode: Literal["materialize", "observe"] = "materialize"
    selection: str | None = None
    cron: str = "*/5 * * * *"
    full_hash_cron: str = "30 2 * * *"
    enabled: bool = False
    hash_mode: Literal["content_hash", "mtime_size"] = "content_hash"
    cooldown_sec: float = DEFAULT_COOLDOWN_SEC
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    batch_size: int = 50
    max_attempts: int = 3
    run_grace_sec: float = 300

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return change_detection(
            root=self.root,
            state_dir=self.state_dir,
            name=self.name,
            asset_mode=self.asset_mode,
            selection=self.selection,
            cron=self.cron,
            full_hash_cron=self.full_hash_cron,
            enabled=self.enabled,
            hash_mode=self.hash_mode,
            cooldown_sec=self.cooldown_sec,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            batch_size=self.batch_size,
            max_attempts=self.max_attempts,
            run_grace_sec=self.run_grace_sec,
        )
