"""The README's main job and `dagster` finding the definitions from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(tmp_path)
    return env


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    before = sorted(p.stat().st_mtime_ns for p in (REPO_ROOT / "data" / "1_raw").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "dagster_glue.demo"],
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
    assert out.rstrip().endswith("demo: OK")
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
