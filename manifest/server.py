"""The command server: the watcher answers a plain ``manifest status`` itself.

The client (:mod:`manifest.client`) sends its standard input, output and error, folder,
umask, environment and arguments over the watcher's command socket. Each request goes to
a child the watcher forked ahead (the spare; the next one is forked after the answer): it
takes the client's descriptors as its own 0, 1 and 2, its folder, umask and environment, and
runs what the program runs in process (``manifest.entry``'s quick path:
:func:`manifest.commands.enter`, then :func:`manifest.commands.show_status`). The engine is
imported once, in the watcher; the child starts with it loaded and the store's first reads
done (``Repository.warm``), so the answer costs little more than the status itself. A child
per command keeps each apart from the watcher and from the others (folder, environment,
global state, a crash), as chg's server does.

What the child cannot serve it answers ``fallback`` before it writes a byte, and the client
runs the command in process: settings that name another store, a line that is not a plain
``status``, or other code than the watcher loaded (an upgrade or an edit since it started:
the client's :func:`manifest.client.code_identity` differs). Paging needs the terminal the
client owns, so the child sends the page back and the client runs the pager.

Replies, one per line: ``pid N`` (the child), to which the client answers ``go`` (it will
follow the answer: only then does the child get the command, so a client that gave up
waiting, and runs the command itself, is never answered twice), then ``page LENGTH`` and
that many bytes, then ``exit CODE``; or ``fallback REASON`` alone. Ctrl-C in the client
is sent on to the child (the terminal signals only the client), whose exit code follows.
"""

from __future__ import annotations

import array
import contextlib
import gc
import io
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from manifest import client
from manifest.fsutil import same_user

MAX_REQUEST = 1 << 20  # bytes: a request beyond is refused (an environment is a few KB)


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
        self.body = b"\0".join(fields)


