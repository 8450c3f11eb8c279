"""How the CLI prints: colours, escaped paths, JSON, the status page, log lines, progress.

Only formatting lives here; ``manifest.cli`` parses, calls the engine and picks a printer.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from manifest.model import ChangeSet, TreeEntry
from manifest.repo import LogEntry, Status
from manifest.text import C_ESCAPES, escape_text


def quote_path(path: str) -> str:
    """A path as git prints it: as is when plain, else C-quoted in double quotes."""
    escaped = escape_text(path)
    if escaped == path and '"' not in path and "\\" not in path:
        return path
    body = "".join(C_ESCAPES.get(ch, ch) if ch in '"\\' else ch for ch in path)
    return '"' + escape_text(body) + '"'


def to_json(data: Any) -> str:
    """JSON with undecodable name bytes as ``\\udcXX`` escapes (reversible, see docs)."""
    text = json.dumps(data, ensure_ascii=False, indent=2)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def echo(text: str = "") -> None:
    """A line on standard output (as ``typer.echo``, without importing Typer: ``manifest
    status`` runs without it). Colour is decided by :func:`paint`, not stripped here."""
    sys.stdout.write(f"{text}\n")


def print_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")


_FORCED_COLOR: list[bool] = []


def use_color() -> bool:
    if _FORCED_COLOR:
        return _FORCED_COLOR[-1]
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def forced_color(on: bool) -> Iterator[None]:
    """Decide colour once (for output that goes to a pager, not straight to the terminal)."""
    _FORCED_COLOR.append(on)
    try:
        yield
    finally:
        _FORCED_COLOR.pop()


def paint(text: str, color: str) -> str:
    if not use_color():
        return text
    codes = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "dim": "2", "bold": "1"}
    return f"\033[{codes[color]}m{text}\033[0m"


def iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return (
        datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def ago(ns: int | None) -> str:
    if ns is None:
        return ""
    seconds = max(0, time.time() - ns / 1e9)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = int(seconds)
    return f"{n} second{'s' if n != 1 else ''} ago"


def short(oid: str | None) -> str:
    return oid[:12] if oid else "(unset)"


def changes_json(changes: ChangeSet) -> dict[str, Any]:
    return {
        "added": list(changes.added),
        "modified": list(changes.modified),
        "removed": list(changes.removed),
        "renamed": [{"from": a, "to": b} for a, b in changes.renamed],
        "requeued": list(changes.requeued),
    }


# A change list longer than this starts with a summary by kind and top-level folder.
SUMMARY_AFTER: Final = 20


def summarize(changes: ChangeSet) -> list[str]:
    """Counts per kind, then per top-level folder (most changed first)."""
    kinds = [
        f"{len(paths)} {label}"
        for label, paths in (
            ("added", changes.added),
            ("modified", changes.modified),
            ("removed", changes.removed),
            ("renamed", changes.renamed),
        )
        if paths
    ]
    by_top: dict[str, int] = {}
    for path in changes.paths:
        top = path.split("/", 1)[0] + "/" if "/" in path else "(top level)"
        by_top[top] = by_top.get(top, 0) + 1
    lines = [f"  {len(changes.paths)} paths: " + ", ".join(kinds)]
    for top, count in sorted(by_top.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {count:>8}  {quote_path(top)}")
    return lines


def print_changes(changes: ChangeSet, indent: str = "\t", limit: int | None = None) -> None:
    """Each change on a line (``limit`` per kind, then ``... and N more``)."""
    renamed_new = {b for _, b in changes.renamed}
    renamed_old = {a for a, _ in changes.renamed}
    for label, paths, color in (
        ("added", [p for p in changes.added if p not in renamed_new], "green"),
        ("modified", list(changes.modified), "yellow"),
        ("removed", [p for p in changes.removed if p not in renamed_old], "red"),
        ("requeued", list(changes.requeued), "cyan"),
    ):
        shown = paths if limit is None else paths[:limit]
        for path in shown:
            echo(paint(f"{indent}{label + ':':<10}{quote_path(path)}", color))
        if len(shown) < len(paths):
            echo(paint(f"{indent}... and {len(paths) - len(shown)} more {label}", "dim"))
    renames = changes.renamed if limit is None else changes.renamed[:limit]
    for old, new in renames:
        echo(paint(f"{indent}{'renamed:':<10}{quote_path(old)} -> {quote_path(new)}", "cyan"))
    if len(renames) < len(changes.renamed):
        echo(paint(f"{indent}... and {len(changes.renamed) - len(renames)} more renamed", "dim"))


class HashProgress:
    """Progress on stderr once a scan takes more than a moment, only on a terminal.

    ``expected`` is what the previous walk found (``last``'s file and byte counts), or a
    function that reads it, called only when the display starts (a scan the journal answers
    never reads it): with it the display shows how far the walk is against that total, and
    an ETA."""

    DELAY = 0.5

    def __init__(
        self,
        expected: tuple[int, int] | Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self.enabled = sys.stderr.isatty() and "NO_COLOR" not in os.environ
        self.expected = expected
        self.started = time.monotonic()
        self.files = 0
        self.bytes = 0
        self.walked_files = 0
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, nbytes: int) -> None:
        """One file hashed."""
        self.files += 1
        self.bytes += nbytes
        self._show()

    def walked(self, files: int, nbytes: int) -> None:
        """The walk has recorded ``files`` files so far (called once per folder)."""
        self.walked_files = files
        self._show()

    def _show(self) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.started < self.DELAY:
                return
            self._start()
        self.bar.update(
            self.task, completed=self.walked_files, files=self.files, mib=self.bytes / 2**20
        )

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        hashed = TextColumn("hashed {task.fields[files]} files, {task.fields[mib]:.1f} MiB")
        if callable(self.expected):
            self.expected = self.expected()
        if self.expected is not None and self.expected[0] > 0:
            columns: tuple[Any, ...] = (
                SpinnerColumn(),
                TextColumn("scanned {task.completed:,.0f} of ~{task.total:,.0f} files;"),
                hashed,
                BarColumn(),
                TimeRemainingColumn(),
            )
            total: float | None = float(self.expected[0])
        else:
            columns, total = (SpinnerColumn(), hashed), None
        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("scan", total=total, files=0, mib=0.0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def status_json(status: Status) -> dict[str, Any]:
    return {
        "root": status.root,
        "store": status.store,
        "mode": status.mode,
        "last": status.last,
        "pending": status.pending,
        "last_moved": iso(status.last_moved_ns),
        "pending_moved": iso(status.pending_moved_ns),
        "pending_reason": status.pending_reason,
        **changes_json(status.changes),
        "unstable": list(status.unstable),
        "problems": [{"path": p.path, "message": p.message} for p in status.problems],
        "skipped": list(status.skipped),
        "files": status.files,
        "stale_locks": list(status.stale_locks),
        "scan": {"source": status.scan_source, "reason": status.scan_reason},
        "pending_failure": None
        if status.pending_failure is None
        else {
            "runs": list(status.pending_failure.runs),
            "message": status.pending_failure.message,
            "time": iso(status.pending_failure.time_ns),
        },
    }


def print_status(st: Status, cooldown: float, limit: int | None = None) -> None:
    echo(f"root:    {quote_path(st.root)}")
    echo(f"store:   {quote_path(st.store)} ({st.mode})")
    moved = f"  moved {iso(st.last_moved_ns)} ({ago(st.last_moved_ns)})" if st.last else ""
    echo(f"last:    {short(st.last)}{moved}")
    failure = st.pending_failure
    if st.pending and failure is not None:
        echo(
            paint(
                f"pending: {short(st.pending)}  processing FAILED, retries stopped "
                f"{iso(failure.time_ns)} ({ago(failure.time_ns)})",
                "red",
            )
        )
        echo(f"         runs: {', '.join(failure.runs) or '(none)'}")
        echo(
            "         fix the cause, then edit the data (its paths are requested again) or "
            "roll back: manifest reset pending --delete --force"
        )
    elif st.pending:
        reason = st.pending_reason or ""
        what = (
            "previewed: no run launched yet, the next tick requests it"
            if reason.startswith("previewed")
            else "handed to a run (the Dagster tick's message says whether it runs or waits)"
        )
        echo(
            f"pending: {short(st.pending)}  set {iso(st.pending_moved_ns)} "
            f"({ago(st.pending_moved_ns)}); {what}"
        )
        if reason:
            echo(paint(f"         {escape_text(reason)}", "dim"))
    else:
        echo("pending: (none)")
    echo("")
    if st.last is None:
        echo(
            "No `last` yet, so everything counts as added: the first Dagster tick (or "
            "`manifest snapshot --ref last`) records a baseline."
        )
    if st.changes:
        base = "since last" if st.last else "(no last yet)"
        scanned = f"{st.files} file" if st.files == 1 else f"{st.files} files"
        echo(f"Changes {base} ({scanned} scanned):")
        if st.last:
            echo('  (use "manifest diff last" for the same list, or "manifest reset" to roll back)')
        if len(st.changes.paths) > SUMMARY_AFTER:
            for line in summarize(st.changes):
                echo(line)
        print_changes(st.changes, limit=limit)
        echo("")
    if st.unstable:
        echo(f"Settling (modified in the last {cooldown:g}s; picked up once they settle):")
        shown = st.unstable if limit is None else st.unstable[:limit]
        for path in shown:
            echo(paint(f"\t{quote_path(path)}", "dim"))
        if len(shown) < len(st.unstable):
            echo(paint(f"\t... and {len(st.unstable) - len(shown)} more", "dim"))
        echo("")
    if st.problems:
        echo("Scan problems (each kept as it was in last, unless it says otherwise):")
        for problem in st.problems:
            echo(paint(f"\t{quote_path(problem.path)}: {problem.message}", "red"))
        echo("")
    if st.skipped:
        echo(
            "Left out (not files the store records: FIFOs, sockets, devices, or data "
            "named like the store inside the root):"
        )
        for path in st.skipped:
            echo(paint(f"\t{quote_path(path)}", "dim"))
        echo("")
    if st.stale_locks:
        echo("Locks left by a crash (their process is gone; the next writer takes them over):")
        for lock in st.stale_locks:
            echo(paint(f"\t{quote_path(lock)}", "yellow"))
        echo("")
    bucket = st.root.partition("://")[0].isalnum() and "://" in st.root  # its events' journal
    if st.scan_source == "journal" and not bucket:
        # nothing changed: no folder listed; else only the changed paths' folders were
        walk = "no walk" if st.scan_reason.startswith("no change") else "no full walk"
        shows = escape_text(st.scan_reason)
        echo(paint(f"({walk}: the watcher's journal shows {shows})", "dim"))
    elif st.scan_source in ("journal", "events"):
        echo(paint(f"(no listing: {escape_text(st.scan_reason)})", "dim"))
    elif st.scan_reason and st.scan_reason != "no watcher":
        what = "listed the bucket" if bucket else "walked the tree"
        echo(paint(f"({what}: {escape_text(st.scan_reason)})", "dim"))
    if not st.changes:
        echo(f"nothing changed since last ({st.files} file{'' if st.files == 1 else 's'})")


def log_json(entry: LogEntry) -> dict[str, Any]:
    counts = entry.counts
    return {
        "id": entry.id,
        "previous": entry.previous,
        "time": iso(entry.time_ns),
        "reason": entry.reason,
        "runs": list(entry.runs),
        "counts": None
        if counts is None
        else {
            "files": counts.files,
            "added": counts.added,
            "modified": counts.modified,
            "removed": counts.removed,
            "requeued": counts.requeued,
        },
    }


def entry_json(path: str, entry: TreeEntry, mode: str) -> dict[str, Any]:
    kind = {0: "file", 2: "symlink"}.get(entry.kind, "file")
    recorded = mode == "mtime_size" and kind == "file"  # content mode records no mtime
    return {
        "path": path,
        "kind": kind,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns if recorded else None,
        "fingerprint": entry.fingerprint,
    }
