"""The ``manifest`` command: parses, calls the engine (``manifest.repo``), formats.

Exit codes (a contract, see docs/cli.md): 0 success; 1 differences (only with
``--exit-code``); 2 usage error; 3 manifest error; 4 lock held or compare-and-swap lost;
141 the output's reader quit early (quietly, as git).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import msgspec
import typer

from manifest import __version__
from manifest.commands import (
    EXIT_DIFFERENCES,
    Options,
    enter,
    fail,
    handle_errors,
    pager,
    show_status,
    with_progress,
)
from manifest.config import (
    DEFAULT_DATA_DIR,
    ENV_DATA_DIR,
    ENV_STATE_DIR,
    FALLBACK_STATE_DIR,
    default_store,
    load_config,
    parse_duration,
    parse_seconds,
)
from manifest.errors import EXIT_MANIFEST_ERROR as EXIT_ERROR
from manifest.errors import ManifestError
from manifest.format import (
    changes_json,
    entry_json,
    iso,
    log_json,
    paint,
    print_changes,
    print_json,
    quote_path,
    short,
)
from manifest.globs import PathFilter
from manifest.location import absolute_location
from manifest.maintenance import DEFAULT_EXPIRE
from manifest.repo import GC_GRACE_SECONDS, LogEntry, Repository
from manifest.scanresult import ScanResult
from manifest.text import escape_text

LOG_PAGE = 50  # moves `manifest log` shows on a terminal without -n


class _Commands(MutableMapping[str, Any]):
    """The group's commands, each turned into its click form when it is first looked up:
    one invocation builds the command it runs, not all of them (Typer reads every command's
    signature and annotations to build one; for all of them that was most of the CPU a
    quick ``manifest status`` spent outside the engine). Help and completion list them all
    and build each, as before."""

    def __init__(self, infos: dict[str, Any], build: Callable[[Any], Any]) -> None:
        self._infos = infos
        self._build = build
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self._build(self._infos[name])  # KeyError: no such command
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command
        self._infos.setdefault(name, None)

    def __delitem__(self, name: str) -> None:
        del self._infos[name]
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)


class _App(typer.Typer):
    """The ``manifest`` command: a Typer app whose group builds its commands lazily when it
    runs as the program (``typer.testing`` builds them all, as ``typer.main.get_command``
    does; both parse and run the same commands)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import copy

        import typer.main as typer_main

        shell = copy.copy(self)
        shell.registered_commands = []  # the group itself: callback, options, completion
        group: Any = typer_main.get_command(shell)
        infos = {
            info.name or typer_main.get_command_name(info.callback.__name__): info
            for info in self.registered_commands
            if info.callback is not None
        }
        group.commands = _Commands(
            infos,
            functools.partial(
                typer_main.get_command_from_info,
                pretty_exceptions_short=self.pretty_exceptions_short,
                rich_markup_mode=self.rich_markup_mode,
            ),
        )
        return group(*args, **kwargs)


