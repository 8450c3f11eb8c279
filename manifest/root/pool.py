"""Scanning a big tree on every core: subtrees go to worker processes.

Python's GIL serialises the per-file work of a walk (threads measured slower than one
thread, ``docs/benchmarks.md``), so the walk is split across processes. The parent lists
the top of the tree breadth first until there are enough folders to share out, and hands
each one to the next idle worker (``python -m manifest.root.pool``, spoken to over pipes with
length-prefixed msgpack). A worker scans its subtree exactly as the parent would, with the
stat cache records below it and the inherited descriptor of the cache file, and sends back
its tree entry, the trees it built and the cache records it changed. The parent finishes
the top folders. Workers are spawned (never forked: the caller may be a threaded Dagster
process), and a worker that dies has its subtree scanned in the parent instead.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from manifest.globs import PathFilter
from manifest.model import TreeEntry
from manifest.root.index import CacheView, Loaded
from manifest.scanresult import ScanProblem
from manifest.store.objects import ObjectStore

if TYPE_CHECKING:
    from manifest.root.scan import Scanner, _Folder

# A scan of fewer files than this stays in one process: a worker costs ~0.1 s of CPU to
# start and ~20 MiB. Measured (clean mtime_size status, 1 vs 2 processes): 50,000 files
# 0.48 vs 0.46 s (even); 100,000 files 0.85 vs 0.63 s, but 28 vs 48 MiB, 1.1x against 1.9x
# git's memory (docs/benchmarks.md): below 200,000 memory wins; ``MANIFEST_JOBS=2`` takes
# the time.
PARALLEL_MIN_FILES: Final = 200_000
# A first scan (size unknown) that finds this many folders to share starts workers at once.
EAGER_TASKS: Final = 64
# A scan of unknown size starts workers only once it has run this long.
LAZY_SPAWN_NS: Final = 200_000_000
MAX_JOBS: Final = 8
# Tasks a worker holds at once: it starts the next the moment it sends a result, instead of
# waiting for this process to come back from a subtree of its own to answer (one in hand
# left the worker idle ~35% of a 1M-file status, docs/benchmarks.md).
PREFETCH: Final = 2
# The capacity asked for each worker's result pipe (Linux's default is 64 KiB). A subtree
# whose folders all changed sends ~36 KiB of stat cache records, up to ~75 KiB: through 64
# KiB the worker blocked until this process came back from a subtree of its own to read
# (1.0-1.8 s of a 1M-file status with 1% re-touched, docs/benchmarks.md). 1 MiB is what
# /proc/sys/fs/pipe-max-size lets any user ask for by default.
PIPE_BYTES: Final = 1 << 20
_LENGTH: Final = struct.Struct("<I")
_PROGRESS_EVERY_NS: Final = 100_000_000


class Setup(msgspec.Struct, tag="setup"):
    root: bytes
    mode: str
    window_ns: int  # the scan's unstable window (cooldown, or the racy window)
    racy_ns: int
    now_ns: int
    include: list[str]
    exclude: list[str]
    skip_ids: list[tuple[int, int]]
    rehash_all: bool
    objects: str | None
    base_root: str | None
    index_fd: int
    trusted: bool
    fast: bool
    legacy: bool = False  # the stat cache's payloads are of ``index.LEGACY_FORMAT``


class Task(msgspec.Struct, tag="task"):
    parent: bytes  # b"" or ends with b"/"
    name: bytes
    records: list[Loaded]


class Progress(msgspec.Struct, tag="progress"):
    files: int  # of the task in hand
    nbytes: int
    hashed_bytes: int  # all this worker has hashed


class Part(msgspec.Struct, tag="part"):
    """A subtree's results, for its parent folder."""

    trees_added: list[TreeEntry]  # subfolders the parent folder gains (scanned or carried)
    carried: bool
    files: int
    nbytes: int
    hashed: int
    hashed_bytes: int  # all this worker has hashed, as in Progress
    built: dict[str, bytes]
    clean: dict[str, bytes]
    updates: list[tuple[bytes, bytes]]
    kept: list[bytes]
    unstable: list[str]
    problems: list[ScanProblem]
    skipped: list[str]
    # a carried file entry (the task's folder unreadable, its base entry a file): the
    # parent's file entries, not its subfolders
    entries_added: list[TreeEntry] = []


