"""A bucket root read through its S3 event notifications (SQS) against the same root listed
every tick: requests per tick, counted by a proxy in front of a local S3 + SQS server (moto).

    .venv/bin/python bench/bucket_events.py [--keys 100000] [--runs 3] [--mode etag]

Starts moto in this process on 127.0.0.1 and a counting HTTP proxy in front of it
(``tests.s3server.CountingProxy``: LIST, GET, HEAD, PUT, DELETE and each SQS action), fills
one bucket with ``--keys`` small objects under 100 prefixes straight into moto's backend
(seconds, where 100k PUTs over HTTP take minutes), points the bucket's notifications at a
queue, then runs two stores side by side on that root, interleaved:

* ``events``: ``events_queue`` set; its first tick lists in full (no state yet);
* ``listing``: the peer, which lists the bucket every tick (today's behaviour).

Each run measures a quiet tick (``begin``, nothing changed) and a one-change tick (one key
written, ``begin`` takes it, then ``promote``) for both, and ``status`` on a quiet tree. The
stores are local folders so that the counts are the root's and the queue's requests only
(a store on a bucket adds its own reads of refs and objects, the same for both peers).
The wall times are a local server's (no network latency) and only indicative.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", default="etag", choices=("etag", "mtime_size", "content_hash"))
    args = parser.parse_args()

    import logging

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        run(args, f"http://127.0.0.1:{port}", s3_backends[DEFAULT_ACCOUNT_ID]["aws"])
    finally:
        server.stop()


def run(args: argparse.Namespace, target: str, backend: Any) -> None:
    from manifest import Repository, load_config
    from tests.s3server import CountingProxy, S3Server
    from tests.test_bucket import upload

    proxy = CountingProxy(target)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=proxy.endpoint,
    )
    work = Path(tempfile.mkdtemp(prefix="manifest-bench-events-"))
    os.environ["MANIFEST_CACHE_DIR"] = str(work / "cache")
    bucket = "bench-events-raw"
    backend.create_bucket(bucket, "us-east-1")
    started = time.perf_counter()
    for i in range(args.keys):
        key = f"raw/p{i % 100:03d}/f{i:07d}.csv"
        backend.put_object(bucket, key, f"{key},1\n".encode())
    print(f"{args.keys} keys put into moto's backend in {time.perf_counter() - started:.1f} s")
    s3 = S3Server(target)
    queue = s3.make_queue(bucket, "raw/").replace(target, proxy.endpoint)
    url = f"s3://{bucket}/raw"

    def repo(name: str) -> Repository:
        return Repository(
            load_config(
                root=url,
                store=work / name,
                mode=args.mode,
                cooldown_sec=0,
                events_queue=queue if name == "events" else None,
                env={"MANIFEST_EVENTS_WAIT_SEC": "0"},
            )
        )

    peers = ("events", "listing")
    for name in peers:
        proxy.take()
        t0 = time.perf_counter()
        outcome = repo(name).begin().outcome
        took = time.perf_counter() - t0
        print(f"first tick ({name}): {outcome}, {took:.1f} s, {fmt(proxy.take())}", flush=True)

    walls: dict[str, list[float]] = {}
    counts: dict[str, list[dict[str, int]]] = {}

    def measure(label: str, fn: Callable[[], object], check: Callable[[Any], bool]) -> None:
        proxy.take()
        t0 = time.perf_counter()
        got = fn()
        walls.setdefault(label, []).append(time.perf_counter() - t0)
        counts.setdefault(label, []).append(proxy.take())
        assert check(got), (label, got)
        print(f"  {label}: {walls[label][-1]:.2f} s, {fmt(counts[label][-1])}", flush=True)

    for run_no in range(args.runs):
        print(f"run {run_no + 1}")
        for name in peers:
            measure(f"quiet tick ({name})", repo(name).begin, lambda c: c.outcome == "unchanged")
        for name in peers:
            measure(f"quiet status ({name})", repo(name).status, lambda s: not s.changes.paths)
        key = f"p{run_no % 100:03d}/changed-{run_no}.csv"
        upload(url, {key: f"run {run_no}\n".encode()})
        for name in peers:
            r = repo(name)
            measure(
                f"one-change tick ({name})",
                r.begin,
                lambda c, key=key: c.outcome == "started" and c.changes.added == (key,),
            )
            pending = r.find_ref("pending")
            assert pending is not None
            r.promote(pending)

    print(f"\n{args.keys} keys, mode {args.mode}, {args.runs} interleaved runs: median wall")
    print("seconds (min-max), and the requests of the last run")
    for label, values in walls.items():
        spread = f"({min(values):.2f}-{max(values):.2f})"
        print(f"| {label} | {statistics.median(values):.2f} {spread} | {fmt(counts[label][-1])} |")
    proxy.close()


def fmt(counts: dict[str, int]) -> str:
    order = ["LIST", "GET", "HEAD", "PUT", "DELETE"]
    keys = sorted(counts, key=lambda k: (order.index(k) if k in order else 99, k))
    return ", ".join(f"{k} {counts[k]}" for k in keys) or "none"


if __name__ == "__main__":
    main()