app = _App(
    name="manifest",
    help="Content-addressed manifests of the raw data tree, with git-style snapshots.\n\n"
    "Example: manifest status",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

P = ParamSpec("P")
R = TypeVar("R")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"manifest {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    ctx: typer.Context,
    directory: Annotated[
        str | None,
        typer.Option(
            "-C",
            metavar="DIR",
            help="Run as if started in DIR (the store is found from there, like git -C).",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            metavar="PATH",
            help="Data root [env RAW_DATA_DIR; the store's config.toml; default data/1_raw].",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="PATH",
            help="State store [env RAW_STATE_DIR; else the nearest .manifest found walking "
            "up from the current folder; else the Dagster glue's store under "
            "$DAGSTER_HOME/state (see --name); else ./.manifest].",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The store of change_detection(name=NAME): $DAGSTER_HOME/state/NAME "
            "[default: the only store there, else raw].",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            metavar="MODE",
            help="content_hash or mtime_size [env RAW_SCAN_HASH_MODE; config.toml; "
            "default content_hash].",
            show_default=False,
        ),
    ] = None,
    cooldown: Annotated[
        float | None,
        typer.Option(
            "--cooldown",
            metavar="SECONDS",
            help="Seconds a file must be left alone before it counts "
            "[env RAW_SCAN_COOLDOWN_SEC; default 3].",
            show_default=False,
        ),
    ] = None,
    no_pager: Annotated[
        bool,
        typer.Option("--no-pager", help="Print everything at once, even on a terminal."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    enter(directory)
    ctx.obj = Options(root, store, mode, cooldown, no_pager, name)


def complete_refs(incomplete: str) -> list[str]:
    """Shell completion: the refs of the store found from the current folder."""
    try:
        names = Options(None, None, None, None).repository().ref_names()
    except ManifestError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def complete_revisions(incomplete: str) -> list[str]:
    """Shell completion: refs, and ``REF@{n}`` for each move of a ref's log."""
    try:
        repo = Options(None, None, None, None).repository()
        names = repo.ref_names()
        if "@" in incomplete:
            ref = incomplete.split("@", 1)[0]
            moves = len(repo.log(ref)) if ref in names else 0
            return [
                f"{ref}@{{{n}}}" for n in range(moves) if f"{ref}@{{{n}}}".startswith(incomplete)
            ]
    except ManifestError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _repo(ctx: typer.Context, *, must_exist: bool | None = True) -> Repository:
    options: Options = ctx.obj
    return options.repository(must_exist=must_exist)


# -- commands -------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (see docs/cli.md).")]
ExitCodeOpt = Annotated[
    bool, typer.Option("--exit-code", help="Exit 1 when there are differences.")
]
FingerprintsOpt = Annotated[
    bool,
    typer.Option(
        "--fingerprints",
        help="With --json: each change's old and new fingerprint (size, mtime, digest).",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", metavar="N", help="List at most N paths of each kind.", min=1, show_default=False
    ),
]


@app.command()
@handle_errors
def init(
    ctx: typer.Context,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            metavar="PATH",
            help="The data root to record [default data/1_raw].",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            metavar="MODE",
            help="content_hash or mtime_size [default content_hash].",
            show_default=False,
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="GLOB",
            help="A glob of files to record (repeatable; all if none).",
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="A glob of files to ignore (repeatable).",
            show_default=False,
        ),
    ] = None,
    events_queue: Annotated[
        str | None,
        typer.Option(
            "--events-queue",
            metavar="URL",
            help="For an s3:// root: the SQS queue its event notifications go to, so a tick "
            "reads only the keys that changed (docs/operations.md, Bucket events); 'none' "
            "drops it.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Record new settings in an existing store (those not given are kept); the "
            "next scan reports what a new root or filter adds or leaves out.",
        ),
    ] = False,
) -> None:
    """Create a store (./.manifest, --store, or --name) and record its settings in
    config.toml.

    From then on every command run anywhere below this folder finds the store by walking up,
    like git finds .git, and resolves the root relative to it.

    Example: manifest init --root data/1_raw --exclude "**/*.tmp"
    """
    options: Options = ctx.obj
    cwd = Path.cwd()
    named = options.store or os.environ.get(ENV_STATE_DIR, "").strip()
    if named:
        store_arg: str | Path = str(absolute_location(named, "--store", cwd))
    elif options.name:
        store_arg = default_store(os.environ, cwd, options.name)
    else:
        store_arg = cwd / FALLBACK_STATE_DIR
    recorded = None
    if force:
        # --force keeps what it is not told: the store's recorded settings are the base
        recorded = load_config(store=store_arg, env={})  # what it records, nothing else
    root_text = root or options.root or os.environ.get(ENV_DATA_DIR)
    if root_text is None:
        root_text = recorded.root_text if recorded is not None else DEFAULT_DATA_DIR
    include_t = tuple(include) if include else None
    exclude_t = tuple(exclude) if exclude else None
    queue = events_queue
    if queue is None and recorded is not None:
        queue = recorded.events_queue
    elif queue is not None and queue.strip().lower() == "none":
        queue = ""
    config = load_config(
        events_queue=queue,
        root=root_text,
        store=store_arg,
        mode=mode or options.mode or (recorded.mode if recorded is not None else None),
        include=include_t if include_t is not None or recorded is None else recorded.include,
        exclude=exclude_t if exclude_t is not None or recorded is None else recorded.exclude,
        ignore_recorded=True,
    )
    PathFilter(config.include, config.exclude)  # refuse bad globs before writing anything
    Repository(config).init(force=force)
    typer.echo(
        f"Initialized a manifest store in {quote_path(config.store_text)} "
        f"(root {quote_path(config.root_text)}, {config.mode})"
    )


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    exit_code: ExitCodeOpt = False,
    limit: LimitOpt = None,
    fingerprints: FingerprintsOpt = False,
) -> None:
    """Show the working tree against `last`, and where `last` and `pending` point.

    Long lists start with counts per kind and per top-level folder.

    Example: manifest status --limit 20
    """
    show_status(ctx.obj, as_json, exit_code, limit, fingerprints)


