"""Run tags and run keys: what every run the schedule launches says about itself.

Keys are prefixed with the watched root's ``name`` (``raw_fingerprint``, ``raw_batch``...), so
two roots in one code location never read each other's runs. Paths are escaped with
:func:`manifest.text.escape_path`, so any file name fits in a tag.
"""

from __future__ import annotations

from collections.abc import Sequence

from manifest import ChangeSet
from manifest.text import escape_path

TAG_TRIGGER = "trigger"
MAX_LISTED = 50  # paths listed in a tag or metadata entry
MAX_PATHS_CHARS = 4000  # characters of the paths tag


def pending(name: str) -> str:
    """The snapshot the run processes (``pending`` when it was requested)."""
    return f"{name}_fingerprint"


def last(name: str) -> str:
    return f"{name}_last"


def batch(name: str) -> str:
    return f"{name}_batch"


def attempt(name: str) -> str:
    return f"{name}_attempt"


def trigger_value(name: str) -> str:
    return f"{name}_schedule"


def change_tags(name: str, changes: ChangeSet) -> dict[str, str]:
    """Counts per kind, and the changed paths one per line, as many as fit."""
    paths = [escape_path(p) for p in changes.paths]
    listed: list[str] = []
    size = 0
    for path in paths[:MAX_LISTED]:
        if size + len(path) + 1 > MAX_PATHS_CHARS:
            break
        listed.append(path)
        size += len(path) + 1
    tags = {
        f"{name}_added": str(len(changes.added)),
        f"{name}_modified": str(len(changes.modified)),
        f"{name}_removed": str(len(changes.removed)),
        f"{name}_paths": "\n".join(listed),
        f"{name}_paths_total": str(len(paths)),
    }
    if changes.requeued:
        tags[f"{name}_requeued"] = str(len(changes.requeued))
    if len(listed) < len(paths):
        tags[f"{name}_paths"] += f"\n... and {len(paths) - len(listed)} more"
    return tags


def run_key(name: str, snapshot: str, batch_number: int, attempt_number: int) -> str:
    return f"{name}-{snapshot[:16]}-b{batch_number}-a{attempt_number}"


def describe_paths(paths: Sequence[str], limit: int = 5) -> str:
    """A short human list: ``a.csv, b.csv and 3 more``."""
    shown = [escape_path(p) for p in paths[:limit]]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
