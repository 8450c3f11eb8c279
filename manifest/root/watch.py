"""The change journal of a local root: ``manifest watch`` (the watcher) and what a scan asks
it (``ask``).

The watcher watches every folder of the root with Linux inotify (``inotify_simple``: the
kernel's overflow and watch-limit signals reach this code, and a new folder is watched first
and listed second, so nothing created in it is missed) and keeps a journal of the paths that
changed, each numbered. A token names a point in it, ``<journal id>:<number>``, as git's
fsmonitor protocol v2 does: the journal id is new whenever the watcher starts or cannot vouch
for what it saw (the kernel's queue overflowed, a folder was moved in or away, the root was
moved), so a token from before that gets "full scan" and the reason, never a wrong answer.

A scan (``LocalRoot.scan``) asks for the changes since the token it recorded with its last
clean result; only when the answer is "nothing" (paths its filters leave out aside) does it
reuse that result without walking the tree. Any doubt is a full scan, exactly as without a
watcher: no watcher, another journal, changes, files that were still settling, a different
mode or filter. The watcher answers over a Unix socket in the abstract namespace (no file to
go stale), named by the root and the store's cache folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final, Protocol

from blake3 import blake3

from manifest.fsutil import same_user

MAX_JOURNAL: Final = 1_000_000  # paths kept; beyond, the journal starts again (full scan)
ASK_TIMEOUT: Final = 2.0  # seconds a scan waits for the watcher before scanning in full
STATE_FILE: Final = "journal"  # in the store's cache folder: the last clean scan's token


def address(root: Path, cache_dir: Path) -> str:
    """The watcher's socket for ``root`` recorded in the store at ``cache_dir``."""
    name = blake3(os.fsencode(root) + b"\0" + os.fsencode(cache_dir)).hexdigest()[:32]
    return f"\0manifest-watch-{name}"