class CommandServer:
    """Serves the store at ``store`` (the watcher's), on :func:`manifest.client.address`.

    A command runs in a child forked ahead of it (the spare): when a request comes, the
    spare takes it at once, and the next spare is forked after the answer, off the client's
    clock. The spare has also opened the watcher's own store and read what a status reads
    first (``Repository.warm``), so the pages a command touches first are its own already
    (a fork shares them until written: each first write is a page copied)."""

    def __init__(self, store: Path) -> None:
        st = os.stat(store)
        self.store = store
        self.store_id = (st.st_dev, st.st_ino)
        self.address = client.address(st.st_dev, st.st_ino)
        # the program's, and the compiled client's (manifest build-client) for this code
        self.identities = {client.code_identity(), _native_identity()} - {b""}
        # the watcher's descriptors no child may hold on to (its listening sockets: a child
        # that outlives the watcher would keep their names taken); set by the watcher
        self.inherited: list[int] = []
        # descriptors received from clients and still open here: a child forked meanwhile
        # closes its copies at once (a spare would otherwise keep a client's pipe open)
        self.client_fds: set[int] = set()
        self.lock = threading.Lock()  # forks, receiving descriptors, the warm-up

        self.warm = False
        self.spare: tuple[int, socket.socket] | None = None  # (pid, the watcher's end)
        self.running: set[int] = set()  # the children answering a command now
        self.closed = False
        self.served = 0
        self.fallbacks = 0
        self.last_fallback: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "fallbacks": self.fallbacks,
            "last_fallback": self.last_fallback,
        }

    def close(self) -> None:
        """The spare ends (it waits for a command, and none will come), and so do commands
        still running: their programs say the watcher stopped (run the command again)."""
        with self.lock:
            self.closed = True
            for pid in self.running:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)  # reaped by the thread that relays it
            if self.spare is not None:
                pid, sock = self.spare
                self.spare = None
                sock.close()
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    # -- one connection (its own thread; it owns ``conn``) -----------------------------

    def accept(self, listener: socket.socket) -> None:
        """Take a connection waiting on ``listener`` and answer it in a thread of its own.
        Accepted under the lock that forks: no child is forked between the accept and the
        connection's being known to be closed in children."""
        with self.lock:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.client_fds.add(conn.fileno())
        if not same_user(conn):
            self._close(conn, [])  # another user's process: not answered
            return
        threading.Thread(
            target=self.handle, args=(conn,), name="manifest-command", daemon=True
        ).start()

    def _close(self, conn: socket.socket, fds: list[int]) -> None:
        with self.lock:  # forgotten and closed at once: no child sees a number reused
            for fd in [conn.fileno(), *fds]:
                self.client_fds.discard(fd)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(5.0)
            request = self._read(conn, fds)
            conn.settimeout(None)
            self._run(conn, request)
        except (OSError, EOFError, ValueError, UnicodeDecodeError):
            pass  # the client went, or sent what is not a request
        finally:
            self._close(conn, fds)
        with self.lock:  # the next command's child, forked now that this one is answered
            if self.warm and self.spare is None and not self.closed:
                with contextlib.suppress(OSError):  # none now (e.g. EAGAIN): the next forks
                    self.spare = self._fork()

    def _read(self, conn: socket.socket, fds: list[int]) -> Request:
        def received(new: list[int]) -> None:  # called with the lock held
            fds.extend(new)
            self.client_fds.update(new)

        body = _receive(conn, received, self.lock)
        if len(fds) != 3:
            raise ValueError("a request hands over exactly three descriptors")
        return Request(body.split(b"\0"), fds)

    def _fallback(self, conn: socket.socket, reason: str) -> None:
        self.fallbacks += 1
        self.last_fallback = {"time_ns": time.time_ns(), "reason": reason}
        with contextlib.suppress(OSError):
            conn.sendall(b"fallback " + reason.encode("utf-8", "replace") + b"\n")

    def _warm(self) -> None:
        """Import, once, in the watcher what a status needs, so that no child imports it:
        the verbs, the faces' modules, and what the store's repository needs to scan
        (``Repository.warm``: the backends say what that is)."""
        import tomllib  # noqa: F401  (a store's config.toml)

        from manifest import format, statusline  # noqa: F401
        from manifest.commands import Options

        with contextlib.suppress(Exception):  # a store it cannot open now: the child says
            Options(store=str(self.store)).repository().warm()

    def _fork(self) -> tuple[int, socket.socket]:
        """A spare child (the lock held): it waits for one command on its socket."""
        ours, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for stream in (sys.stdout, sys.stderr):  # nothing of ours may reach a child's
            with contextlib.suppress(OSError, ValueError, AttributeError):  # None: fd closed
                stream.flush()
        gc.freeze()  # the child's collections leave the watcher's objects (and pages) alone
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            ours.close()
            its.close()
            raise
        if pid == 0:  # the child: never returns
            ours.close()  # so that it sees the watcher's end close when the watcher goes
            _spare(its, self)
        gc.unfreeze()  # the watcher's own collections go on as before
        its.close()  # only the child holds its end: it sees ours close when we go
        return pid, ours

    def _run(self, conn: socket.socket, request: Request) -> None:
        if request.identity not in self.identities:
            self._fallback(
                conn,
                "the manifest code or Python changed since the watcher started; restart the "
                "watcher (manifest watch --stop, then --start)",
            )
            return
        if select.select([conn], [], [], 0)[0]:
            return  # a client sends nothing before its pid: it went (Ctrl-C) before this
        with self.lock:
            if self.closed:
                return  # the watcher stops: the program sees the end close and answers itself
            if not self.warm:
                self._warm()
                self.warm = True
            if self.spare is not None and not _alive(self.spare[0]):
                self.spare[1].close()  # the spare died (killed, out of memory): reaped now
                self.spare = None
            pid, sock = self.spare if self.spare is not None else self._fork()
            self.spare = None
            self.running.add(pid)
        relayed: bytes | None = b""
        taken = False  # the child has the command
        with sock:
            try:
                conn.sendall(b"pid %d\n" % pid)
                # the child gets the command only once the client says it follows it: a
                # client that gave up waiting answers itself, and nothing runs here
                if not _says_go(conn):
                    with contextlib.suppress(OSError):  # (for a "go" that comes too late)
                        conn.sendall(b"fallback the program did not follow in time\n")
                    return
                body = b"%d\n" % len(request.body) + request.body
                try:
                    socket.send_fds(sock, [body], request.fds)
                    taken = True
                except OSError:  # the child died since: nothing was written
                    relayed = b"fallback the watcher's child for the command was gone\n"
                else:
                    relayed = _relay(sock, conn)
                if relayed is None:
                    return  # the client hung up mid-answer: not answered (nor is it counted)
                if relayed.startswith(b"fallback "):
                    self.fallbacks += 1
                    reason = relayed[9:].rstrip(b"\n").decode("utf-8", "replace")
                    self.last_fallback = {"time_ns": time.time_ns(), "reason": reason}
                elif relayed:
                    self.served += 1
                if relayed:
                    conn.sendall(relayed)
            finally:
                if not taken or not relayed or not relayed.startswith((b"exit ", b"fallback ")):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)  # the client went: so does its command
                with self.lock:  # before it is reaped: close() never signals a reused pid
                    self.running.discard(pid)
                _, status = os.waitpid(pid, 0)
        if relayed or self.closed:
            # answered (counted and sent above); or the watcher stops: its end closes, and
            # the program says so (exit 3)
            return
        # killed (a signal) before it could say
        self.served += 1
        code = os.waitstatus_to_exitcode(status)
        conn.sendall(b"exit %d\n" % (code if code >= 0 else 128 - code))