class Failed(msgspec.Struct, tag="failed"):
    message: str


_ENCODER: Final = msgspec.msgpack.Encoder()


def _send(stream: object, message: msgspec.Struct) -> None:
    data = _ENCODER.encode(message)
    stream.write(_LENGTH.pack(len(data)) + data)  # type: ignore[attr-defined]
    stream.flush()  # type: ignore[attr-defined]


def choose_jobs(expected_files: int | None, setting: int | None) -> int:
    """How many processes walk the tree: ``setting`` if given (``MANIFEST_JOBS``), else one
    per core for a tree expected to hold ``PARALLEL_MIN_FILES`` or more (an unknown size
    counts as big: only a first scan has none)."""
    if setting is not None:
        return max(1, min(setting, 64))
    if expected_files is not None and expected_files < PARALLEL_MIN_FILES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_JOBS))


# ------------------------------------------------------------------------------- parent


def scan_in_parallel(scanner: Scanner, root: _Folder) -> tuple[str, int]:
    """Scan the listed ``root`` in this process and ``scanner.jobs - 1`` workers; the root
    tree id and how many processes took part.

    This process scans subtrees too, from the same queue, while it waits. For a tree of
    unknown size (a first scan) with fewer than ``EAGER_TASKS`` folders to share, workers
    are only started once the scan has taken ``LAZY_SPAWN_NS``: a small tree is done before
    any would have started."""
    upper, tasks = _split(scanner, root)
    started = 0
    if len(tasks) >= 2:
        eager = (
            scanner.expected_files is not None or scanner.jobs_forced or len(tasks) >= EAGER_TASKS
        )
        workers = _Workers(scanner, scanner.jobs - 1)
        try:
            workers.run(tasks, eager=eager)
        finally:
            workers.close()
        started = workers.started
    else:
        for folder, name in tasks:
            _scan_here(scanner, folder, name)
    oid = ""
    for folder in reversed(upper):
        oid = scanner.finish(folder, _parent_of(folder, upper))
        os.close(folder.fd)
        folder.fd = -1
    return oid, started + 1


def _parent_of(folder: _Folder, upper: list[_Folder]) -> _Folder | None:
    if not folder.rel:
        return None
    parent_rel = folder.rel[: -len(folder.name) - 1]
    for candidate in upper:
        if candidate.rel == parent_rel:
            return candidate
    return None


def _split(scanner: Scanner, root: _Folder) -> tuple[list[_Folder], list[tuple[_Folder, bytes]]]:
    """Breadth first from the root until a level has enough folders to share out: the
    folders listed here (``upper``, parents first) and the subtrees to hand out."""
    upper = [root]
    level = [root]
    want = scanner.jobs * 8
    for _depth in range(4):
        tasks = [(folder, name) for folder in level for name in reversed(folder.subdirs)]
        if len(tasks) >= want or not tasks:
            break
        deeper: list[_Folder] = []
        for folder, name in tasks:
            child = scanner.enter(folder, name)
            if child is not None:
                deeper.append(child)
                upper.append(child)
        for folder in level:
            folder.subdirs.clear()
        level = deeper
    tasks = [(folder, name) for folder in level for name in reversed(folder.subdirs)]
    for folder in level:
        folder.subdirs.clear()
    return upper, tasks


def _scan_here(scanner: Scanner, parent: _Folder, name: bytes) -> None:
    child = scanner.enter(parent, name)
    if child is not None:
        scanner.walk(child, parent)


def _merge(scanner: Scanner, parent: _Folder, part: Part) -> None:
    parent.trees.extend(part.trees_added)
    parent.entries.extend(part.entries_added)
    if part.carried:
        parent.eligible = False
    scanner.files += part.files
    scanner.bytes += part.nbytes
    scanner.hashed += part.hashed
    scanner.trees.update(part.built)
    scanner.clean_trees.update(part.clean)
    scanner.unstable.extend(part.unstable)
    scanner.problems.extend(part.problems)
    scanner.skipped.extend(part.skipped)
    if scanner.cache is not None:
        scanner.cache.merge(part.updates, part.kept)


def worker_argv() -> list[str]:
    """The command that starts a worker: the interpreter running this one, with ``-P`` (the
    current folder is not put on ``sys.path``: a ``manifest`` folder or module where the
    command was run from is never imported as this package)."""
    return [sys.executable, "-P", "-m", "manifest.root.pool"]


