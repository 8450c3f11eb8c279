"""What every ``manifest`` command shares, without Typer: :class:`Options` (the group's
options), :func:`enter` (``-C``), :func:`handle_errors` (expected errors: one line, the
documented exit code), :func:`pager`, and :func:`show_status`, the body of ``manifest
status`` that both the Typer command (``manifest.cli``) and the program's quick path
(``manifest.entry``) run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

from manifest.errors import EXIT_MANIFEST_ERROR as EXIT_ERROR
from manifest.errors import ManifestError

if TYPE_CHECKING:
    from manifest.config import Config
    from manifest.format import HashProgress
    from manifest.repo import Repository

P = ParamSpec("P")
R = TypeVar("R")

EXIT_DIFFERENCES = 1
EXIT_SIGPIPE = 141  # 128 + SIGPIPE, what git and a shell pipeline report
# Set in a command server's child (manifest.server): a page goes back to the client, whose
# terminal the pager needs, instead of to a pager started here.
PAGE_TO: Callable[[str], None] | None = None


class Options:
    """The group's options (before the command's name), as every command sees them."""

    def __init__(
        self,
        root: str | None = None,
        store: str | None = None,
        mode: str | None = None,
        cooldown: float | None = None,
        no_pager: bool = False,
        name: str | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.store = store
        self.mode = mode
        self.cooldown = cooldown
        self.no_pager = no_pager
        self._config: Config | None = None

    def config(self) -> Config:
        """The resolved settings (resolved once)."""
        if self._config is None:
            self._config = self._load()
        return self._config

    def _load(self) -> Config:
        from manifest.config import load_config

        return load_config(
            root=self.root,
            store=self.store,
            mode=self.mode,
            cooldown_sec=self.cooldown,
            discover=True,
            name=self.name,
        )

    def repository(self, *, must_exist: bool | None = True) -> Repository:
        """The repository; a command that reads (``must_exist``) refuses a missing store and
        names where it looked. ``None``: only a store named explicitly (--store,
        RAW_STATE_DIR) may be created on the fly, as `snapshot` does."""
        from manifest.errors import NoStoreError
        from manifest.repo import Repository

        config = self.config()
        if must_exist is None:
            must_exist = config.store_source in ("found", "default")
        repo = Repository(config)
        if must_exist and not repo.exists():
            raise NoStoreError(
                config.store_text, (str(p) for p in config.searched), config.store_source
            )
        return repo


def enter(directory: str | None) -> None:
    """``-C DIR``, and a current folder that still exists (every command starts here)."""
    from manifest.text import escape_text

    if directory is not None:
        try:
            os.chdir(directory)
        except OSError as exc:
            sys.stderr.write(
                f"manifest: error: -C {escape_text(directory)}: {exc.strerror}; "
                "give an existing folder\n"
            )
            raise SystemExit(EXIT_ERROR) from None
    try:
        os.getcwd()
    except FileNotFoundError:
        sys.stderr.write(
            "manifest: error: the current folder no longer exists (it was deleted or moved); "
            "cd to an existing folder, or give one with -C DIR\n"
        )
        raise SystemExit(EXIT_ERROR) from None


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Expected errors: one line on stderr, no traceback, the error's exit code. Any OS
    error the engine did not name (or one writing the output) is exit 3, never 1 (which
    means "differences found")."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a full or closed output fails here, not at exit
            return result
        except ManifestError as exc:
            fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            _quiet_exit()
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "standard output"
            what = exc.strerror or str(exc)
            fail(
                f"{os.fsdecode(where)}: {what}; check the path, its permissions and free space",
                EXIT_ERROR,
            )
        raise AssertionError("unreachable")

    return wrapper


def _quiet_exit() -> NoReturn:
    """The reader of standard output quit early (`manifest log | head`): no error, as git
    and every Unix tool; exit 141 without a word. Nothing more may reach the closed pipe."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    raise SystemExit(EXIT_SIGPIPE)


def fail(message: str, code: int) -> NoReturn:
    from manifest.text import escape_text

    with contextlib.suppress(OSError):
        sys.stderr.write(f"manifest: error: {escape_text(message)}\n")
        sys.stderr.flush()
    # Nothing more may reach a broken stdout (Python would complain at exit).
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    raise SystemExit(code)


def with_progress(fn: Callable[[HashProgress], R], repo: Repository | None = None) -> R:
    from manifest.format import HashProgress

    progress = HashProgress(repo.expected_size if repo is not None else None)
    try:
        return fn(progress)
    finally:
        progress.close()


class _PagerBuffer(io.StringIO):
    """Collects a page; says it is a terminal, so the colours stay for less -R to show."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def pager(options: Options) -> Iterator[None]:
    """On a terminal, page what the block prints through $PAGER (``less -FRX``: quits at
    once when it fits), as git does; ``--no-pager`` or a pipe prints it unchanged."""
    from manifest import format as format_module
    from manifest.client import pager_command, run_pager

    command = pager_command(os.environ)
    if options.no_pager or not sys.stdout.isatty() or command.strip() in ("", "cat"):
        yield
        return
    buffer = _PagerBuffer()
    with format_module.forced_color(format_module.use_color()), contextlib.redirect_stdout(buffer):
        yield
    text = buffer.getvalue()
    if PAGE_TO is not None:
        PAGE_TO(text)
        return
    run_pager(command, text)


@handle_errors
def show_status(
    options: Options,
    as_json: bool = False,
    exit_code: bool = False,
    limit: int | None = None,
    fingerprints: bool = False,
) -> None:
    """``manifest status``: the body of the Typer command and of the quick path alike."""
    from manifest.format import print_json, print_status, status_json

    repo = options.repository()
    st = with_progress(
        lambda progress: repo.status(
            on_hash=progress, on_walk=progress.walked, details=fingerprints
        ),
        repo,
    )
    if as_json:
        data = status_json(st)
        if fingerprints:
            import msgspec

            data["changes"] = msgspec.to_builtins(st.details)
        print_json(data)
    else:
        with pager(options):
            print_status(st, repo.config.cooldown_sec, limit=limit)
    if exit_code and st.changes:
        raise SystemExit(EXIT_DIFFERENCES)
