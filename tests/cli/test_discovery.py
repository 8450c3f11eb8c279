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


def test_the_store_records_its_settings_and_a_disagreement_is_an_error(project: Path) -> None:
    """One store, one truth: the recorded mode is used; a flag or variable that agrees is
    fine (the flag is what counts when both are given); one that differs names both."""
    manifest(project, "init", "--mode", "mtime_size")
    import json

    def mode(*args: str, env: dict[str, str] | None = None) -> str:
        out = manifest(project, *args, "status", "--json", env=env)
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["mode"])

    assert mode() == "mtime_size"  # the config file
    assert mode(env={"RAW_SCAN_HASH_MODE": "mtime_size"}) == "mtime_size"
    assert mode("--mode", "mtime_size", env={"RAW_SCAN_HASH_MODE": "content_hash"}) == "mtime_size"
    out = manifest(project, "status", env={"RAW_SCAN_HASH_MODE": "content_hash"})
    assert out.returncode == 3
    assert "mode: RAW_SCAN_HASH_MODE gives 'content_hash' but the store records" in out.stderr
    # init --force records a new setting; the others are kept
    again = manifest(project, "init", "--force", "--exclude", "**/*.tmp")
    assert again.returncode == 0, again.stderr
    assert mode() == "mtime_size"
    config = (project / ".manifest" / "config.toml").read_text()
    assert 'exclude = ["**/*.tmp"]' in config and 'root = "data/1_raw"' in config
    # the fix the mismatch error names works although the variable still disagrees
    fixed = manifest(project, "init", "--force", env={"RAW_SCAN_HASH_MODE": "content_hash"})
    assert fixed.returncode == 0, fixed.stderr
    assert 'mode = "mtime_size"' in (project / ".manifest" / "config.toml").read_text()


def test_version(tmp_path: Path) -> None:
    from manifest import __version__

    out = manifest(tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"manifest {__version__}"


def test_the_glue_store_is_found_with_only_dagster_home_set(project: Path, tmp_path: Path) -> None:
    """A factory adopter's store (``$DAGSTER_HOME/state/<name>``, created by the first tick)
    is what `manifest status` reads from the project folder, with its recorded root and
    exclude: nothing excluded shows as added, and `--exit-code` is 0 once promoted."""
    import json

    from manifest import Repository, load_config

    home = tmp_path / "dagster_home"
    raw = project / "data" / "1_raw"
    (raw / "scratch.tmp").write_text("being written\n")
    for name in ("raw", "landing"):
        store = home / "state" / name
        repo = Repository(load_config(root=raw, store=store, exclude=("**/*.tmp",), env={}))
        repo.begin()  # the first tick: baseline
    env = {"DAGSTER_HOME": str(home)}
    several = manifest(project, "status", env=env)
    assert (
        several.returncode == 3 and "--name" in several.stderr and "landing, raw" in several.stderr
    )
    out = manifest(project, "--name", "raw", "status", "--json", "--exit-code", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["store"] == str(home / "state" / "raw") and data["root"] == str(raw)
    assert data["added"] == [] and data["removed"] == []
    # alone under state/, it needs no --name; -C works from anywhere
    import shutil

    shutil.rmtree(home / "state" / "landing")
    out = manifest(tmp_path, "-C", str(project / "notebooks"), "status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["store"] == str(home / "state" / "raw")
