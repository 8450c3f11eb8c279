"""cProfile of the engine operations behind the benchmark targets, in process.

``python bench/profile_ops.py N [--top 25] [--which status_mtime,status_retouch,first_snapshot]``

Uses the tree and stores bench/run.py left under /tmp/bench_trees (run it for N first).
Prints, per operation, the wall time and the top functions by cumulative and own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_tree  # noqa: E402
from run import TREES, retouch_set  # noqa: E402

from manifest import Repository, load_config  # noqa: E402


def repo(tree: Path, store: Path, mode: str) -> Repository:
    return Repository(load_config(root=tree, store=store, mode=mode, cooldown_sec=0, env={}))


def report(name: str, prof: cProfile.Profile, seconds: float, top: int) -> None:
    print(f"\n=== {name}: {seconds:.3f} s under cProfile ===")
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"--- by {key} ---")
        print(text[start:].rstrip())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--which", default="status_mtime,status_retouch,first_snapshot")
    args = parser.parse_args()
    tree = TREES / f"t{args.n}"
    work = TREES / f"work{args.n}"
    which = args.which.split(",")
    gen_tree.generate(args.n, tree)

    def profiled(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        report(name, prof, time.perf_counter() - t0, args.top)

    if "status_mtime" in which:
        r = repo(tree, work / "store_mtime", "mtime_size")
        r.status()  # warm
        profiled(
            "status (mtime_size, clean)",
            lambda: repo(tree, work / "store_mtime", "mtime_size").status(),
        )
    if "status_retouch" in which:
        repo(tree, work / "store_content", "content_hash").status()  # settle the stat cache
        stamp = 1_700_000_000 * 10**9
        for rel in retouch_set(args.n):
            os.utime(tree / rel, ns=(stamp, stamp))
        profiled(
            "status (content_hash, 1% re-touched)",
            lambda: repo(tree, work / "store_content", "content_hash").status(),
        )
        for rel in retouch_set(args.n):
            os.utime(tree / rel, ns=(gen_tree.MTIME_NS, gen_tree.MTIME_NS))
    if "first_snapshot" in which:
        store = work / "store_profile_first"
        if store.exists():
            shutil.rmtree(store)
        profiled(
            "first snapshot (content_hash, fresh store)",
            lambda: repo(tree, store, "content_hash").snapshot(),
        )
        shutil.rmtree(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
