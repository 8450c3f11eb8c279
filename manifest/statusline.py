"""A plain ``manifest status`` line, read without Typer: ``[-C DIR] [--root P] [--store P]
[--name N] [--mode M] [--cooldown S] [--no-pager] status [--json] [--exit-code] [--limit N]
[--fingerprints]`` (``--opt=value`` too), each option at most once. The program
(``manifest.entry``) runs such a line itself, or hands it to the watcher's command server
(``manifest.server``), which reads it again here; any other line goes to the Typer app.

This module imports nothing: it runs before anything else.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# The group's options that take a value (-> Options' field, or "directory" for -C), its
# flags, and the status command's: exactly those the Typer app declares (a test holds
# them equal); --version, --help and completion are left to Typer.
GROUP_VALUES = {
    "-C": "directory",
    "--root": "root",
    "--store": "store",
    "--name": "name",
    "--mode": "mode",
    "--cooldown": "cooldown",
}
GROUP_FLAGS = {"--no-pager": "no_pager"}
STATUS_VALUES = {"--limit": "limit"}
STATUS_FLAGS = {"--json": "as_json", "--exit-code": "exit_code", "--fingerprints": "fingerprints"}


def _take(
    argv: Sequence[str],
    i: int,
    values: dict[str, str],
    flags: dict[str, str],
    seen: dict[str, Any],
) -> int | None:
    """Read the option at ``argv[i]`` into ``seen``; the index after it, or None when it is
    not one of ``values``/``flags`` in a plain form (then Typer reads the whole line)."""
    word = argv[i]
    name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
    if name in flags and not eq:
        key, step = flags[name], 1
        value_or_flag: str | bool = True
    elif name in values:
        if eq:
            step = 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, step = argv[i + 1], 2
        else:
            return None  # a missing value, or one that looks like an option: Typer says
        key, value_or_flag = values[name], value
    else:
        return None
    if key in seen:
        return None  # given twice: Typer's rule (the last wins) applies, not ours
    seen[key] = value_or_flag
    return i + step


def parse_status(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(group options, status options)`` when ``argv`` is a plain ``status`` line, as the
    Typer app would parse it; else None."""
    group: dict[str, Any] = {}
    i = 0
    while i < len(argv) and argv[i] != "status":
        step = _take(argv, i, GROUP_VALUES, GROUP_FLAGS, group)
        if step is None:
            return None
        i = step
    if i == len(argv):
        return None
    i += 1
    command: dict[str, Any] = {}
    while i < len(argv):
        step = _take(argv, i, STATUS_VALUES, STATUS_FLAGS, command)
        if step is None:
            return None
        i = step
    try:
        if "cooldown" in group:
            group["cooldown"] = float(group["cooldown"])
        if "limit" in command:
            command["limit"] = int(command["limit"])
            if command["limit"] < 1:
                return None
    except ValueError:
        return None
    return group, command
