"""The program's entry (the ``manifest`` console script, ``python -m manifest``).

``manifest status`` is the command people and prompts run most, and at a million files its
answer from the watcher's journal costs ~25 ms of CPU; importing Typer and Click to parse
three words costs more than that. So the entry reads the plain forms of ``status`` itself,
``[-C DIR] [--root P] [--store P] [--name N] [--mode M] [--cooldown S] [--no-pager] status
[--json] [--exit-code] [--limit N] [--fingerprints]`` (``--opt=value`` too), each option at
most once, and runs the very function the Typer command runs (:func:`show_status`).
Anything else, an error included (a missing or bad value, an unknown word, ``--help``,
completion), goes to the Typer app (``manifest.cli``), so every message, help text and exit
code is Typer's. ``tests/cli/test_entry.py`` holds the two to the same options and output.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported on the quick path
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# -- the quick path ---------------------------------------------------------------------------

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


def main(argv: Sequence[str] | None = None) -> None:
    """The ``manifest`` program: the quick path for a plain ``status``, else Typer."""
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = None if "_MANIFEST_COMPLETE" in os.environ else parse_status(args)
    if parsed is None:
        from manifest.cli import app

        app(args, prog_name="manifest")
        return
    group, command = parsed
    from manifest.client import serve_status

    code = serve_status(args, group)  # the watcher for the store answers, when one runs
    if code is not None:
        raise SystemExit(code)
    from manifest.commands import Options, enter, show_status

    enter(group.pop("directory", None))
    show_status(Options(**group), **command)
    raise SystemExit(0)
