"""The command server: the watcher answers a plain ``manifest status`` itself.

The client (:mod:`manifest.client`) sends its standard input, output and error, folder,
umask, environment and arguments over the watcher's command socket. For each request the
watcher forks: the child takes the client's descriptors as its own 0, 1 and 2, its folder,
umask and environment, and runs what the program runs in process (``manifest.entry``'s
quick path: :func:`manifest.commands.enter`, then :func:`manifest.commands.show_status`).
The engine is imported once, in the watcher; the child starts with it loaded, so the answer
costs the status itself. A fork keeps each command apart from the watcher and from the
others (folder, environment, global state, a crash), as chg's server does.

What the child cannot serve it answers ``fallback`` before it writes a byte, and the client
runs the command in process: settings that name another store, a line that is not a plain
``status``, or other code than the watcher loaded (an upgrade or an edit since it started:
the client's :func:`manifest.client.code_identity` differs). Paging needs the terminal the
client owns, so the child sends the page back and the client runs the pager.

Replies, one per line: ``pid N`` (the child), then ``page LENGTH`` and that many bytes,
then ``exit CODE``; or ``fallback REASON`` alone.
"""

from __future__ import annotations

import array
import contextlib
import gc
import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manifest import client

MAX_REQUEST = 1 << 20  # bytes: a request beyond is refused (an environment is a few KB)

# Imported in the watcher before the first fork, so that no child imports them again: what
# a status needs (measured with -X importtime on `manifest status`).
WARM_MODULES = (
    "manifest.commands",
    "manifest.entry",
    "manifest.config",
    "manifest.format",
    "manifest.repo",
    "manifest.root.local",
    "manifest.root.scan",
    "manifest.root.index",
    "manifest.store.local",
    "tomllib",
)


class Request:
    """A decoded request."""

    def __init__(self, fields: list[bytes], fds: list[int]) -> None:
        if len(fields) < 8 or fields[0] != client.PROTOCOL:
            raise ValueError("not a request of this protocol")
        self.identity = fields[1]
        self.cwd = os.fsdecode(fields[2])
        self.umask = int(fields[3])
        self.encoding = fields[4].decode()
        self.errors = fields[5].decode()
        self.buffering = fields[6].decode()
        count = int(fields[7])
        if len(fields) < 8 + count:
            raise ValueError("fewer arguments than announced")
        self.argv = [os.fsdecode(a) for a in fields[8 : 8 + count]]
        self.env = dict(e.partition(b"=")[::2] for e in fields[8 + count :] if e)
        self.fds = fds


class CommandServer:
    """Serves the store at ``store`` (the watcher's), on :func:`manifest.client.address`."""

    def __init__(self, store: Path) -> None:
        st = os.stat(store)
        self.store_id = (st.st_dev, st.st_ino)
        self.address = client.address(st.st_dev, st.st_ino)
        self.identity = client.code_identity()
        self.lock = threading.Lock()  # one fork at a time; the warm-up once
        self.warm = False
        self.served = 0
        self.fallbacks = 0
        self.last_fallback: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "fallbacks": self.fallbacks,
            "last_fallback": self.last_fallback,
        }

    # -- one connection (its own thread; it owns ``conn``) -----------------------------

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            try:
                conn.settimeout(5.0)
                request = self._read(conn, fds)
                conn.settimeout(None)
                self._run(conn, request)
            except (OSError, ValueError, UnicodeDecodeError):
                return
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _read(self, conn: socket.socket, fds: list[int]) -> Request:
        data = b""
        space = socket.CMSG_SPACE(3 * array.array("i").itemsize)
        while b"\n" not in data:
            chunk, ancdata, _, _ = conn.recvmsg(65536, space)
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    fds.extend(received)
            if not chunk:
                raise ValueError("the client closed the connection")
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError("request too long")
        head, _, body = data.partition(b"\n")
        word, _, length_text = head.partition(b" ")
        length = int(length_text)
        if word != b"run" or not 0 <= length <= MAX_REQUEST:
            raise ValueError("not a run request")
        while len(body) < length:
            chunk = conn.recv(min(65536, length - len(body)))
            if not chunk:
                raise ValueError("the request broke off")
            body += chunk
        if len(fds) != 3:
            raise ValueError("a request hands over exactly three descriptors")
        return Request(body.split(b"\0"), fds)

    def _fallback(self, conn: socket.socket, reason: str) -> None:
        self.fallbacks += 1
        self.last_fallback = {"time_ns": time.time_ns(), "reason": reason}
        with contextlib.suppress(OSError):
            conn.sendall(b"fallback " + reason.encode("utf-8", "replace") + b"\n")

    def _run(self, conn: socket.socket, request: Request) -> None:
        if request.identity != self.identity:
            self._fallback(
                conn,
                "the manifest code or Python changed since the watcher started; restart the "
                "watcher (manifest watch --stop, then --start)",
            )
            return
        with self.lock:
            if not self.warm:
                import importlib

                for name in WARM_MODULES:
                    importlib.import_module(name)
                self.warm = True
            read_end, write_end = os.pipe()
            for stream in (sys.stdout, sys.stderr):  # nothing of ours may reach the child's
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            gc.freeze()  # the child's collections leave the watcher's objects (and pages) alone
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(read_end)
                _child(conn, request, write_end, self.store_id)
            gc.unfreeze()  # the watcher's own collections go on as before
            os.close(write_end)  # under the lock: no other child may hold it
        relayed = b""
        try:
            conn.sendall(b"pid %d\n" % pid)
            with os.fdopen(read_end, "rb") as messages:
                # the child's page or fallback, then its exit code, which it sends before it
                # exits (tearing its memory down is no business of the client's)
                for message in _messages(messages):
                    relayed = message
                    conn.sendall(message)
                    if message.startswith((b"exit ", b"fallback ")):
                        break
        finally:
            _, status = os.waitpid(pid, 0)
        if relayed.startswith(b"fallback "):
            self.fallbacks += 1
            reason = relayed[9:].rstrip(b"\n").decode("utf-8", "replace")
            self.last_fallback = {"time_ns": time.time_ns(), "reason": reason}
            return
        self.served += 1
        if not relayed.startswith(b"exit "):  # killed (a signal) before it could say
            code = os.waitstatus_to_exitcode(status)
            conn.sendall(b"exit %d\n" % (code if code >= 0 else 128 - code))