def ask(root: Path, cache_dir: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """One request to the watcher; None when no watcher answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(ASK_TIMEOUT)
            sock.connect(address(root, cache_dir))
            if not same_user(sock):
                # anyone may bind an abstract name: an answer from another user's process
                # could hide a change, so it is no watcher (the scan walks)
                return None
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks: list[bytes] = []
            while not (chunks and chunks[-1].endswith(b"\n")):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


# -- the watcher -----------------------------------------------------------------------------


class Journal:
    """Changed paths, numbered; a new id whenever the watcher cannot vouch for its past."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started_ns = time.time_ns()
        self.generation = 0
        self.id = ""
        self.number = 0
        # each path once, with the number of its latest change, in number order
        self.paths: dict[str, int] = {}
        self.resets: list[tuple[int, str]] = []  # (time_ns, reason), the last few
        self.doubt: str | None = None  # set: every answer is a full scan (the watch limit)
        self.restart("the watcher started")

    def restart(self, reason: str) -> None:
        self.generation += 1
        self.id = f"{os.getpid()}.{self.started_ns}.{self.generation}"
        self.number = 0
        self.paths.clear()
        self.resets = [*self.resets[-9:], (time.time_ns(), reason)]

    def note(self, rel: str) -> None:
        self.number += 1
        self.paths.pop(rel, None)  # re-inserted last: the dict stays in number order
        self.paths[rel] = self.number
        if len(self.paths) > MAX_JOURNAL:
            self.restart(f"more than {MAX_JOURNAL} changes kept")

    @property
    def token(self) -> str:
        return f"{self.id}:{self.number}"

    def since(self, token: str | None, limit: int | None = None) -> dict[str, Any]:
        """The paths changed after ``token``; "full" (with the reason) when the journal
        cannot tell, or when more than ``limit`` paths changed."""
        if self.doubt is not None:
            return {"token": self.token, "full": True, "reason": self.doubt}
        journal, _, number = (token or "").rpartition(":")
        if journal != self.id or not number.isdigit():
            when, why = self.resets[-1]
            reason = "no token recorded" if not token else f"the journal started again ({why})"
            return {"token": self.token, "full": True, "reason": reason, "since_ns": when}
        after = int(number)
        paths: list[str] = []
        for path in reversed(self.paths):  # newest first, down to the token's number
            if self.paths[path] <= after:
                break
            if limit is not None and len(paths) >= limit:
                reason = f"more than {limit} paths changed (a walk is quicker)"
                return {"token": self.token, "full": True, "reason": reason}
            paths.append(path)
        return {"token": self.token, "full": False, "paths": sorted(paths)}


def _mask() -> int:
    from inotify_simple import flags

    return int(
        flags.CREATE
        | flags.DELETE
        | flags.MODIFY
        | flags.ATTRIB
        | flags.CLOSE_WRITE
        | flags.MOVED_FROM
        | flags.MOVED_TO
        | flags.DELETE_SELF
        | flags.MOVE_SELF
        | flags.ONLYDIR
        | flags.DONT_FOLLOW
        | flags.EXCL_UNLINK
    )


class Commands(Protocol):
    """What answers commands beside the journal (``manifest.server.CommandServer``): its
    socket's address, a connection to handle (in a thread of its own, which owns it), and
    its figures for ``manifest watch --status``."""

    address: str
    inherited: list[int]

    def accept(self, listener: socket.socket) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Watcher:
    """Watches ``root`` (leaving out ``skip``, the store inside it) and answers over the
    socket at ``address(root, cache_dir)``; ``commands``, when given, answers on a socket of
    its own (the command server)."""

    def __init__(self, root: Path, cache_dir: Path, commands: Commands | None = None) -> None:
        from inotify_simple import INotify

        self.root = root
        self.cache_dir = cache_dir
        self.skip = {cache_dir}
        self.journal = Journal()
        self.inotify = INotify()
        self.mask = _mask()
        self.folders: dict[int, str] = {}  # watch descriptor -> folder ("" the root)
        self.stopping = threading.Event()
        self.events = 0
        self.overflows = 0
        self.questions = 0  # "since" requests answered
        self.walks = 0  # scans that walked the tree although this watcher answered
        self.last_walk: dict[str, Any] | None = None  # when and why, as the scan said
        self.root_id = _identity(root)  # the folder watched: another one there is a doubt
        self.exit_reason: str | None = None  # set: the watcher stops, cannot go on
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address(root, cache_dir))  # EADDRINUSE: one watcher per root
        self.server.listen(16)
        self.commands = commands
        self.command_socket: socket.socket | None = None
        self.commands_off: str | None = None  # why no command server runs
        if commands is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(commands.address)
                sock.listen(16)
                self.command_socket = sock
            except OSError as exc:
                sock.close()
                self.commands_off = f"its socket is taken ({exc.strerror})"
                print(f"manifest watch: no command server: {self.commands_off}", file=sys.stderr)
        else:
            self.commands_off = "not started with one"
        self.add_tree("", new=False)
        if commands is not None:  # a command's child must not keep these
            commands.inherited = [self.server.fileno(), self.inotify.fileno()]
            if self.command_socket is not None:
                commands.inherited.append(self.command_socket.fileno())

    # -- watching --------------------------------------------------------------------

    def add_tree(self, rel: str, *, new: bool) -> None:
        """Watch a folder and every folder below it: watch first, then list, so that a file
        created in between is seen by the listing. ``new``: a folder that appeared after
        the start, whose files are changes."""
        stack = [rel]
        while stack:
            folder = stack.pop()
            path = self.root / folder if folder else self.root
            if path in self.skip:
                continue
            try:
                wd = self.inotify.add_watch(path, self.mask)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self.out_of_watches()
                    return
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone already: its delete is an event of its parent
                raise
            self.folders[wd] = folder
            try:
                entries = list(os.scandir(path))
            except OSError:
                continue
            for entry in entries:
                sub = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(sub)
                elif new:
                    self.journal.note(sub)
            if new and folder:
                self.journal.note(folder)

    def out_of_watches(self) -> None:
        limit = _read_proc("/proc/sys/fs/inotify/max_user_watches")
        if self.journal.doubt is None:
            self.journal.doubt = (
                f"the watch limit is reached (fs.inotify.max_user_watches = {limit}); every "
                "scan walks the tree: raise it (sysctl fs.inotify.max_user_watches=N) and "
                "restart the watcher"
            )
            print(f"manifest watch: {self.journal.doubt}", file=sys.stderr, flush=True)

    def handle(self, wd: int, mask: int, name: str) -> None:
        from inotify_simple import flags

        self.events += 1
        if wd == -1 or mask & flags.Q_OVERFLOW:
            self.overflows += 1
            self.journal.restart(
                "the kernel's event queue overflowed (fs.inotify.max_queued_events = "
                f"{_read_proc('/proc/sys/fs/inotify/max_queued_events')})"
            )
            return
        folder = self.folders.get(wd)
        if mask & flags.IGNORED:
            self.folders.pop(wd, None)
            return
        if folder is None:
            return
        if mask & (flags.DELETE_SELF | flags.MOVE_SELF):
            if folder == "":
                self.give_up("the root was moved or deleted")
            return
        rel = f"{folder}/{name}" if folder else name
        if mask & flags.ISDIR:
            if mask & flags.MOVED_TO:
                self.journal.restart(f"a folder was moved in: {rel}")
                self.add_tree(rel, new=True)
            elif mask & flags.MOVED_FROM:
                self.journal.restart(f"a folder was moved away: {rel}")
            elif mask & flags.CREATE:
                self.add_tree(rel, new=True)
            else:
                self.journal.note(rel)
            return
        self.journal.note(rel)

    def give_up(self, why: str) -> None:
        """The watched folder is no longer the root: every answer from now on is a full
        scan, and the watcher stops (a supervisor starts it again, on the new folder)."""
        if self.exit_reason is None:
            self.exit_reason = why
            self.journal.doubt = f"{why}; start the watcher again"
            self.journal.restart(why)
            print(f"manifest watch: {self.journal.doubt}", file=sys.stderr, flush=True)
        self.stopping.set()

    def watch(self) -> None:
        poller = select.poll()
        poller.register(self.inotify.fileno(), select.POLLIN)
        while not self.stopping.is_set():
            if poller.poll(200):
                with self.journal.lock:
                    self.drain()

    def drain(self) -> None:
        """Handle every event the kernel holds (the journal's lock held). Events are read
        only here, under the lock: an answer given under it has seen every event queued
        before its request, and the kernel queues an event before the call that caused it
        returns, so a change a client made before asking is always in the answer."""
        while events := self.inotify.read(timeout=0):
            for event in events:
                self.handle(event.wd, event.mask, event.name)

    # -- answering -------------------------------------------------------------------

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.server.fileno(), select.POLLIN)
        if self.command_socket is not None:
            poller.register(self.command_socket.fileno(), select.POLLIN)
        while not self.stopping.is_set():
            for fd, _ in poller.poll(200):
                if self.command_socket is not None and fd == self.command_socket.fileno():
                    assert self.commands is not None
                    self.commands.accept(self.command_socket)
                    continue
                try:
                    conn, _ = self.server.accept()
                except OSError:
                    if self.stopping.is_set():
                        return
                    continue
                if not same_user(conn):
                    conn.close()  # another user's process: not answered
                else:
                    with conn:
                        conn.settimeout(5.0)
                        with contextlib.suppress(OSError, ValueError):
                            self.answer(conn)

    def answer(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        request = json.loads(data)
        op = request.get("op")
        with self.journal.lock:
            self.drain()
            if op == "since":
                if _identity(self.root) != self.root_id:
                    self.give_up("the root was replaced by another folder")
                self.questions += 1
                limit = request.get("limit")
                limit = limit if isinstance(limit, int) and limit >= 0 else None
                reply = self.journal.since(request.get("token"), limit)
            elif op == "walked":
                self.walks += 1
                self.last_walk = {"time_ns": time.time_ns(), "reason": str(request.get("reason"))}
                reply = {}
            elif op == "status":
                reply = self.status()
            elif op == "stop":
                self.stopping.set()
                reply = {"stopping": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def status(self) -> dict[str, Any]:
        j = self.journal
        when, why = j.resets[-1]
        return {
            "pid": os.getpid(),
            "root": str(self.root),
            "folders": len(self.folders),
            "token": j.token,
            "queued": len(j.paths),
            "events": self.events,
            "overflows": self.overflows,
            "doubt": j.doubt,
            "last_restart": {"time_ns": when, "reason": why},
            "questions": self.questions,
            "walks": self.walks,
            "last_walk": self.last_walk,
            "rss_kib": _rss_kib(),
            "commands": (
                {"serving": True, **self.commands.status()}
                if self.commands is not None and self.command_socket is not None
                else {"serving": False, "reason": self.commands_off}
            ),
        }

    def run(self) -> None:
        server = threading.Thread(target=self.serve, name="manifest-watch-socket", daemon=True)
        server.start()
        try:
            self.watch()
        finally:
            self.stopping.set()
            self.server.close()
            if self.command_socket is not None:
                self.command_socket.close()
            if self.commands is not None:
                self.commands.close()
            self.inotify.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_proc(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def _rss_kib() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None