@app.command()
@handle_errors
def snapshot(
    ctx: typer.Context,
    ref: Annotated[
        str | None, typer.Option("--ref", metavar="REF", help="Move this ref to the snapshot.")
    ] = None,
    message: Annotated[
        str, typer.Option("-m", "--message", metavar="MESSAGE", help="Snapshot message.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Scan and store a snapshot; print its id.

    Example: manifest snapshot -m "before the backfill" --ref before-backfill
    """
    repo = _repo(ctx, must_exist=None)
    scans: list[ScanResult] = []
    sid, changes = with_progress(
        lambda progress: repo.snapshot(
            message=message,
            ref=ref,
            on_hash=progress,
            on_walk=progress.walked,
            on_scan=scans.append,
        ),
        repo,
    )
    if as_json:
        print_json(
            {**_where(repo), "id": sid, "ref": ref, **changes_json(changes), **_scan_json(scans)}
        )
    else:
        typer.echo(sid)
    if ref is None and not as_json:
        sys.stderr.write(
            f"manifest: warning: no ref points at {sid[:12]}, so a later `manifest gc` removes "
            f"it; keep it with: manifest reset --create <name> {sid}\n"
        )


@app.command()
@handle_errors
def log(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="The ref whose history to show.", autocompletion=complete_refs)
    ] = "last",
    limit: Annotated[
        int | None, typer.Option("-n", metavar="N", help="Show at most N moves.", min=1)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The history of a ref, newest first: each move, when, and why.

    Example: manifest log last -n 5
    """
    repo = _repo(ctx)
    if limit is None and not as_json and sys.stdout.isatty():
        limit = LOG_PAGE  # a terminal gets a page; older moves on request
    entries = repo.log(ref, limit)
    if as_json:
        print_json([log_json(e) for e in entries])
        return
    with pager(ctx.obj):
        if not entries:
            typer.echo(f"{ref} has never moved")
        for n, e in enumerate(entries):
            typer.echo(
                f"{paint(short(e.id), 'yellow')}  {iso(e.time_ns)}  {ref}@{{{n}}}  "
                f"{escape_text(e.reason)}  ({_move_summary(repo, e)})"
            )
            typer.echo(paint(f"    from {short(e.previous)}", "dim"))
            if e.runs:
                typer.echo(paint(f"    runs {', '.join(e.runs)}", "dim"))
        if limit is not None and len(entries) == limit:
            total = repo.count_moves(ref)
            if total > limit:
                typer.echo(
                    paint(f"... {total - limit} older moves: manifest log {ref} -n {total}", "dim")
                )


def _move_summary(repo: Repository, e: LogEntry) -> str:
    """A snapshot's own counts (against its parent) for a move by the cycle or `snapshot`;
    for a move by hand, the size of the move itself: from -> to, and the diff between."""
    if e.id is None:
        return "unset"
    if e.reason.startswith(("reset by hand", "deleted by hand")) or (
        e.counts is not None and e.previous is not None and e.parent != e.previous
    ):
        try:
            moved = repo.diff_snapshots(e.previous, e.id)
        except ManifestError:
            return f"{short(e.previous)} -> {short(e.id)}"
        return (
            f"{short(e.previous)} -> {short(e.id)}: +{len(moved.added)} ~{len(moved.modified)} "
            f"-{len(moved.removed)}"
        )
    if e.counts is None:
        return "snapshot no longer stored"
    c = e.counts
    requeued = f", {c.requeued} requeued" if c.requeued else ""
    return f"+{c.added} ~{c.modified} -{c.removed}{requeued}, {_plural(c.files, 'file')}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _scan_json(scans: list[ScanResult]) -> dict[str, Any]:
    """What a scan left out, as `status --json` says it: problems and settling paths."""
    if not scans:
        return {}
    result = scans[-1]
    return {
        "problems": [{"path": p.path, "message": p.message} for p in result.problems],
        "unstable": list(result.unstable),
    }


def _where(repo: Repository) -> dict[str, str]:
    """The store and root a command used, for its JSON."""
    return {"store": repo.config.store_text, "root": repo.config.root_text}


@app.command()
@handle_errors
def diff(
    ctx: typer.Context,
    old: Annotated[
        str,
        typer.Argument(
            help="Revision: id, prefix, ref, REF@{n}, REV^ or REV~N.",
            autocompletion=complete_revisions,
        ),
    ],
    new: Annotated[
        str | None,
        typer.Argument(
            help="Revision; omitted = the working tree.", autocompletion=complete_revisions
        ),
    ] = None,
    as_json: JsonOpt = False,
    exit_code: ExitCodeOpt = False,
    limit: LimitOpt = None,
    fingerprints: FingerprintsOpt = False,
) -> None:
    """What changed between two revisions, or a revision and the working tree.

    Example: manifest diff last@{1} last
    """
    repo = _repo(ctx)
    scans: list[ScanResult] = []
    changes, details = repo.diff_details(old, new, on_scan=scans.append)
    if as_json:
        data = {**_where(repo), **changes_json(changes), **_scan_json(scans)}
        if fingerprints:
            data["changes"] = msgspec.to_builtins(details)
        print_json(data)
    elif changes:
        with pager(ctx.obj):
            print_changes(changes, indent="", limit=limit)
    else:
        typer.echo("no differences")
    if exit_code and changes:
        raise typer.Exit(EXIT_DIFFERENCES)


@app.command()
@handle_errors
def show(
    ctx: typer.Context,
    rev: Annotated[
        str,
        typer.Argument(
            help="Revision: id, prefix, ref, REF@{n}, REV^ or REV~N.",
            autocompletion=complete_revisions,
        ),
    ] = "last",
    as_json: JsonOpt = False,
) -> None:
    """A snapshot's metadata and its entries.

    Example: manifest show last
    """
    repo = _repo(ctx)
    sid = repo.resolve(rev)
    snap = repo.read_snapshot(sid)
    # the order status and diff print paths in (by text, not by bytes)
    entries = sorted(repo.iter_files(sid), key=lambda item: item[0])
    if as_json:
        print_json(
            {
                **_where(repo),
                "id": sid,
                "root_tree": snap.root,
                "parent": snap.parent,
                "created": iso(snap.created_ns),
                "mode": snap.mode,
                "data_root": snap.data_root,
                "message": snap.message,
                "counts": {
                    "files": snap.counts.files,
                    "bytes": snap.counts.bytes,
                    "added": snap.counts.added,
                    "modified": snap.counts.modified,
                    "removed": snap.counts.removed,
                },
                "entries": [entry_json(p, e, snap.mode) for p, e in entries],
            }
        )
        return
    typer.echo(f"snapshot {sid}")
    typer.echo(f"tree     {snap.root}")
    typer.echo(f"parent   {snap.parent or '(none)'}")
    typer.echo(f"created  {iso(snap.created_ns)}")
    typer.echo(f"mode     {snap.mode}")
    typer.echo(f"root     {quote_path(snap.data_root)}")
    c = snap.counts
    typer.echo(f"files    {c.files} ({c.bytes} bytes); +{c.added} ~{c.modified} -{c.removed}")
    if snap.message:
        typer.echo(f"message  {escape_text(snap.message)}")
    typer.echo("")
    for path, entry in entries:
        typer.echo(f"{entry.fingerprint[:16]:<16}  {entry.size:>10}  {quote_path(path)}")


@app.command()
@handle_errors
def reset(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(help="The ref to move, usually 'last'.", autocompletion=complete_refs),
    ],
    rev: Annotated[
        str | None,
        typer.Argument(
            help="Revision to move it to (id, prefix, ref, REF@{n}, REV^, REV~N).",
            autocompletion=complete_revisions,
        ),
    ] = None,
    message: Annotated[
        str, typer.Option("-m", "--message", metavar="MESSAGE", help="Why (kept in the log).")
    ] = "",
    delete: Annotated[
        bool, typer.Option("--delete", help="Unset the ref instead (e.g. a stuck pending).")
    ] = False,
    create: Annotated[
        bool, typer.Option("--create", help="Allow a ref that does not exist yet.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Allow --delete of last or pending.")
    ] = False,
) -> None:
    """Move a ref by hand, recorded in its log: roll `last` back to reprocess.

    Example: manifest reset last last@{1} -m "reprocess after the bad template fix"
    """
    repo = _repo(ctx)
    if delete:
        if rev is not None:
            raise typer.BadParameter("give either a revision or --delete, not both")
        old = repo.delete_ref(ref, message=message, force=force)
        typer.echo(f"{ref}: {short(old)} -> (unset)")
        if old is not None:
            typer.echo(f"to undo: manifest reset --create {ref} {old}")
        return
    if rev is None:
        raise typer.BadParameter("missing revision (or pass --delete)")
    old, new = repo.reset(ref, rev, message=message, create=create)
    typer.echo(f"{ref}: {short(old)} -> {short(new)}")


@app.command()
@handle_errors
def requeue(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Paths under the root to process again.", show_default=False),
    ] = None,
    of: Annotated[
        str | None,
        typer.Option(
            "--of",
            metavar="REV",
            help="Every path the processing of REV covered (e.g. last: what the last "
            "promotion processed, requeued paths included).",
            autocompletion=complete_revisions,
            show_default=False,
        ),
    ] = None,
    message: Annotated[
        str, typer.Option("-m", "--message", metavar="MESSAGE", help="Why (kept in the log).")
    ] = "",
) -> None:
    """Have the next tick process paths again although they did not change.

    Rolling `last` back reprocesses what differs; after a promotion of restored (requeued)
    files nothing differs, so `reset last last@{1}` changes nothing: requeue them instead.

    Example: manifest requeue --of last -m "reprocess after the template fix"
    """
    repo = _repo(ctx)
    wanted = list(paths or [])
    if of is not None:
        wanted += repo.processed_by(of)
    if not wanted:
        raise typer.BadParameter("give paths to requeue, or --of REV")
    carried = repo.requeue(tuple(wanted), message=message, check=tuple(paths or ()))
    typer.echo(
        f"requeued {_plural(len(carried), 'path')}; the next tick processes "
        + ("it" if len(carried) == 1 else "them")
        + " again:"
    )
    for path in carried:
        typer.echo(f"\t{quote_path(path)}")


@app.command()
@handle_errors
def gc(
    ctx: typer.Context,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="SECONDS",
            help="Keep unreferenced objects younger than this many seconds (writers "
            "freshen what they reuse). On a local store writers on this host are excluded "
            "while gc runs, so 0 is safe when no other host shares the folder; on a bucket "
            "store at least 900 (no lock reaches other hosts) unless --alone.",
        ),
    ] = f"{GC_GRACE_SECONDS:g}",
    alone: Annotated[
        bool,
        typer.Option(
            "--alone",
            help="No process on another host writes to this store now: allow a bucket "
            "store a grace below 900 seconds.",
        ),
    ] = False,
    expire: Annotated[
        str,
        typer.Option(
            "--expire",
            metavar="AGE",
            help="First drop reflog lines older than this (90d, 12h, 3600, or never); the "
            "newest line of each reflog and the lines of current ref values are kept.",
        ),
    ] = DEFAULT_EXPIRE,
    as_json: JsonOpt = False,
) -> None:
    """Expire old reflog lines, then delete objects that no ref or reflog line reaches.

    Example: manifest gc --grace 0 --expire 30d
    """
    grace_seconds = parse_seconds(grace, "--grace")
    expire_seconds = parse_duration(expire, "--expire")
    repo = _repo(ctx)
    result = repo.gc(grace_seconds=grace_seconds, expire_seconds=expire_seconds, alone=alone)
    if as_json:
        print_json({**_where(repo), **msgspec.to_builtins(result)})
    else:
        typer.echo(
            f"expired {result.reflog_lines_expired} reflog lines; removed {result.removed} "
            f"objects ({result.removed_bytes} bytes) and {result.temp_files_removed} temp "
            f"files; kept {result.kept}"
        )