def start_worker(index_fd: int) -> subprocess.Popen[bytes] | None:
    """A worker process, started: it imports, then waits for its ``Setup``. ``index_fd``
    (the stat cache's descriptor, or -1) is inherited under the same number. None if it
    cannot be started (the scan then goes on without it)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            worker_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(index_fd,) if index_fd >= 0 else (),
            env=env,
            close_fds=True,
        )
    except OSError:
        return None
    assert proc.stdout is not None
    widen_pipe(proc.stdout.fileno())
    return proc


def widen_pipe(fd: int) -> None:
    """Ask for ``PIPE_BYTES`` of capacity (best effort: Linux only, and a user over the
    system's pipe quota keeps the default)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


def start_spares(count: int, index_fd: int) -> list[subprocess.Popen[bytes]]:
    """``count`` workers started before the scan knows its setup, so that their start-up
    (~0.15 s of imports) overlaps this process loading the stat cache. A scan takes them
    (``Scanner.spares``); ``stop_spares`` ends those it did not use."""
    spares = []
    for _ in range(count):
        proc = start_worker(index_fd)
        if proc is None:
            break
        spares.append(proc)
    return spares


def stop_spares(spares: list[subprocess.Popen[bytes]]) -> None:
    """End unused spare workers: with their input closed before any ``Setup``, they exit."""
    _close(spares)
    spares.clear()


def _close(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class _Workers:
    def __init__(self, scanner: Scanner, count: int) -> None:
        self.scanner = scanner
        self.count = count
        self.started = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        cache = scanner.cache
        self.index_fd = cache.fd if cache is not None else -1
        if cache is not None:
            self.paths = sorted(cache.records)
        base = scanner.base
        filt = scanner.filter
        self.setup = Setup(
            root=scanner.root,
            mode=scanner.mode,
            window_ns=scanner.window_ns,
            racy_ns=scanner.racy_ns,
            now_ns=scanner._unstable_after + scanner.window_ns,
            include=list(filt.patterns[0]),
            exclude=list(filt.patterns[1]),
            skip_ids=sorted(scanner.skip_ids),
            rehash_all=scanner.rehash_all,
            objects=str(base.objects.path) if isinstance(base.objects, ObjectStore) else None,
            base_root=base.root_id,
            index_fd=self.index_fd,
            trusted=cache.trusted if cache is not None else False,
            fast=scanner.inline_fast_paths,
            legacy=cache.legacy if cache is not None else False,
        )

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        spares = self.scanner.spares
        proc = spares.pop() if spares else start_worker(self.index_fd)
        if proc is None:
            return None
        assert proc.stdin is not None
        try:
            _send(proc.stdin, self.setup)
        except OSError:
            proc.kill()
            proc.wait()
            return None
        self.started += 1
        return proc

    def _records(self, prefix: bytes) -> list[Loaded]:
        cache = self.scanner.cache
        if cache is None:
            return []
        paths = self.paths
        out = []
        i = bisect.bisect_left(paths, prefix)
        while i < len(paths) and paths[i].startswith(prefix):
            out.append(cache.records[paths[i]])
            i += 1
        return out

    def run(self, tasks: list[tuple[_Folder, bytes]], *, eager: bool) -> None:
        """Scan every task: in workers, and in this process while it waits. A task whose
        worker dies goes back to the queue (this process then scans it)."""
        scanner = self.scanner
        queue = deque(range(len(tasks)))
        selector = selectors.DefaultSelector()
        busy: dict[int, deque[int]] = {}  # pid -> the task numbers it holds, oldest first
        readers: dict[int, _Reader] = {}
        inflight: dict[int, Progress] = {}
        hashed: dict[int, int] = {}
        on_hash = scanner.on_hash
        outer_walk = scanner.on_walk

        def walked(files: int, nbytes: int) -> None:
            if outer_walk is not None:
                outer_walk(
                    files + sum(p.files for p in inflight.values()),
                    nbytes + sum(p.nbytes for p in inflight.values()),
                )

        def assign(proc: subprocess.Popen[bytes]) -> bool:
            if not queue:
                return False
            number = queue.popleft()
            folder, name = tasks[number]
            task = Task(folder.rel, name, self._records(folder.rel + name + b"/"))
            try:
                _send(proc.stdin, task)
            except OSError:
                queue.appendleft(number)
                return False
            busy.setdefault(proc.pid, deque()).append(number)
            return True

        def retire(proc: subprocess.Popen[bytes]) -> None:
            queue.extend(busy.pop(proc.pid, ()))  # scanned here instead
            inflight.pop(proc.pid, None)
            if proc.stdout is not None:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(proc.stdout)
            proc.kill()

        def spawn_all() -> None:
            for _ in range(self.count):
                proc = self._spawn()
                if proc is None:
                    break
                self.procs.append(proc)
                assert proc.stdout is not None
                os.set_blocking(proc.stdout.fileno(), False)
                readers[proc.pid] = _Reader()
                selector.register(proc.stdout, selectors.EVENT_READ, proc)
                if not assign(proc):
                    retire(proc)
                    continue
                for _ in range(PREFETCH - 1):
                    assign(proc)

        heard: dict[int, int] = {}  # pid -> when it last sent anything (monotonic ns)

        def give_up_silent() -> None:
            """A worker that stops answering (SIGSTOPped, hung) is given up like a dead one:
            at once when the kernel says it is stopped, else after a long silence."""
            now = time.monotonic_ns()
            for proc in [p for p in self.procs if p.pid in busy]:
                silent = now - heard.setdefault(proc.pid, now)
                if (silent > STOPPED_AFTER_NS and _stopped(proc.pid)) or silent > SILENT_AFTER_NS:
                    retire(proc)

        def handle(timeout: float) -> None:
            for key, _ in selector.select(timeout=timeout):
                proc = key.data
                heard[proc.pid] = time.monotonic_ns()
                messages, eof = readers[proc.pid].feed(proc.stdout)
                for message in messages:
                    if isinstance(message, Progress):
                        inflight[proc.pid] = message
                        delta = message.hashed_bytes - hashed.get(proc.pid, 0)
                        hashed[proc.pid] = message.hashed_bytes
                        if on_hash is not None and delta > 0:
                            on_hash(delta)
                        walked(scanner.files, scanner.bytes)
                    elif isinstance(message, Part):
                        held = busy[proc.pid]
                        number = held.popleft()
                        inflight.pop(proc.pid, None)
                        delta = message.hashed_bytes - hashed.get(proc.pid, 0)
                        hashed[proc.pid] = message.hashed_bytes
                        if on_hash is not None and delta > 0:
                            on_hash(delta)
                        _merge(scanner, tasks[number][0], message)
                        if not assign(proc) and not held:
                            del busy[proc.pid]
                            with contextlib.suppress(KeyError, ValueError):
                                selector.unregister(proc.stdout)
                            with contextlib.suppress(OSError):
                                proc.stdin.close()
                    else:  # Failed: it cannot scan here, its task comes back
                        eof = True
                if eof:
                    retire(proc)

        started_ns = time.monotonic_ns()
        spawned = False
        if eager:
            spawn_all()
            spawned = True
        scanner.on_walk = walked if outer_walk is not None else None
        try:
            while queue or busy:
                if not spawned and time.monotonic_ns() - started_ns > LAZY_SPAWN_NS:
                    spawn_all()
                    spawned = True
                if busy:
                    handle(0.0 if queue else 1.0)
                    give_up_silent()
                if queue:
                    number = queue.popleft()
                    _scan_here(scanner, *tasks[number])
        finally:
            scanner.on_walk = outer_walk
            selector.close()

    def close(self) -> None:
        _close(self.procs)


class _Reader:
    """Length-prefixed messages from a non-blocking pipe."""

    _decoder: Final = msgspec.msgpack.Decoder(Progress | Part | Failed)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, stream: object) -> tuple[list[Progress | Part | Failed], bool]:
        eof = False
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buffer += chunk
        out = []
        while len(self.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < _LENGTH.size + length:
                break
            data = bytes(self.buffer[_LENGTH.size : _LENGTH.size + length])
            del self.buffer[: _LENGTH.size + length]
            out.append(self._decoder.decode(data))
        return out, eof


# ------------------------------------------------------------------------------- worker


def _read_message(stream: object, decoder: msgspec.msgpack.Decoder[Setup | Task]) -> object:
    head = stream.read(_LENGTH.size)  # type: ignore[attr-defined]
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)  # type: ignore[attr-defined]
    if len(data) < length:
        return None
    return decoder.decode(data)


STOPPED_AFTER_NS: Final = 2_000_000_000  # a stopped worker (state T) is given up after this
SILENT_AFTER_NS: Final = 600_000_000_000  # any worker silent this long is given up


def _stopped(pid: int) -> bool:
    """The kernel has process ``pid`` stopped (SIGSTOP, a debugger): state T or t."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    rest = data[data.rfind(b")") + 2 :]
    return rest[:1] in (b"T", b"t")


class _WorkerProgress:
    """Sends progress to the parent, at most every 100 ms."""

    def __init__(self, stdout: object, hashed_bytes: list[int]) -> None:
        self.stdout = stdout
        self.hashed_bytes = hashed_bytes
        self.last = 0

    def hashed(self, size: int) -> None:
        self.hashed_bytes[0] += size

    def walked(self, files: int, nbytes: int) -> None:
        now = time.monotonic_ns()
        if now - self.last >= _PROGRESS_EVERY_NS:
            self.last = now
            _send(
                self.stdout,
                Progress(files, nbytes, self.hashed_bytes[0]),
            )


def worker_main() -> int:
    from manifest.root.scan import Scanner, _Folder, open_folder
    from manifest.scanresult import BaseTrees

    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    decoder = msgspec.msgpack.Decoder(Setup | Task)
    setup = _read_message(stdin, decoder)
    if not isinstance(setup, Setup):
        return 2
    try:
        root_fd = os.open(setup.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _send(stdout, Failed(str(exc)))
        return 1
    objects = ObjectStore(Path(setup.objects), sync=False) if setup.objects else None
    base = BaseTrees(objects, setup.base_root)
    path_filter = PathFilter(setup.include, setup.exclude)
    hashed_bytes = [0]
    # Tasks are read as they come, by a thread of their own: the parent may be writing the
    # next task (stat cache records, easily more than a pipe holds) while this process writes
    # a big result; if each waited for the other to read, both would wait forever.
    tasks: queue.SimpleQueue[object] = queue.SimpleQueue()

    def read_tasks() -> None:
        try:
            while True:
                message = _read_message(stdin, decoder)
                tasks.put(message)
                if not isinstance(message, Task):
                    return
        except (OSError, ValueError, msgspec.DecodeError):
            tasks.put(None)

    threading.Thread(target=read_tasks, name="manifest-tasks", daemon=True).start()
    while True:
        task = tasks.get()
        if not isinstance(task, Task):
            return 0
        cache = CacheView(
            setup.index_fd, {r.head.path: r for r in task.records}, setup.trusted, setup.legacy
        )
        progress = _WorkerProgress(stdout, hashed_bytes)
        scanner = Scanner(
            setup.root,
            mode=setup.mode,
            cooldown_ns=setup.window_ns,
            path_filter=path_filter,
            cache=cache,
            base=base,
            rehash_all=setup.rehash_all,
            on_hash=progress.hashed,
            on_walk=progress.walked,
            racy_ns=setup.racy_ns,
        )
        scanner.inline_fast_paths = setup.fast
        scanner.window_ns = setup.window_ns
        scanner.set_window(setup.now_ns)
        scanner.skip_ids = {tuple(x) for x in setup.skip_ids}  # type: ignore[misc]
        try:
            parent_fd = open_folder(root_fd, task.parent)
        except OSError as exc:
            _send(stdout, Failed(str(exc)))
            return 1
        parent = _Folder(parent_fd, task.parent, b"")
        try:
            child = scanner.enter(parent, task.name)
            if child is not None:
                scanner.walk(child, parent)
        finally:
            os.close(parent_fd)
        _send(
            stdout,
            Part(
                trees_added=parent.trees,
                entries_added=parent.entries,
                carried=not parent.eligible,
                files=scanner.files,
                nbytes=scanner.bytes,
                hashed=scanner.hashed,
                hashed_bytes=hashed_bytes[0],
                built=scanner.trees,
                clean=scanner.clean_trees,
                updates=list(cache.updates.values()),
                kept=sorted(cache.kept),
                unstable=scanner.unstable,
                problems=scanner.problems,
                skipped=scanner.skipped,
            ),
        )


if __name__ == "__main__":
    sys.exit(worker_main())
