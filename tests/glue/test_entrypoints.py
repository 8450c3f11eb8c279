"""The README's main job and `dagster` finding the definitions from the repository root."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .processes import stop

REPO_ROOT = Path(__file__).parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(tmp_path)
    return env


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    before = sorted(p.stat().st_mtime_ns for p in (REPO_ROOT / "data" / "1_raw").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "dagster_glue.sample.demo"],
        cwd=REPO_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[tick] after the edit: 1 run request(s)" in out
    assert "materialized: evaluation_tasks, raw_evaluation_templates" in out
    assert "[tick] next tick: no changes since last" in out
    assert "partition=feedback/reviewer_c.txt assets: feedback_words, raw_feedback" in out
    assert "materialized: feedback_digest" in out
    assert out.rstrip().endswith("demo: OK")
    assert " - DEBUG - " not in out + proc.stderr  # the story, not Dagster's event log
    after = sorted(p.stat().st_mtime_ns for p in (REPO_ROOT / "data" / "1_raw").rglob("*"))
    assert before == after  # the bundled sample is untouched


def test_dagster_finds_the_definitions_from_pyproject(tmp_path: Path) -> None:
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [str(dagster), "definitions", "validate"],
        cwd=REPO_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_dagster_dev_as_the_readme_runs_it(tmp_path: Path) -> None:
    """The README's UI command on a fresh DAGSTER_HOME: the webserver answers and the code
    location loads with the sample's schedule."""
    home = tmp_path / ".dagster_home"
    port = _free_port()
    env = _env(tmp_path)
    env.update(DAGSTER_HOME=str(home), RAW_SCHEDULE_ENABLED="true")
    command = (
        f"mkdir -p {home} && exec {Path(sys.executable).parent / 'dagster'} dev "
        f"-p {port} -h 127.0.0.1"
    )
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    query = (
        '{"query": "{ repositoriesOrError { ... on RepositoryConnection '
        '{ nodes { schedules { name } } } } }"}'
    )
    try:
        deadline = time.monotonic() + 150
        body = ""
        while time.monotonic() < deadline and "raw_schedule" not in body:
            time.sleep(2)
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=query.encode(),
                    headers={"Content-Type": "application/json"},
                )
                body = urllib.request.urlopen(request, timeout=5).read().decode()
            except OSError:
                continue
        assert "raw_schedule" in body, body[-2000:]
    finally:
        stop(proc, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
