"""Threads or processes for the walk? ``python bench/walk_parallelism.py TREE MODE``.

Walks every second-level folder of a ``bench/gen_tree.py`` tree the way the scan's fast path
does (``scandir`` of the folder's descriptor, one ``lstat`` per file relative to it, a stat
row per entry, one BLAKE3 of the msgpack rows per folder) and prints the wall time. MODE is
``serial``, ``threadsN`` (a thread pool of N) or ``procsN`` (N spawned processes, the folders
dealt out in 8N chunks). docs/benchmarks.md quotes its figures: on this 2-core machine two
threads were no faster than one, usually slower (the GIL is handed over at every system
call); two processes were ~2x faster. That is why ``manifest.root.pool`` uses processes.

MODE ``floorN`` is the Python stat floor ``bench/run.py`` measures as a peer: any tree, the
top-level folders dealt out to N spawned processes, each walking its subtrees the same way
(files directly under TREE are stat'ed by the parent). It is the least a status written in
Python does on N cores (no stat cache, no comparison, no output), so a status's ratio to it
says how much of its time is the walk itself.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import msgspec
from blake3 import blake3

_ENCODER = msgspec.msgpack.Encoder()


def folders(root: str) -> list[str]:
    return [
        os.path.join(root, d, s)
        for d in sorted(os.listdir(root))
        for s in sorted(os.listdir(os.path.join(root, d)))
    ]


def scan_one(path: str, subfolders: list[str] | None = None) -> bytes:
    """One folder as the scan's fast path lists it: its signature. The subfolders found are
    appended to ``subfolders`` (as paths) when it is given."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rows: list[tuple[object, ...]] = []
        with os.scandir(fd) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    rows.append((e.name,))
                    if subfolders is not None:
                        subfolders.append(os.path.join(path, e.name))
                    continue
                st = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                rows.append(
                    (e.name, st.st_mode, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
                )
        return blake3(_ENCODER.encode(rows)).digest()
    finally:
        os.close(fd)


def scan_many(paths: list[str]) -> list[bytes]:
    return [scan_one(p) for p in paths]


def walk_tree(top: str) -> int:
    """Every folder under ``top`` (``top`` too) as ``scan_one`` does, descending into the
    folders found; how many folders."""
    stack = [top]
    done = 0
    while stack:
        scan_one(stack.pop(), stack)
        done += 1
    return done


def walk_many(tops: list[str]) -> int:
    return sum(walk_tree(top) for top in tops)


def floor(root: str, n: int) -> int:
    """The top level listed here, its folders walked by ``n`` spawned processes."""
    tops: list[str] = []
    rows: list[tuple[object, ...]] = []
    with os.scandir(root) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                tops.append(e.path)
                rows.append((e.name,))
            else:
                st = e.stat(follow_symlinks=False)
                rows.append(
                    (e.name, st.st_mode, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
                )
    blake3(_ENCODER.encode(rows)).digest()
    chunks = [tops[i :: n * 8] for i in range(n * 8)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=context) as pool:
        return 1 + sum(pool.map(walk_many, chunks))


def main() -> None:
    root, mode = sys.argv[1], sys.argv[2]
    if mode.startswith("floor"):
        t0 = time.perf_counter()
        walked = floor(root, int(mode[5:]))
        print(f"{mode}: {walked} folders in {time.perf_counter() - t0:.3f} s")
        return
    todo = folders(root)
    t0 = time.perf_counter()
    if mode == "serial":
        scan_many(todo)
    elif mode.startswith("threads"):
        with ThreadPoolExecutor(int(mode[7:])) as pool:
            list(pool.map(scan_one, todo))
    elif mode.startswith("procs"):
        n = int(mode[5:])
        chunks = [todo[i :: n * 8] for i in range(n * 8)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            list(pool.map(scan_many, chunks))
    else:
        raise SystemExit(f"unknown mode {mode!r}: serial, threadsN, procsN or floorN")
    print(f"{mode}: {len(todo)} folders in {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