@app.command()
@handle_errors
def fsck(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Verify every object, ref and reflog; exit 3 if anything is damaged.

    Example: manifest fsck --json
    """
    repo = _repo(ctx)
    report = repo.fsck()
    if as_json:
        print_json({**_where(repo), "ok": report.ok, **msgspec.to_builtins(report)})
    else:
        for p in report.problems:
            typer.echo(
                paint(
                    f"{p.severity}: {escape_text(p.subject)}: {escape_text(p.message)}",
                    "red" if p.severity == "error" else "yellow",
                )
            )
        typer.echo(
            f"checked {report.objects} objects ({report.snapshots} snapshots), {report.refs} refs: "
            + ("ok" if report.ok else "DAMAGED")
        )
    if not report.ok:
        raise typer.Exit(3)


@app.command()
@handle_errors
def watch(
    ctx: typer.Context,
    start: Annotated[
        bool, typer.Option("--start", help="Start a watcher in the background and return.")
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the running watcher.")] = False,
    show: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show what is watched, the token, the queue, the last restart and the last "
            "scan that walked anyway, with its reason.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Watch a local root and keep a journal of what changes (Linux inotify).

    While it runs, `status`, `snapshot` and the Dagster tick ask it first and do not walk the
    tree when nothing changed since their last clean scan; any doubt (no watcher, a restart,
    an overflow, the watch limit, a folder moved in) is a full scan. Without an option it
    runs in the foreground (systemd, a supervisor, a sidecar) until stopped.

    Example: manifest watch --start
    """
    from manifest.root import watch as journal

    repo = _repo(ctx)
    root = repo.root.local_path
    if root is None:
        fail(
            f"manifest watch: {repo.root.text} is on a bucket; its changes come from the "
            "bucket's event notifications, not a watcher",
            EXIT_ERROR,
        )
    cache = repo.store.cache_dir
    if show or stop:
        answer = journal.ask(root, cache, {"op": "stop" if stop else "status"})
        if as_json:
            print_json({"root": str(root), "running": answer is not None, **(answer or {})})
        elif answer is None:
            typer.echo(f"no watcher runs for {quote_path(str(root))}")
        elif stop:
            typer.echo(f"stopped the watcher of {quote_path(str(root))}")
        else:
            restart = answer.get("last_restart") or {}
            typer.echo(
                f"watching {quote_path(str(root))} (pid {answer.get('pid')}): "
                f"{answer.get('folders')} folders, token {answer.get('token')}, "
                f"{answer.get('queued')} changes queued, {answer.get('events')} events, "
                f"{answer.get('overflows')} overflows, {answer.get('rss_kib')} KiB"
            )
            typer.echo(f"journal started {iso(restart.get('time_ns'))}: {restart.get('reason')}")
            walked = answer.get("last_walk") or {}
            typer.echo(
                f"{answer.get('questions')} scans asked, {answer.get('walks')} walked anyway"
                + (
                    f"; the last {iso(walked.get('time_ns'))}: {walked.get('reason')}"
                    if walked
                    else ""
                )
            )
            served = answer.get("commands") or {}
            if served.get("serving"):
                last = served.get("last_fallback") or {}
                typer.echo(
                    f"commands: {served.get('served')} answered, {served.get('fallbacks')} "
                    "left to the program"
                    + (f"; the last {iso(last.get('time_ns'))}: {last['reason']}" if last else "")
                )
            else:
                typer.echo(f"commands: not answered here ({served.get('reason')})")
            if answer.get("doubt"):
                typer.echo(paint(f"every scan walks: {answer['doubt']}", "yellow"))
        return
    if journal.ask(root, cache, {"op": "status"}) is not None:
        fail(f"a watcher already runs for {quote_path(str(root))}", EXIT_ERROR)
    if start:
        import subprocess

        log = cache / "watch.log"
        # -P: not the current folder first on the module path (a `manifest` package in
        # it, a checkout of something else, must not run as the watcher)
        argv = [sys.executable, "-P", "-m", "manifest", "--store", repo.store.text]
        argv += ["--root", str(root), "watch"]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while journal.ask(root, cache, {"op": "status"}) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                fail(f"the watcher did not start; see {quote_path(str(log))}", EXIT_ERROR)
            time.sleep(0.05)
        typer.echo(f"watching {quote_path(str(root))} in the background (pid {proc.pid})")
        return
    try:
        from manifest.server import CommandServer

        watcher = journal.Watcher(root, cache, CommandServer(cache))
    except OSError as exc:
        fail(f"manifest watch: cannot watch {quote_path(str(root))}: {exc}", EXIT_ERROR)
    signal.signal(signal.SIGTERM, lambda *_: watcher.stopping.set())
    typer.echo(f"watching {quote_path(str(root))} (pid {os.getpid()})", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        watcher.run()
    if watcher.exit_reason is not None:
        fail(f"manifest watch: {watcher.exit_reason}; start it again", EXIT_ERROR)


@app.command("build-client")
@handle_errors
def build_client(
    output: Annotated[
        Path | None,
        typer.Argument(
            help="Where to write it (default: manifest-fast beside this manifest program).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Compile the optional C client of the watcher's command server (needs cc or $CC).

    `manifest-fast status` is `manifest status` without starting Python when a watcher
    runs for the store: a few milliseconds. Every other line, and any it cannot serve, it
    hands to this installation's manifest program, so `alias manifest=manifest-fast` is
    safe. Build it again after upgrading manifest or Python (until then it runs the
    program).

    Example: manifest build-client
    """
    from manifest.native import build, default_output

    path = build(output if output is not None else default_output())
    typer.echo(
        f"built {quote_path(str(path))}: `{path.name} status` is answered by the watcher "
        f"without Python; everything else runs {quote_path(sys.executable)} -P -m manifest"
    )


def main() -> None:
    """The Typer app as a program (``manifest.entry.main`` is the command: it runs a plain
    ``status`` without Typer, and everything else through this app)."""
    app(prog_name="manifest")
