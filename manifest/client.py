"""The thin client of the command server: a plain ``manifest status`` answered by the
watcher that already runs for the store (``manifest watch``), as Mercurial's chg answers
``hg`` commands from a running server.

Starting Python and importing the engine costs ~80 ms, more than the answer itself when the
watcher's journal says what changed. So the program (``manifest.entry``) first finds the
store the way :func:`manifest.config.load_config` would in the common cases (``--store``,
``RAW_STATE_DIR``, the ``.manifest`` found walking up, ``$DAGSTER_HOME/state``), connects to
the command socket of a watcher for that store (an abstract Unix socket named by the store
folder's device and inode: no file to go stale), and hands over its standard input, output
and error (file descriptors, ``SCM_RIGHTS``), its folder, umask, environment and arguments.
The watcher forks a child that runs exactly what the program would run in process
(:func:`manifest.server.CommandServer`), writing to the program's own terminal or pipe. The
child checks that the settings name this very store; anything it cannot serve (another
store, other code than the watcher loaded, a line that is not a plain ``status``) is
answered "fallback" before a byte is written, and the program runs the command itself. So
the server changes how fast the answer comes, never what it says.

This module imports only ``os``, ``sys`` and ``_socket``: it runs before anything else.
``MANIFEST_SERVER=0`` turns the client off.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

PROTOCOL = b"2"  # 2: the client says "go" before its command runs
ENV_SERVER = "MANIFEST_SERVER"  # "0", "off", "no" or "false": every command runs in process
STORE_DIR = ".manifest"  # manifest.config.FALLBACK_STATE_DIR
CONFIG_FILE = "config.toml"  # manifest.config.CONFIG_FILE
FORMAT_FILE = "FORMAT"  # manifest.store.base.FORMAT_FILE
DEFAULT_STORE_NAME = "raw"  # manifest.config.DEFAULT_STORE_NAME
CONNECT_TIMEOUT = 1.0  # seconds for the watcher to accept the connection
FIRST_REPLY_TIMEOUT = 5.0  # seconds for the server's first line; then the answer takes its time
DEFAULT_PAGER = "less -FRX"


def address(dev: int, ino: int) -> str:
    """The command socket of the watcher for the store folder with this device and inode."""
    return f"\0manifest-commands-{dev:x}-{ino:x}"


def find_store_folder(group: Mapping[str, object], env: Mapping[str, str], cwd: str) -> str | None:
    """The store folder :func:`manifest.config.load_config` would choose for these options,
    in the cases a command server can serve; None for anything else (a bucket URL, an empty
    or ambiguous setting). A wrong guess costs a fallback, never a wrong answer: the server
    resolves the settings in full and refuses another store."""
    text = group.get("store")
    if text is None:
        text = env.get("RAW_STATE_DIR", "").strip() or None
    if text is not None:
        if not isinstance(text, str) or not text.strip() or "://" in text:
            return None
        return os.path.join(cwd, os.path.expanduser(text))
    name = group.get("name")
    if not name:
        folder = cwd
        while True:
            candidate = os.path.join(folder, STORE_DIR)
            if os.path.isfile(os.path.join(candidate, CONFIG_FILE)):
                return candidate
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    home = env.get("DAGSTER_HOME", "").strip()
    if not home:
        return None if name else os.path.join(cwd, STORE_DIR)
    state = os.path.join(cwd, os.path.expanduser(home), "state")
    if name:
        return os.path.join(state, str(name))
    if os.path.isfile(os.path.join(state, FORMAT_FILE)):
        return state
    try:
        names = [
            n for n in os.listdir(state) if os.path.isfile(os.path.join(state, n, FORMAT_FILE))
        ]
    except OSError:
        names = []
    if len(names) > 1:
        return None  # ambiguous: the command says so, in process
    return os.path.join(state, names[0] if names else DEFAULT_STORE_NAME)


def code_identity(package: str | os.PathLike[str] | None = None) -> bytes:
    """What the running code is: the interpreter, and every module of this package (or of
    ``package``, a folder) with its size and modification time. A watcher serves only a
    client whose identity equals the one it computed when it started."""
    base = _package(package)
    return "\n".join(sorted([sys.version, sys.prefix, base, *_modules(base)])).encode()


def native_identity(
    executable: str | None = None, package: str | os.PathLike[str] | None = None
) -> bytes:
    """The identity the compiled client (``manifest build-client``) sends, which cannot ask
    Python for its version: the interpreter it runs the program with (``executable``:
    path, modification time and size) and every module of the package it was built for."""
    base = _package(package)
    executable = executable if executable is not None else sys.executable
    st = os.stat(executable)
    python = f"python:{executable}:{st.st_mtime_ns}:{st.st_size}"
    return "\n".join(sorted(["native", python, base, *_modules(base)])).encode()


def _package(package: str | os.PathLike[str] | None) -> str:
    return os.fspath(package) if package is not None else os.path.dirname(os.path.abspath(__file__))


def _modules(base: str) -> list[str]:
    """``path:mtime_ns:size`` of every module below ``base`` (``__pycache__`` aside)."""
    found = []
    stack = [base]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    st = entry.stat(follow_symlinks=False)
                    found.append(f"{entry.path}:{st.st_mtime_ns}:{st.st_size}")
                elif entry.name != "__pycache__" and entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return found


def encode_request(argv: list[str], cwd: str) -> bytes:
    """The request: ``run <length>\\n`` and NUL-separated fields (the protocol, the code's
    identity, the folder, the umask, standard output's encoding, error handler and buffering
    (``line``, ``none`` or ``block``, as Python chose it for this process), the arguments,
    then the environment's ``NAME=value`` entries)."""
    umask = os.umask(0o022)
    os.umask(umask)
    stdout = sys.stdout
    fields = [
        PROTOCOL,
        code_identity(),
        os.fsencode(cwd),
        b"%d" % umask,
        (getattr(stdout, "encoding", None) or "utf-8").encode(),
        (getattr(stdout, "errors", None) or "strict").encode(),
        b"none"
        if getattr(stdout, "write_through", False)
        else b"line"
        if getattr(stdout, "line_buffering", False)
        else b"block",
        b"%d" % len(argv),
        *(os.fsencode(arg) for arg in argv),
        *(k + b"=" + v for k, v in os.environb.items()),
    ]
    body = b"\0".join(fields)
    return b"run %d\n" % len(body) + body


def pager_command(env: Mapping[str, str]) -> str:
    """The pager to run: ``$MANIFEST_PAGER``, else ``$PAGER``, else ``less -FRX``."""
    return env.get("MANIFEST_PAGER") or env.get("PAGER") or DEFAULT_PAGER


def run_pager(command: str, text: str) -> None:
    """Page ``text`` through ``command`` (a shell command, as git runs $PAGER); a pager that
    cannot start prints the text as it is. Ctrl-C while it runs is the pager's (``less``
    takes it; the program waits for the pager to end, as git does)."""
    import contextlib
    import signal
    import subprocess  # only when paging

    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE)
    except OSError:
        sys.stdout.write(text)
        return
    assert proc.stdin is not None
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (no program runs the pager there)
        previous = None
    try:
        with contextlib.suppress(BrokenPipeError):  # the reader quit early: that is fine
            proc.stdin.write(text.encode("utf-8", "surrogateescape"))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _Lines:
    """Lines and counted blocks read from the server's socket."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.data = bytearray()  # appended to in place: a page can be megabytes
        self.owed = 0  # the size of a block being read (Ctrl-C can cut into it)
        self.paged = False  # a page came (or began to)
        self.ended = False  # the command's exit came: its pid is no longer its own

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)  # type: ignore[attr-defined]
        self.data += chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while (end := self.data.find(b"\n")) < 0:
            if not self._fill():
                return None
        line = bytes(self.data[:end])
        del self.data[: end + 1]
        return line

    def block(self, size: int) -> bytes | None:
        self.owed, self.paged = size, True
        while len(self.data) < size:
            if not self._fill():
                return None
        block = bytes(self.data[:size])
        del self.data[:size]
        self.owed = 0
        return block


def _peer_is_me(sock: object) -> bool:
    """Whether the process listening at the other end of ``sock`` runs as this user
    (``SO_PEERCRED``). Anyone can bind an abstract socket's name first: this program's
    environment and terminal go only to its own user's watcher. (``fsutil.same_user``,
    without the imports this module does without.)"""
    import _socket

    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return False
    return int.from_bytes(creds[4:8], sys.byteorder, signed=True) == os.getuid()


def serve_status(argv: list[str], group: Mapping[str, object]) -> int | None:
    """Run the plain ``status`` line ``argv`` (whose group options are ``group``) in the
    watcher for its store: the exit code, or None when no server can take it (then the
    caller runs it in process; nothing has been written)."""
    if os.environ.get(ENV_SERVER, "").strip().lower() in ("0", "off", "no", "false"):
        return None
    try:
        cwd = os.getcwd()
        directory = group.get("directory")
        base = os.path.join(cwd, str(directory)) if directory is not None else cwd
        folder = find_store_folder(group, os.environ, base)
        if folder is None:
            return None
        st = os.stat(folder)
    except (OSError, ValueError):
        return None
    import _signal  # type: ignore[import-not-found]  # loaded at start-up; signal imports enum
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    committed = False
    pid = 0
    lines = _Lines(sock)
    try:
        try:
            # a watcher too busy to accept (its queue full) is no server: the program answers
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address(st.st_dev, st.st_ino))
            if not _peer_is_me(sock):
                return None  # not this user's watcher: nothing is sent to it
            request = encode_request(argv, cwd)
            fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
            sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(request):
                sock.sendall(request[sent:])
            sock.settimeout(FIRST_REPLY_TIMEOUT)
            first = lines.line()
            if first is None or not first.startswith(b"pid "):
                return None  # "fallback ...", or no answer in time: the server ran nothing
            pid = int(first[4:])
            sock.settimeout(None)
            # Committed: the child gets the command only once the watcher has this, so a
            # program that gave up waiting (above) and answers itself is never answered
            # twice. A Ctrl-C while it is sent is held back until ``committed`` says so.
            _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
            try:
                sock.sendall(b"go\n")
                committed = True
            finally:
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})
            return _answer(lines, pid)
        except (OSError, ValueError):
            if committed:
                return _broke_off()
            return None  # no server, or it did not take the request: nothing was written
        except KeyboardInterrupt:
            if committed:
                return _interrupted(lines, pid)
            # Ctrl-C before the answer began: the watcher sees this end close and runs
            # nothing
            return 130
    finally:
        sock.close()


def _broke_off() -> int:
    sys.stderr.write("manifest: error: the watcher's answer broke off; run the command again\n")
    return 3


def _answer(lines: _Lines, pid: int) -> int | None:
    """Read the server's answer for the child ``pid`` to its end: the exit code; None when
    the child ran nothing (``fallback``: the caller runs the command)."""
    page: str | None = None
    try:
        while True:
            line = lines.line()
            if line is None:
                sys.stderr.write(
                    "manifest: error: the watcher stopped while it answered; "
                    "run the command again\n"
                )
                return 3
            word, _, rest = line.partition(b" ")
            if word == b"fallback":
                return None
            if word == b"page":
                block = lines.block(int(rest))
                if block is None:
                    continue
                page = block.decode("utf-8", "surrogateescape")
            elif word == b"exit":
                code = int(rest)
                lines.ended = True
                break
    except KeyboardInterrupt:
        return _interrupted(lines, pid)
    except OSError:
        return _broke_off()
    # the command has ended (and its pid may be another process's now): from here a Ctrl-C
    # is the pager's, or the end of the program
    try:
        if page is not None:
            run_pager(pager_command(os.environ), page)
    except KeyboardInterrupt:
        return 130
    return code


def _interrupted(lines: _Lines, pid: int) -> int:
    """Ctrl-C once the command runs: the command (in the watcher's child, which the
    terminal does not signal) gets it, as in process, and the program waits for its exit
    code (a page is not shown then: 130); a second Ctrl-C leaves at once."""
    import contextlib
    import signal

    if lines.ended:
        return 130  # (in the pager, or after it)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGINT)
    try:
        if lines.owed:  # the rest of the page the Ctrl-C cut into
            lines.block(lines.owed)
        while (line := lines.line()) is not None:
            word, _, rest = line.partition(b" ")
            if word == b"page":
                lines.block(int(rest))
            elif word == b"exit":
                return 130 if lines.paged else int(rest)
            elif word == b"fallback":
                break
    except (KeyboardInterrupt, OSError, ValueError):
        pass
    return 130
