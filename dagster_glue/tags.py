"""Run tags and run keys: what every run the schedule launches says about itself.

Keys are prefixed with the watched root's ``name`` (``raw_paths``, ``raw_batch``...), so
two roots in one code location never read each other's runs. Shown in the Runs list: what a
person filters by (``trigger``, ``raw_paths``, ``raw_batch``, ``raw_attempt``,
``raw_partition``). The snapshot ids the glue looks runs up by are hidden tags
(``.dagster/raw_fingerprint``, ``.dagster/raw_last``: Dagster's UI hides the ``.dagster/``
prefix); the short id is in the run key. Paths are escaped with
:func:`manifest.text.escape_path`, so any file name fits in a tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from manifest.text import escape_path

TAG_TRIGGER = "trigger"
HIDDEN = ".dagster/"  # Dagster's UI hides tags with this prefix
MAX_LISTED = 50  # paths listed in a tag or metadata entry
MAX_PATHS_CHARS = 4000  # characters of the paths tag


def pending(name: str) -> str:
    """The snapshot the run processes (``pending`` when it was requested): hidden."""
    return f"{HIDDEN}{name}_fingerprint"


def legacy_pending(name: str) -> str:
    """The same, as runs launched before 0.2 carry it (shown)."""
    return f"{name}_fingerprint"


def last(name: str) -> str:
    """``last`` when the run was requested (the diff base): hidden."""
    return f"{HIDDEN}{name}_last"


def snapshot_of(name: str, tags: Mapping[str, str]) -> str | None:
    """The snapshot a run processes, from its tags (either spelling)."""
    return tags.get(pending(name)) or tags.get(legacy_pending(name)) or None


def last_of(name: str, tags: Mapping[str, str]) -> str | None:
    return tags.get(last(name)) or tags.get(f"{name}_last") or None


def batch(name: str) -> str:
    return f"{name}_batch"


def attempt(name: str) -> str:
    return f"{name}_attempt"


def paths_tag(name: str, paths: Sequence[str]) -> dict[str, str]:
    """The paths a run processes, one per line, as many as fit (then ``... and N more``)."""
    escaped = [escape_path(p) for p in paths]
    listed: list[str] = []
    size = 0
    for path in escaped[:MAX_LISTED]:
        if size + len(path) + 1 > MAX_PATHS_CHARS:
            break
        listed.append(path)
        size += len(path) + 1
    text = "\n".join(listed)
    if len(listed) < len(escaped):
        text += f"\n... and {len(escaped) - len(listed)} more"
    return {f"{name}_paths": text}


def run_key(name: str, snapshot: str, batch_number: int, attempt_number: int) -> str:
    return f"{name}-{snapshot[:16]}-b{batch_number}-a{attempt_number}"


def describe_paths(paths: Sequence[str], limit: int = 5) -> str:
    """A short human list: ``a.csv, b.csv and 3 more``."""
    shown = [escape_path(p) for p in paths[:limit]]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
