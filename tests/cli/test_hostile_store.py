"""Issue 22.15: damaged and hostile store files and revisions end in a one-line error (or
are ignored, for a cache), never a hang or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import write


def manifest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env["RAW_SCAN_COOLDOWN_SEC"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "manifest", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # a hang fails the test
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "data" / "1_raw" / "a.csv", "x\n")
    assert manifest(tmp_path, "init").returncode == 0
    assert manifest(tmp_path, "snapshot", "--ref", "last").returncode == 0
    return tmp_path


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("rev", ["last~" + "9" * 5000, "last@{" + "9" * 5000 + "}"])
def test_a_huge_count_in_a_revision_is_an_error(project: Path, rev: str) -> None:
    assert "at most 9 digits" in one_line_error(manifest(project, "show", rev))


def test_a_config_file_that_is_a_fifo_or_endless_is_refused(project: Path) -> None:
    config = project / ".manifest" / "config.toml"
    config.unlink()
    os.mkfifo(config)
    assert "not a regular file" in one_line_error(manifest(project, "--store", ".manifest", "log"))
    config.unlink()
    config.symlink_to("/dev/zero")
    assert "config.toml" in one_line_error(manifest(project, "--store", ".manifest", "log"))


def test_a_deeply_nested_config_file_is_an_error(project: Path) -> None:
    (project / ".manifest" / "config.toml").write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    assert "config.toml" in one_line_error(manifest(project, "--store", ".manifest", "log"))


def test_a_stat_cache_replaced_by_a_fifo_is_ignored(project: Path) -> None:
    index = project / ".manifest" / "index"
    index.unlink(missing_ok=True)
    os.mkfifo(index)
    out = manifest(project, "status")
    assert out.returncode == 0, out.stderr


def test_a_store_that_is_a_symlink_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".manifest").symlink_to(".manifest")
    line = one_line_error(manifest(tmp_path, "--store", ".manifest", "status"))
    assert ".manifest" in line


WAIT_THEN_RUN = "import time; time.sleep(0.5); from manifest.cli import main; main()"


def test_a_deleted_current_folder_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,sys,time; time.sleep(0.5); from manifest.cli import main; main()",
            "status",
        ],
        cwd=gone,
        stderr=subprocess.PIPE,
        text=True,
    )
    gone.rmdir()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "current folder no longer exists" in err


def test_a_root_at_slash_and_a_store_inside_a_store_are_refused(project: Path) -> None:
    assert "whole machine" in one_line_error(
        manifest(project, "--root", "/", "--store", "x", "snapshot")
    )
    inner = manifest(project / ".manifest", "init", "--root", "..")
    assert "outside another store" in one_line_error(inner)
    assert not (project / ".manifest" / ".manifest").exists()