def _messages(stream: io.BufferedReader) -> Iterator[bytes]:
    """The child's messages: lines, a ``page`` line with its block."""
    while line := stream.readline():
        if line.startswith(b"page "):
            line += stream.read(int(line[5:]))
        yield line


# -- the child ------------------------------------------------------------------------------

_KEEP: list[object] = []  # the watcher's own streams: never flushed or closed in a child
_FALLBACK = -1  # the child ran nothing (it said "fallback")


def _child(conn: socket.socket, request: Request, out: int, store_id: tuple[int, int]) -> None:
    code = 1
    try:
        code = _serve_child(conn, request, out, store_id)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # as the program in process would: a traceback, exit 1
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
    if code != _FALLBACK:
        with contextlib.suppress(OSError):
            os.write(out, b"exit %d\n" % code)
    os._exit(0 if code == _FALLBACK else code)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"{value}\n")
    return 1


def _serve_child(conn: socket.socket, request: Request, out: int, store_id: tuple[int, int]) -> int:
    conn.close()  # the watcher answers the client; this copy would keep it waiting
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(request.fds):
        os.dup2(fd, target)
        os.close(fd)
    request.fds = []
    _KEEP.extend((sys.stdin, sys.stdout, sys.stderr))
    # standard streams as Python makes them for the client (its -u, a terminal or a pipe)
    unbuffered = request.buffering == "none"

    def stream(fd: int, mode: str, errors: str, line: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        binary: Any = raw
        if not unbuffered or mode == "r":
            binary = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(
            binary,
            encoding=request.encoding,
            errors=errors,
            line_buffering=line,
            write_through=unbuffered and mode == "w",
        )

    sys.stdin = stream(0, "r", request.errors, False)
    sys.stdout = stream(1, "w", request.errors, request.buffering == "line")
    sys.stderr = stream(2, "w", "backslashreplace", True)
    os.chdir(request.cwd)
    os.umask(request.umask)
    gc.disable()  # a command's garbage dies with the child
    environ = os.environb  # the client's environment; only what differs is changed
    for key in [k for k in environ if k not in request.env]:
        del environ[key]
    for key, value in request.env.items():
        if environ.get(key) != value:
            environ[key] = value

    from manifest import commands, entry
    from manifest.errors import ManifestError

    def fallback(reason: str) -> int:
        os.write(out, b"fallback " + reason.encode("utf-8", "replace") + b"\n")
        return _FALLBACK

    parsed = entry.parse_status(request.argv)
    if parsed is None:
        return fallback("not a plain status line")
    group, command = parsed
    commands.enter(group.pop("directory", None))
    options = commands.Options(**group)
    try:
        config = options.config()
    except ManifestError:
        config = None  # the command says what is wrong, as in process
    if config is not None:
        try:
            st = os.stat(config.store)
        except OSError:
            return fallback("the settings name a store that does not exist")
        if (st.st_dev, st.st_ino) != store_id:
            return fallback("the settings name another store")

    def page(text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        os.write(out, b"page %d\n" % len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]

    commands.PAGE_TO = page
    commands.show_status(options, **command)
    return 0
