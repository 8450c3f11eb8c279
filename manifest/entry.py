"""The program's entry (the ``manifest`` console script, ``python -m manifest``).

``manifest status`` is the command people and prompts run most, and its answer from the
watcher's journal costs a few milliseconds; importing Typer and Click to parse three words
costs more than that, and importing the engine more again. So the entry reads the plain
forms of ``status`` itself (:mod:`manifest.statusline`). When a watcher runs for the store,
its command server answers the line (:mod:`manifest.client`, :mod:`manifest.server`): this
process then imports no engine at all. Else it runs the very function the Typer command runs
(:func:`manifest.commands.show_status`). Anything else, an error included (a missing or bad
value, an unknown word, ``--help``, completion), goes to the Typer app (``manifest.cli``), so
every message, help text and exit code is Typer's. ``tests/cli/test_entry.py`` holds the two
to the same options and output; ``tests/test_server.py`` the server to the program.
"""

from __future__ import annotations

import os
import sys

# the quick path's parser: its own module, as the command server reads the line it is sent
from manifest.statusline import (
    GROUP_FLAGS,
    GROUP_VALUES,
    STATUS_FLAGS,
    STATUS_VALUES,
    parse_status,
)

TYPE_CHECKING = False  # typing is not imported on the quick path
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["GROUP_FLAGS", "GROUP_VALUES", "STATUS_FLAGS", "STATUS_VALUES", "main", "parse_status"]


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
        if argv is not None:  # called from Python, not as the program: no shortcut
            raise SystemExit(code)
        # Answered. Nothing is left to tear down (this process imported no engine, holds no
        # file but its streams, registered nothing to run at exit), and tearing the
        # interpreter down costs ~5 ms here, a seventh of a served status: leave at once.
        for stream in (sys.stdout, sys.stderr):
            try:  # (contextlib.suppress: an import this path does without)  # noqa: SIM105
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass  # a closed pipe or stream: its bytes are lost either way
        os._exit(code)
    from manifest.commands import Options, enter, show_status

    try:
        enter(group.pop("directory", None))
        show_status(Options(**group), **command)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # Ctrl-C: no traceback, as the served status
    raise SystemExit(0)
