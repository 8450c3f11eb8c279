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
from pydantic import BaseModel, Field

from dagster_glue.factory import change_detection
from manifest.config import DEFAULT_COOLDOWN_SEC


class ChangeDetectionScaffoldParams(BaseModel):
    """``dg scaffold defs dagster_glue.ChangeDetectionComponent PATH --root R --name N``."""

    root: str = Field(
        default="data/1_raw",
        description="The raw root to watch: a folder (relative to the project root) or a URL.",
    )
    name: str = Field(default="raw", description="Prefix of the schedules, sensor and job.")


class ChangeDetectionScaffolder(dg.Scaffolder[ChangeDetectionScaffoldParams]):
    """Writes a ``defs.yaml`` that validates as it stands (``root`` is required, so the
    default scaffold, ``attributes: {}``, would not)."""

    @classmethod
    def get_scaffold_params(cls) -> type[ChangeDetectionScaffoldParams]:
        return ChangeDetectionScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ChangeDetectionScaffoldParams]) -> None:
        root = request.params.root
        # A relative folder is the project's, not the code server's working directory's.
        if not (root.startswith(("/", "{{")) or "://" in root):
            root = "{{ context.project_root }}/" + root
        dg.scaffold_component(request, {"root": root, "name": request.params.name})


@dg.scaffold_with(ChangeDetectionScaffolder)
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
    hash_mode: Literal["content_hash", "mtime_size", "etag"] | None = None
    cooldown_sec: float = DEFAULT_COOLDOWN_SEC
    include: list[str] | None = None
    exclude: list[str] | None = None
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
            include=self.include,
            exclude=self.exclude,
            batch_size=self.batch_size,
            max_attempts=self.max_attempts,
            run_grace_sec=self.run_grace_sec,
        )
