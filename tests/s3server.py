"""A real S3 API on 127.0.0.1 for the tests: moto's standalone server, in its own process.

It implements conditional writes (``If-None-Match: *``, ``If-Match``), which the bucket store
relies on, and SQS, to which it delivers a bucket's event notifications (``make_queue``). One
server per test session (shared by its xdist workers); each test makes its own buckets and
queues. ``CountingProxy`` sits in front of it and counts the requests by kind (the tests and
``bench/bucket_events.py``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_counter = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server (no real credentials exist here)."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def make_bucket(self, stem: str = "bucket") -> str:
        name = f"{stem}-{os.getpid()}-{next(_counter)}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        return name

    @functools.cache  # noqa: B019 (one per server and service, for the session)
    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def make_queue(self, bucket: str, prefix: str = "") -> str:
        """A new SQS queue that ``bucket``'s created and removed events (of keys under
        ``prefix``) go to, as docs/operations.md configures it; its URL. moto sends an
        ``s3:TestEvent`` to it at once, as S3 does."""
        sqs = self.client("sqs")
        url = str(sqs.create_queue(QueueName=f"events-{os.getpid()}-{next(_counter)}")["QueueUrl"])
        self.notify(bucket, url, prefix)
        return url

    def notify(self, bucket: str, queue: str, prefix: str = "") -> None:
        """(Re)write ``bucket``'s notification configuration: its events go to ``queue``."""
        sqs = self.client("sqs")
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        rule: dict[str, Any] = {
            "QueueArn": arn["Attributes"]["QueueArn"],
            "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        }
        if prefix:
            rule["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        self.client("s3").put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [rule]}
        )


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``target`` that counts requests by kind:
    ``LIST``, ``GET``, ``HEAD``, ``PUT``, ``DELETE`` (S3) and ``SQS <Action>``."""

    def __init__(self, target: str) -> None:
        import http.client
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        self.counts: Counter[str] = Counter()
        self.by_bucket: Counter[tuple[str, str]] = Counter()  # (bucket, kind), S3 only
        self.lock = threading.Lock()
        host = urlsplit(target)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.count(self.command, self.path, self.headers, body, parse_qs)
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method: str, path: str, headers: Any, body: bytes, parse_qs: Any) -> None:
        target = headers.get("X-Amz-Target", "")
        if target.startswith("AmazonSQS."):
            kind = "SQS " + target.split(".", 1)[1]
        elif method == "POST" and b"Action=" in body:
            kind = "SQS " + parse_qs(body.decode())["Action"][0]
        else:
            url_path, _, query = path.partition("?")
            parts = [p for p in url_path.split("/") if p]
            if method == "GET" and (len(parts) <= 1 or "list-type" in parse_qs(query)):
                kind = "LIST"
            else:
                kind = method
            with self.lock:
                self.by_bucket[(parts[0] if parts else "", kind)] += 1
        with self.lock:
            self.counts[kind] += 1

    def take(self, bucket: str | None = None) -> dict[str, int]:
        """The counts since the last call (of S3 requests to ``bucket`` and every SQS
        request, when given), and start again."""
        with self.lock:
            if bucket is None:
                out = dict(self.counts)
            else:
                out = {k: n for (b, k), n in self.by_bucket.items() if b == bucket}
                out.update({k: n for k, n in self.counts.items() if k.startswith("SQS ")})
            self.counts.clear()
            self.by_bucket.clear()
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
            return True
    except OSError:
        return False


def _start_moto(log: Path, watch_pid: int | None = None, **popen: Any) -> tuple[str, Any]:
    """moto's server on a free port, its output in ``log``: its endpoint and process, once
    it answers (``watch_pid``: it exits when that process does)."""
    port = _free_port()
    server = str(Path(__file__).with_name("motoserver.py"))
    command = [sys.executable, server, "127.0.0.1", str(port)]
    if watch_pid is not None:
        command.append(str(watch_pid))
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not _answers(endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto server did not start: {log.read_text()}")
        time.sleep(0.2)
    return endpoint, proc


@contextlib.contextmanager
def running_moto(log: Path) -> Iterator[str]:
    """moto's standalone server (with atomic compare-and-swap: ``tests/motoserver.py``) on
    127.0.0.1 and a free port, its output in ``log``; its endpoint, once it answers. Stopped
    at the end."""
    endpoint, proc = _start_moto(log)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


_SHARED: list[Any] = []  # the shared server's Popen, if this worker started it


def shared_moto(folder: Path, session_pid: int) -> str:
    """The endpoint of the one moto server the xdist workers of a session share (each
    started one of its own before: ~3 s of CPU each). The first worker to ask starts it, in
    its own session, watching the session's main process (``session_pid``): it exits with
    it, whichever worker started it. ``folder`` is the session's shared temporary folder;
    a lock there makes the others wait for the first."""
    import fcntl

    with (folder / "moto.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = folder / "moto.endpoint"
        if known.exists() and _answers(endpoint := known.read_text().strip()):
            return endpoint
        endpoint, proc = _start_moto(folder / "moto.log", session_pid, start_new_session=True)
        _SHARED.append(proc)
        known.write_text(endpoint + "\n")
        return endpoint


@pytest.fixture(scope="session")
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """Under xdist, one server for all workers (names carry the worker's pid: no test sees
    another's buckets or queues); else one for this process."""
    if hasattr(request.config, "workerinput"):
        yield S3Server(shared_moto(tmp_path_factory.getbasetemp().parent, os.getppid()))
        return
    with running_moto(Path(tmp_path_factory.mktemp("moto")) / "server.log") as endpoint:
        yield S3Server(endpoint)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The server, with this process's environment pointed at it (and the bucket store's
    local cache in the test's folder)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MANIFEST_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return s3_server
