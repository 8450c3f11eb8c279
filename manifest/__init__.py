"""manifest: content-addressed snapshots of a raw data tree, with git-style refs.

The engine imports only the standard library, ``msgspec`` and ``blake3`` (and ``obstore``
when a root or store is a bucket URL, only then). The names below
are imported on first use (PEP 562), so a scan worker process (``manifest.root.pool``) starts
without loading the verbs it does not need.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: `manifest status` starts here
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "manifest.config",
    "load_config": "manifest.config",
    "ManifestError": "manifest.errors",
    "ChangeSet": "manifest.model",
    "Snapshot": "manifest.model",
    "SnapshotId": "manifest.model",
    "TreeEntry": "manifest.model",
    "REF_LAST": "manifest.store.refs",
    "REF_PENDING": "manifest.store.refs",
    "REF_UNFINISHED": "manifest.store.refs",
    "CycleResult": "manifest.repo",
    "FsckReport": "manifest.repo",
    "GcResult": "manifest.repo",
    "LogEntry": "manifest.repo",
    "Repository": "manifest.repo",
    "Status": "manifest.repo",
}

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

if TYPE_CHECKING:
    from manifest.config import Config, load_config
    from manifest.errors import ManifestError
    from manifest.model import ChangeSet, Snapshot, SnapshotId, TreeEntry
    from manifest.repo import CycleResult, FsckReport, GcResult, LogEntry, Repository, Status
    from manifest.store.refs import REF_LAST, REF_PENDING, REF_UNFINISHED


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'manifest' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
