"""A real PostgreSQL server on 127.0.0.1 for the daemon tests: PostgreSQL's own ``initdb`` and
``pg_ctl``, a fresh cluster in a temporary folder (its unix socket there too), a free port,
stopped and removed when the session ends. One server per test session (under xdist, per
worker); each test makes its own database and points a Dagster instance at it through
``dagster.yaml``'s ``storage: postgres:``, as a deployment does.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (else
``nobody``), in a folder that user owns.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")
USER = "dagster"  # the cluster's superuser (trust authentication, 127.0.0.1 only)
_counter = itertools.count()


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((str(Path(d) / name) for d in BIN_DIRS if (Path(d) / name).is_file()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, port: int, socket_dir: Path) -> None:
        self.port = port
        self.socket_dir = socket_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def make_database(self, stem: str = "dagster") -> str:
        """A new, empty database; its name."""
        import psycopg2  # dagster-postgres's driver (the test extra installs it)

        name = f"{stem}_{os.getpid()}_{next(_counter)}"
        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def storage_yaml(self, database: str) -> str:
        """The ``storage:`` block of a ``dagster.yaml`` for ``database`` (runs, event log and
        schedules, ticks included, all in it), as docs/operations.md shows it.

        ``scheme: postgresql+psycopg2``: SQLAlchemy 2.1 reads a bare ``postgresql://`` as
        psycopg 3, which dagster-postgres 0.29 does not install (it brings psycopg2);
        without the scheme every storage call fails with "No module named 'psycopg'"."""
        return (
            "storage:\n"
            "  postgres:\n"
            "    postgres_db:\n"
            f"      username: {USER}\n"
            "      hostname: 127.0.0.1\n"
            f"      port: {self.port}\n"
            f"      db_name: {database}\n"
            "      scheme: postgresql+psycopg2\n"
        )


def _as_owner(owner: pwd.struct_passwd | None) -> dict[str, object]:
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A new cluster, started; stopped and removed on exit."""
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL's initdb and pg_ctl are needed (PostgreSQL 15 or later)")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = pwd.getpwnam("nobody")
    # Not under pytest's own temp folder: its parents are private to this user, and the
    # server (as root: another user) must reach its data folder and socket.
    top = Path(tempfile.mkdtemp(prefix="manifest-pg-"))
    data, log = top / "data", top / "server.log"
    if owner is not None:
        os.chown(top, owner.pw_uid, owner.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", TZ="UTC")
    run = {"env": env, "cwd": top, "capture_output": True, "text": True, **_as_owner(owner)}
    port = _free_port()
    try:
        made = subprocess.run(
            [initdb, "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            timeout=120,
            **run,  # type: ignore[call-overload]
        )
        assert made.returncode == 0, made.stdout + made.stderr
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={top} "
            # a test cluster: nothing here needs to survive a crash of the machine
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        started = subprocess.run(
            [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            timeout=120,
            **run,  # type: ignore[call-overload]
        )
        if started.returncode != 0:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"postgres did not start: {started.stderr}\n{text}")
        server = PostgresServer(port, top)
        _wait_until_ready(server, log)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                timeout=120,
                **run,  # type: ignore[call-overload]
            )
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _wait_until_ready(server: PostgresServer, log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg2.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not answer: {log.read_text()}") from None
            time.sleep(0.2)
