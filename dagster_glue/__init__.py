"""Dagster glue for manifest: watch a raw root and turn each diff into exactly the runs it
needs. ``change_detection(...)`` in Python, ``ChangeDetectionComponent`` in a ``defs.yaml``."""

from dagster_glue.component import ChangeDetectionComponent
from dagster_glue.factory import ASSET_MODES, change_detection, parse_cron
from dagster_glue.resource import SOURCE_PATH, ManifestResource, resource_key

__all__ = [
    "ASSET_MODES",
    "SOURCE_PATH",
    "ChangeDetectionComponent",
    "ManifestResource",
    "change_detection",
    "parse_cron",
    "resource_key",
]