def _native_identity() -> bytes:
    try:
        return client.native_identity()
    except OSError:  # no interpreter file to stat (an embedded Python): no compiled client
        return b""


def _receive(
    sock: socket.socket,
    on_fds: Callable[[list[int]], None],
    lock: threading.Lock | contextlib.nullcontext[None],
) -> bytes:
    """A ``<word> <length>\\n`` or ``<length>\\n`` header and that many bytes; the
    descriptors sent with them go to ``on_fds``, called under ``lock`` in the very step
    that receives them (no fork in between may miss them)."""
    data = b""
    space = socket.CMSG_SPACE(3 * array.array("i").itemsize)
    timeout = sock.gettimeout()
    while b"\n" not in data:
        ready = select.select([sock], [], [], timeout)[0]
        if not ready:
            raise TimeoutError("no request came")
        with lock:
            chunk, ancdata, _, _ = sock.recvmsg(65536, space, socket.MSG_DONTWAIT)
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    on_fds(list(received))
        if not chunk:
            raise EOFError("the other end closed the connection")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too long")
    head, _, body = data.partition(b"\n")
    word, _, length_text = head.rpartition(b" ")
    length = int(length_text)
    if word not in (b"run", b"") or not 0 <= length <= MAX_REQUEST:
        raise ValueError("not a run request")
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            raise ValueError("the request broke off")
        body += chunk
    return body


