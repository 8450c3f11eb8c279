"""Durable file writes (git's lockfile.h, dulwich's GitFile): exclusive create, fsync, rename,
fsync of the folder. Readers see the old bytes or the new bytes, never a mix."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


def _hostname() -> str:
    """The host a lock names (``gethostname``; ``uname`` gives it without the socket module,
    which a quick command need not import)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def writev_all(fd: int, buffers: list[bytes], size: int) -> None:
    """Write the buffers in order, in one ``writev`` where the system takes them all."""
    writev = getattr(os, "writev", None)
    written = writev(fd, buffers) if writev is not None else 0
    if written < size:
        write_all(fd, b"".join(buffers)[written:])


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` (not synced); return its name."""
    tmp = path.with_name(f".tmp-{path.name}-{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes, *, sync: bool = True, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` through a uniquely named temporary file and a rename.
    ``exclusive``: only if ``path`` does not exist (a hard link instead of the rename, so
    two writers never both win); False when it did."""
    tmp = path.with_name(f".tmp-{path.name}-{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # no hard links here: the best this filesystem allows
                if exc.errno not in _NO_LINKS or path.exists():
                    if path.exists():
                        return False
                    raise
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(path.parent)
    return True


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


class LockFile:
    """``<path>.lock``, held two ways: it exists (created atomically, git's lockfile) and its
    holder keeps a ``flock`` on it, which the kernel releases when the holder dies.

    The lock file is written and flocked under a temporary name, then hard-linked into place
    (fails if a lock exists), so a visible lock is always already flocked by a live holder.
    A waiter that can take the flock of an existing lock file on this host, whose recorded
    process is provably gone (no such pid, another process with its pid, another boot),
    removes it and logs that it did: a lock left by kill -9 never needs a person. A lock from
    another host, or one written by an older version whose process is alive, is never taken
    over. After ``timeout`` seconds a waiter raises ``LockHeldError`` (or ``StaleLockError``
    for a lock that could not be proven stale but whose process is gone).
    """

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.target = path
        self.path = path.with_name(path.name + ".lock")
        self.timeout = timeout
        self.fd: int | None = None

    def acquire(self) -> None:
        from manifest.errors import LockHeldError, StaleLockError, StoreError

        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fd = self._create()
            except OSError as exc:
                raise StoreError(
                    str(self.path), f"cannot create lock: {exc.strerror or exc}"
                ) from exc
            if fd is not None:
                self.fd = fd
                return
            if take_over_stale_lock(self.path):
                continue
            if time.monotonic() >= deadline:
                owner = lock_owner(self.path)
                if owner is not None and owner.stale:
                    raise StaleLockError(str(self.path), owner.pid, owner.host) from None
                raise LockHeldError(str(self.path), lock_age(self.path)) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _create(self) -> int | None:
        """The lock, flocked and written under a temporary name, then linked into place;
        None if a lock exists."""
        import fcntl

        from manifest.errors import StoreError

        tmp = self.path.with_name(f".tmp-{self.path.name}-{os.urandom(6).hex()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with contextlib.suppress(OSError):  # a filesystem without flock: no takeover
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                write_all(fd, owner_line())
            except OSError as exc:  # ENOSPC, EIO: leave no lock behind
                raise StoreError(
                    str(self.path), f"cannot write lock: {exc.strerror or exc}"
                ) from exc
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                os.close(fd)
                return self._create_without_links()
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _create_without_links(self) -> int | None:
        """A filesystem without hard links (exFAT, some network and FUSE filesystems): the
        lock file itself, ``O_CREAT|O_EXCL``, then flocked (a waiter may see it for an
        instant before its flock: takeover then needs its process to be provably gone)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            write_all(fd, owner_line())
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        return fd

    def release(self) -> None:
        if self.fd is not None:
            # unlink first, then close (which drops the flock): a waiter that gets the flock
            # of this file finds the path gone or naming another lock, never takes it over
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "-"


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or ``-``: a pid reused by
    another process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return "-"
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else "-"


def owner_line() -> bytes:
    """``pid host time_ns boot_id start_ticks``: who holds a lock, precisely enough to tell
    that it is gone even if its pid was reused."""
    pid = os.getpid()
    return (f"{pid} {_hostname()} {time.time_ns()} {_boot_id()} {_start_ticks(pid)}\n").encode()


def take_over_stale_lock(path: Path) -> bool:
    """Remove the lock file ``path`` if its holder is provably gone: its flock is free (the
    kernel released it), the path still names that file, and its process, on this host,
    no longer exists (pid gone, reused, or another boot). True if removed (or gone)."""
    import fcntl
    import logging

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live process (or no flock here: nothing is proven)
            return False
        try:
            mine, now = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            return True
        if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
            return False  # released and replaced meanwhile: a live lock
        owner = _parse_owner(os.pread(fd, 512, 0))
        if owner is None or not owner.gone:
            return False
        os.unlink(path)
        logging.getLogger("manifest").warning(
            "took over %s: the process that held it (pid %d on %s) is gone",
            path,
            owner.pid,
            owner.host,
        )
        return True
    finally:
        os.close(fd)


class LockOwner:
    """Who wrote a lock file: ``pid host time_ns boot_id start_ticks`` (older locks: the
    first two or three)."""

    def __init__(
        self,
        pid: int,
        host: str,
        time_ns: int | None,
        boot_id: str | None = None,
        start_ticks: str | None = None,
    ) -> None:
        self.pid = pid
        self.host = host
        self.time_ns = time_ns
        self.boot_id = boot_id
        self.start_ticks = start_ticks

    @property
    def stale(self) -> bool:
        """Its process is gone, on this host (a lock from another host is never judged)."""
        if self.host != _hostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    @property
    def gone(self) -> bool:
        """Provably gone: this host, and no process with its pid, or one that started
        later (a reused pid) or in another boot."""
        if self.host != _hostname():
            return False
        if self.stale:
            return True
        if self.boot_id not in (None, "-") and self.boot_id != _boot_id():
            return True
        return self.start_ticks not in (None, "-") and self.start_ticks != _start_ticks(self.pid)


def _parse_owner(data: bytes) -> LockOwner | None:
    parts = data.decode("utf-8", "replace").split()
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    stamp = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    boot = parts[3] if len(parts) > 3 else None
    ticks = parts[4] if len(parts) > 4 else None
    return LockOwner(int(parts[0]), parts[1], stamp, boot, ticks)


def lock_owner(path: Path) -> LockOwner | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return _parse_owner(os.pread(fd, 512, 0))
    except OSError:
        return None
    finally:
        os.close(fd)


def lock_age(path: Path) -> float | None:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


_LIBC: object = None


def sync_filesystem(folder: Path) -> bool:
    """``syncfs(2)`` on the filesystem holding ``folder``: one call makes every write before it
    durable. False where unavailable (not Linux, no libc), so the caller fsyncs file by file."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _LIBC = libc if hasattr(libc, "syncfs") else False
        except (ImportError, OSError):
            _LIBC = False
    if _LIBC is False:
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _LIBC.syncfs(fd) == 0  # type: ignore[attr-defined]
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreLock:
    """``flock`` on ``<store>/store.flock``: writers (anything that writes objects and then
    points a ref at them) hold it shared, ``gc`` holds it exclusive. So gc never runs while
    a snapshot is half written, and a writer never reuses an object gc is deleting.

    The file is never removed; holding is a kernel lock, released when the process dies, so
    a crash cannot leave it held. Re-entrant within one ``StoreLock`` object."""

    def __init__(self, path: Path, *, exclusive: bool, timeout: float) -> None:
        self.path = path
        self.exclusive = exclusive
        self.timeout = timeout
        self.fd: int | None = None
        self.depth = 0

    def acquire(self) -> None:
        import fcntl

        from manifest.errors import StoreBusyError

        if self.depth:
            self.depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        mode = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreBusyError(str(self.path), self.exclusive) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self.fd = fd
        self.depth = 1

    def release(self) -> None:
        if self.depth > 1:
            self.depth -= 1
            return
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
        self.depth = 0

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


SMALL_FILE_LIMIT = 1 << 20  # the store's own small files (config, markers, failure records)


def read_small_file(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """A small state file's bytes: opened without blocking (a FIFO in its place never hangs
    the reader), refused unless a regular file, and at most ``limit`` bytes (a link to
    /dev/zero never reads forever). Raises ``FileNotFoundError`` as ``read_bytes`` does,
    ``OSError(EINVAL)`` naming what it is otherwise."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def same_user(conn: socket.socket) -> bool:
    """Whether the process at the other end of the Unix socket ``conn`` runs as this user
    (``SO_PEERCRED``): an abstract socket is open to every user of the machine, and only the
    owner's processes may ask the watcher anything."""
    import socket
    import struct

    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    return bool(struct.unpack("3i", creds)[1] == os.getuid())
