"""Threads or processes for the walk? ``python bench/walk_parallelism.py TREE MODE``.

Walks every second-level folder of a ``bench/gen_tree.py`` tree the way the scan's fast path
does (``scandir`` of the folder's descriptor, one ``lstat`` per file relative to it, a stat
row per entry, one BLAKE3 of the msgpack rows per folder) and prints the wall time. MODE is
``serial``, ``threadsN`` (a thread pool of N) or ``procsN`` (N spawned processes, the folders
dealt out in 8N chunks). docs/benchmarks.md quotes its figures: on this 2-core machine two
threads were no faster than one, usually slower (the GIL is handed over at every system
call); two processes were ~2x faster. That is why ``manifest.pool`` uses processes.
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


def scan_one(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rows = []
        with os.scandir(fd) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    rows.append((e.name,))
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


def main() -> None:
    root, mode = sys.argv[1], sys.argv[2]
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
        raise SystemExit(f"unknown mode {mode!r}: serial, threadsN or procsN")
    print(f"{mode}: {len(todo)} folders in {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