def _alive(pid: int) -> bool:
    """Whether our child ``pid`` still runs (if it ended, it is reaped here)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False


def _says_go(conn: socket.socket) -> bool:
    """Whether the client sends ``go`` (it follows the command to its end) within a while
    after it was told the child's pid; False when it closes first (it gave up waiting, or
    Ctrl-C) or says anything else."""
    data = b""
    deadline = time.monotonic() + client.FIRST_REPLY_TIMEOUT * 2
    while len(data) < 3:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([conn], [], [], left)[0]:
            return False
        chunk = conn.recv(3 - len(data))
        if not chunk:
            return False
        data += chunk
    return data == b"go\n"


def _relay(child: socket.socket, conn: socket.socket) -> bytes | None:
    """Pass the child's messages (lines; a ``page`` line with its block) to the client
    until its ``exit`` or ``fallback``, which it sends before it exits (tearing its memory
    down is no business of the client's); that last message, not sent yet (the caller
    counts it first: ``manifest watch --status`` shows it once the program has it).
    ``b""`` when the child ends without one; None when the client hangs up first: a client
    sends nothing after its ``go``, so its end turning readable means it went (then so
    does its command)."""
    pending = bytearray()
    while True:
        readable = select.select([child, conn], [], [])[0]
        if child not in readable:
            return None  # the client hung up
        chunk = child.recv(1 << 16)
        if not chunk:
            return b""
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            size = end + 1
            if pending.startswith(b"page "):
                size += int(pending[5:end])
                if len(pending) < size:
                    break  # the rest of the page is still coming
            message = bytes(pending[:size])
            del pending[:size]
            if message.startswith((b"exit ", b"fallback ")):
                return message  # the caller counts it, then sends it
            try:
                conn.sendall(message)
            except OSError:
                return None  # the client hung up


# -- the child ------------------------------------------------------------------------------

_KEEP: list[object] = []  # the watcher's own streams: never flushed or closed in a child
_FALLBACK = -1  # the child ran nothing (it said "fallback")


def _spare(sock: socket.socket, server: CommandServer) -> NoReturn:
    """A child forked ahead of its command: it makes itself ready, waits for the command on
    ``sock``, runs it, says its exit code there and exits."""
    out = sock.fileno()
    code = 0
    try:
        # The watcher's copies of other clients' connections and descriptors, and its own
        # sockets: released (a client waits for its pipe's end, a new watcher for the
        # socket's name), their numbers kept (whatever still owns one may close it)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (*server.client_fds, *server.inherited):
            os.dup2(devnull, fd)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.disable()  # a command's garbage dies with the child
        _KEEP.extend((sys.stdin, sys.stdout, sys.stderr))
        if not select.select([sock], [], [], 0)[0]:  # (a command already waiting goes first)
            with contextlib.suppress(Exception):  # touched first here: those pages become ours
                _rehearse(server.store)
        fds: list[int] = []
        try:
            body = _receive(sock, fds.extend, contextlib.nullcontext())
        except (EOFError, OSError, ValueError):
            os._exit(0)  # the watcher went, or sent nothing usable: no command comes
        code = _serve_child(Request(body.split(b"\0"), fds), out, server.store_id)
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
        # a Ctrl-C the program sends on from now would only cut the exit short (a
        # traceback from the watcher's own code, on the program's terminal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
    if code != _FALLBACK:
        with contextlib.suppress(OSError):
            os.write(out, b"exit %d\n" % code)
    os._exit(0 if code == _FALLBACK else code)


def _rehearse(store: Path) -> None:
    """In a spare, before its command: what a plain status does on a quiet tree, short of
    asking the watcher and writing (``Repository.warm``), printed to nothing. Each page of
    the watcher's memory a status writes (reference counts: any object it uses) is copied
    for the child at its first write, ~10 µs each here; ~150 of them are copied now, off
    the command's clock (docs/benchmarks.md)."""
    from manifest import format, statusline
    from manifest.commands import Options

    statusline.parse_status(["--store", str(store), "status"])
    repo = Options(store=str(store)).repository()
    status = repo.warm()
    if status is not None:
        out, sys.stdout = sys.stdout, io.StringIO()
        try:
            format.print_status(status, repo.config.cooldown_sec)
        finally:
            sys.stdout = out


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"{value}\n")
    return 1


def _serve_child(request: Request, out: int, store_id: tuple[int, int]) -> int:
    """Take the client's descriptors, folder, umask and environment, and run its line as
    the program would; what it cannot serve it says (``fallback``) before writing a byte."""
    for target, fd in enumerate(request.fds):
        os.dup2(fd, target)
        os.close(fd)
    request.fds = []
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
    try:
        os.chdir(request.cwd)
    except OSError:  # gone since the client asked: the program says so itself
        os.write(out, b"fallback the client's folder is gone\n")
        return _FALLBACK
    os.umask(request.umask)
    environ = os.environb  # the client's environment; only what differs is changed
    for key in [k for k in environ if k not in request.env]:
        del environ[key]
    for key, value in request.env.items():
        if environ.get(key) != value:
            environ[key] = value

    from manifest import commands, statusline
    from manifest.errors import ManifestError

    def fallback(reason: str) -> int:
        os.write(out, b"fallback " + reason.encode("utf-8", "replace") + b"\n")
        return _FALLBACK

    parsed = statusline.parse_status(request.argv)
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
