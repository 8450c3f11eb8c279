"""``ChangeDetectionComponent``: the factory as a Dagster Component, for a ``dg`` project's
``defs.yaml``::

    type: dagster_glue.ChangeDetectionComponent
    attributes:
      root: "{{ env.RAW_DATA_DIR }}"
      name: raw
      selection: "group:raw"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import dagster as dg
from pydantic import BaseModel, Field, create_model
from pydantic_core import PydanticUndefined

from dagster_glue.factory import change_detection
from dagster_glue.resource import ManifestResource, setting_of


def settings_model() -> type[dg.Model]:
    """A ``dg.Model`` whose fields are ``ManifestResource``'s: the same names, defaults and
    descriptions; a setting with choices is a ``Literal`` of them, so the YAML schema lists
    them, and one the resource reads from text also takes text (globs separated by commas,
    as from a variable). The Component's attributes are this model's fields, never written
    out again."""
    fields: dict[str, Any] = {}
    for name, field in ManifestResource.model_fields.items():
        annotation: Any = field.annotation
        setting = setting_of(field)
        if setting.choices:
            annotation = Literal[setting.choices]
            if field.default is None:
                annotation = annotation | None
        elif setting.parse is not None:
            annotation = annotation | str  # text (`"{{ env.X }}"`), read as the factory reads it
        fields[name] = (
            # the Resolver carries the description into the YAML schema (`dg` shows it)
            Annotated[annotation, dg.Resolver.default(description=field.description)],
            Field(default=... if field.default is PydanticUndefined else field.default),
        )
    return create_model("ChangeDetectionSettings", __base__=dg.Model, **fields)


if TYPE_CHECKING:
    _Settings = dg.Model
else:
    _Settings = settings_model()


class ChangeDetectionScaffoldParams(BaseModel):
    """``dg scaffold defs dagster_glue.ChangeDetectionComponent PATH --root R --name N``."""

    root: str = Field(
        default="data/1_raw",
        description="The raw root to watch: a folder (relative to the project root) or a URL.",
    )
    name: str = Field(
        default=ManifestResource.model_fields["name"].default,
        description=ManifestResource.model_fields["name"].description,
    )


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
class ChangeDetectionComponent(dg.Component, _Settings, dg.Resolvable):
    """Watch a raw root: every asset of this code location whose metadata has
    ``source_path`` (narrowed by ``selection``) is requested when its file changes. The
    attributes are ``ManifestResource``'s fields, the arguments of ``change_detection``."""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return change_detection(**self.model_dump())
