"""Listing and hashing a bucket root: obstore (what manifest uses) against fsspec/s3fs (the
ecosystem's common interface), in the same run, against a local S3 API server (moto).

    .venv/bin/python bench/bucket.py [--keys 100000] [--hash-keys 2000] [--runs 3]
        [--endpoint http://127.0.0.1:PORT]

Starts moto on 127.0.0.1 (or uses ``--endpoint``, a server left running, whose bucket is
filled only once), fills one bucket with ``--keys`` small objects under 100 prefixes, then
measures, interleaved:

* a full recursive listing of the prefix (size, last-modified, ETag of every key):
  obstore's ``list`` vs s3fs's ``find(detail=True)``;
* ``manifest status`` on that root in ``mtime_size`` and ``etag`` modes (one listing, trees
  built from the keys, diff against ``last``);
* reading and BLAKE3-hashing ``--hash-keys`` objects: obstore ``get`` vs s3fs ``cat``, both
  on 8 threads.

A local server measures the client libraries' own costs (parsing, paging, Python objects),
not a real network's latency; ratios between the two libraries are what carry over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=2)
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


CPU: dict[str, list[float]] = {}


def timed(fn: Callable[[], object], name: str = "") -> float:
    """Wall seconds; the client's own CPU seconds (all its threads) go to ``CPU[name]``: on a
    local server the wall time is mostly the server's, the CPU time is the library's."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    CPU.setdefault(name, []).append(time.process_time() - cpu)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--hash-keys", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=5391)
    parser.add_argument("--endpoint", help="a running S3 server to use (not started here)")
    args = parser.parse_args()

    endpoint = args.endpoint or f"http://127.0.0.1:{args.port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        MANIFEST_CACHE_DIR="/tmp/manifest-bench-cache",
    )
    if args.endpoint:
        run(args, endpoint)
        return
    server = start_server(args.port, Path("/tmp/moto-bench.log"))
    try:
        run(args, endpoint)
    finally:
        server.terminate()
        server.wait(10)


def run(args: argparse.Namespace, endpoint: str) -> None:
    import obstore
    import s3fs
    from blake3 import blake3

    from manifest import Repository, load_config
    from manifest.location import BucketURL
    from manifest.store.s3 import open_bucket

    bucket, state = f"bench-raw-{args.keys}", f"bench-state-{time.time_ns()}"
    for name in (bucket, state):
        req = urllib.request.Request(f"{endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req).read()  # creating an existing bucket is a no-op here
    store = open_bucket(BucketURL("s3", bucket, "raw"))
    keys = [f"p{i % 100:03d}/f{i:07d}.csv" for i in range(args.keys)]
    have = sum(len(chunk) for chunk in obstore.list(store, None, chunk_size=1000))
    if have != len(keys):
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: obstore.put(store, k, f"{k},1\n".encode()), keys))
        print(f"uploaded {len(keys)} keys in {time.perf_counter() - started:.1f} s", flush=True)

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="bench", secret="bench")

    def obstore_list() -> int:
        return sum(len(chunk) for chunk in obstore.list(store, None, chunk_size=1000))

    def s3fs_list() -> int:
        fs.invalidate_cache()
        return len(fs.find(f"{bucket}/raw", detail=True))

    assert obstore_list() == s3fs_list() == len(keys)
    url = f"s3://{bucket}/raw"
    repos = {
        mode: Repository(
            load_config(root=url, store=f"s3://{state}/{mode}", mode=mode, cooldown_sec=0, env={})
        )
        for mode in ("mtime_size", "etag")
    }
    for mode, repo in repos.items():
        t = timed(repo.begin)
        print(f"first begin ({mode}): {t:.2f} s", flush=True)

    sample = keys[: args.hash_keys]

    def obstore_hash() -> None:
        def one(k: str) -> bytes:
            h = blake3()
            for chunk in obstore.get(store, k).stream():
                h.update(chunk)
            return h.digest()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, sample))

    def s3fs_hash() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: blake3(fs.cat(f"{bucket}/raw/{k}")).digest(), sample))

    measures: dict[str, list[float]] = {}
    jobs: list[tuple[str, Callable[[], object]]] = [
        ("list: obstore", obstore_list),
        ("list: s3fs find(detail=True)", s3fs_list),
        ("manifest status (mtime_size)", repos["mtime_size"].status),
        ("manifest status (etag)", repos["etag"].status),
        (f"read+BLAKE3 {len(sample)} objects: obstore", obstore_hash),
        (f"read+BLAKE3 {len(sample)} objects: s3fs", s3fs_hash),
    ]
    for _ in range(args.runs):
        for name, fn in jobs:
            measures.setdefault(name, []).append(timed(fn, name))
            print(f"  {name}: {measures[name][-1]:.2f} s", flush=True)
    print(f"\n{len(keys)} keys, {args.runs} interleaved runs, median (min-max), seconds:")
    print(f"  {'':45s} {'wall':>7s} {'(min-max)':>15s} {'client CPU':>10s}")
    for name, values in measures.items():
        spread = f"({min(values):.2f}-{max(values):.2f})"
        print(
            f"  {name:45s} {statistics.median(values):7.2f} {spread:>15s} "
            f"{statistics.median(CPU[name]):10.2f}"
        )
    ob, fs_ = (statistics.median(measures[k]) for k in ("list: obstore", jobs[1][0]))
    print(f"  listing: s3fs / obstore = {fs_ / ob:.2f}x (wall)")
    ob, fs_ = (statistics.median(CPU[k]) for k in ("list: obstore", jobs[1][0]))
    print(f"  listing: s3fs / obstore = {fs_ / ob:.2f}x (client CPU)")
    ob, fs_ = (statistics.median(measures[k]) for k in (jobs[4][0], jobs[5][0]))
    print(f"  hashing: s3fs / obstore = {fs_ / ob:.2f}x (wall)")
    ob, fs_ = (statistics.median(CPU[k]) for k in (jobs[4][0], jobs[5][0]))
    print(f"  hashing: s3fs / obstore = {fs_ / ob:.2f}x (client CPU)")


if __name__ == "__main__":
    main()
