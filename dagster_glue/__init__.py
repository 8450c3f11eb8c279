"""Dagster glue for manifest: watch a raw root and turn each diff into exactly the runs it
needs. ``change_detection(...)`` in Python, ``ChangeDetectionComponent`` in a ``defs.yaml``."""

from dagster_glue.component import ChangeDetectionComponent
from dagster_glue.factory import change_detection
from dagster_glue.resource import SOURCE_PATH, ManifestResource, resource_key

__all__ = [
    "SOURCE_PATH",
    "ChangeDetectionComponent",
    "ManifestResource",
    "change_detection",
    "resource_key",
]
