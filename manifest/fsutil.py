"""Durable file writes (git's lockfile.h, dulwich's GitFile): exclusive create, fsync, rename,
fsync of the folder. Readers see the old bytes or the new bytes, never a mix."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path


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
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(6)}")
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
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(6)}")
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
            finally:
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


class LockFile:
    """``<path>.lock`` created with ``O_CREAT|O_EXCL``; removed on exit, also on error.

    Waits up to ``timeout`` seconds for a competing holder, then raises ``LockHeldError``
    naming the lock and its age, so a stale lock left by a crash is easy to spot.
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
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    owner = lock_owner(self.path)
                    if owner is not None and owner.stale:
                        raise StaleLockError(str(self.path), owner.pid, owner.host) from None
                    raise LockHeldError(str(self.path), lock_age(self.path)) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            except OSError as exc:
                raise StoreError(
                    str(self.path), f"cannot create lock: {exc.strerror or exc}"
                ) from exc
            try:
                write_all(fd, f"{os.getpid()} {socket.gethostname()} {time.time_ns()}\n".encode())
            except OSError as exc:  # ENOSPC, EIO: leave no lock behind
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise StoreError(
                    str(self.path), f"cannot write lock: {exc.strerror or exc}"
                ) from exc
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LockOwner:
    """Who wrote a lock file: ``pid host time_ns`` (older locks: ``pid host``)."""

    def __init__(self, pid: int, host: str, time_ns: int | None) -> None:
        self.pid = pid
        self.host = host
        self.time_ns = time_ns

    @property
    def stale(self) -> bool:
        """Its process is gone, on this host (a lock from another host is never judged)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def lock_owner(path: Path) -> LockOwner | None:
    try:
        parts = path.read_text("utf-8", "replace").split()
    except OSError:
        return None
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    stamp = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return LockOwner(int(parts[0]), parts[1], stamp)


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
