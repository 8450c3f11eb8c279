"""A repository found like git finds .git: init, walking up, -C, precedence, no store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import write


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "proj" / "data" / "1_raw" / "a.csv", "x\n")
    write(tmp_path / "proj" / "data" / "1_raw" / "sub" / "b.csv", "y\n")
    (tmp_path / "proj" / "notebooks" / "deep").mkdir(parents=True)
    return tmp_path / "proj"


def manifest(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    clean["RAW_SCAN_COOLDOWN_SEC"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "manifest", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_then_every_folder_below_finds_the_store(project: Path) -> None:
    made = manifest(project, "init", "--exclude", "**/*.tmp")
    assert made.returncode == 0, made.stderr
    assert "Initialized a manifest store in" in made.stdout
    config = (project / ".manifest" / "config.toml").read_text()
    assert 'root = "data/1_raw"' in config and 'exclude = ["**/*.tmp"]' in config
    deep = project / "notebooks" / "deep"
    snap = manifest(deep, "snapshot", "--ref", "last")
    assert snap.returncode == 0, snap.stderr
    status = manifest(deep, "status", "--json")
    assert status.returncode == 0
    import json

    data = json.loads(status.stdout)
    assert data["store"] == str(project / ".manifest")
    assert data["root"] == str(project / "data" / "1_raw")  # relative to the store, not cwd
    write(project / "data" / "1_raw" / "x.tmp", "ignored\n")
    assert json.loads(manifest(deep, "status", "--json").stdout)["added"] == []
    # -C, like git
    elsewhere = project.parent
    log = manifest(elsewhere, "-C", str(deep), "log")
    assert log.returncode == 0 and "last@{0}" in log.stdout
    # a second init is refused
    again = manifest(project, "init")
    assert again.returncode == 3 and "config.toml" in again.stderr


def test_outside_any_project_reading_commands_say_where_they_looked(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely" / "dir"
    lonely.mkdir(parents=True)
    for command in (["log"], ["status"], ["diff", "last"], ["show"], ["fsck"]):
        proc = manifest(lonely, *command)
        assert proc.returncode == 3, command
        assert "no manifest store found" in proc.stderr
        assert (
            str(lonely / ".manifest") in proc.stderr and str(tmp_path / ".manifest") in proc.stderr
        )
        assert "manifest init" in proc.stderr
    assert not (lonely / ".manifest").exists()  # reading never creates a store


def test_precedence_flag_then_variable_then_config_file(project: Path) -> None:
    manifest(project, "init", "--mode", "mtime_size")
    import json

    def mode(*args: str, env: dict[str, str] | None = None) -> str:
        out = manifest(project, *args, "status", "--json", env=env)
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["mode"])

    assert mode() == "mtime_size"  # the config file
    assert mode(env={"RAW_SCAN_HASH_MODE": "content_hash"}) == "content_hash"  # the variable
    assert mode("--mode", "mtime_size", env={"RAW_SCAN_HASH_MODE": "content_hash"}) == "mtime_size"


def test_version(tmp_path: Path) -> None:
    from manifest import __version__

    out = manifest(tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"manifest {__version__}"
