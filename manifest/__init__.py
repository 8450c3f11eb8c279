"""manifest: content-addressed snapshots of a raw data tree, with git-style refs.

The engine imports only the standard library, ``msgspec`` and ``blake3``.
"""

from manifest.config import Config, load_config
from manifest.errors import ManifestError
from manifest.model import ChangeSet, Snapshot, SnapshotId, TreeEntry
from manifest.refs import REF_LAST, REF_PENDING, REF_UNFINISHED
from manifest.repo import (
    CycleResult,
    FsckReport,
    GcResult,
    LogEntry,
    Repository,
    Status,
)

__version__ = "0.1.0"

__all__ = [
    "REF_LAST",
    "REF_PENDING",
    "REF_UNFINISHED",
    "ChangeSet",
    "Config",
    "CycleResult",
    "FsckReport",
    "GcResult",
    "LogEntry",
    "ManifestError",
    "Repository",
    "Snapshot",
    "SnapshotId",
    "Status",
    "TreeEntry",
    "load_config",
]
