from __future__ import annotations

from pathlib import Path

import pytest

from manifest.config import load_config
from manifest.errors import ConfigError


def test_defaults_use_dagster_home_state(tmp_path: Path) -> None:
    cfg = load_config(env={"DAGSTER_HOME": str(tmp_path / "dh")}, cwd=tmp_path)
    assert cfg.root == (tmp_path / "data" / "1_raw").resolve()
    assert cfg.store == (tmp_path / "dh" / "state").resolve()
    assert cfg.mode == "content_hash"
    assert cfg.cooldown_sec == 3.0
    assert cfg.bootstrap == "baseline"
    assert cfg.include == () and cfg.exclude == ()


def test_store_falls_back_to_dot_manifest_without_dagster_home(tmp_path: Path) -> None:
    cfg = load_config(env={}, cwd=tmp_path)
    assert cfg.store == (tmp_path / ".manifest").resolve()


def test_environment_knobs_are_read(tmp_path: Path) -> None:
    env = {
        "RAW_DATA_DIR": "elsewhere",
        "RAW_STATE_DIR": "st",
        "RAW_SCAN_HASH_MODE": "mtime_size",
        "RAW_SCAN_COOLDOWN_SEC": "0.5",
        "RAW_SCAN_INCLUDE": "**/*.csv, *.txt",
        "RAW_SCAN_EXCLUDE": "tmp/**\nscratch/**",
        "RAW_SCAN_BOOTSTRAP": "all",
    }
    cfg = load_config(env=env, cwd=tmp_path)
    assert cfg.root == (tmp_path / "elsewhere").resolve()
    assert cfg.store == (tmp_path / "st").resolve()
    assert cfg.mode == "mtime_size"
    assert cfg.cooldown_sec == 0.5
    assert cfg.include == ("**/*.csv", "*.txt")
    assert cfg.exclude == ("tmp/**", "scratch/**")
    assert cfg.bootstrap == "all"


def test_explicit_arguments_win_over_environment(tmp_path: Path) -> None:
    env = {"RAW_SCAN_HASH_MODE": "mtime_size", "RAW_STATE_DIR": "st"}
    cfg = load_config(mode="content_hash", store=tmp_path / "other", env=env, cwd=tmp_path)
    assert cfg.mode == "content_hash"
    assert cfg.store == (tmp_path / "other").resolve()


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("RAW_SCAN_HASH_MODE", "sha1", "content_hash or mtime_size"),
        ("RAW_SCAN_COOLDOWN_SEC", "soon", "seconds"),
        ("RAW_SCAN_COOLDOWN_SEC", "-1", "seconds"),
        ("RAW_SCAN_COOLDOWN_SEC", "nan", "seconds"),
        ("RAW_SCAN_BOOTSTRAP", "everything", "baseline or all"),
        ("MANIFEST_JOBS", "lots", "a number of processes >= 1, or auto"),
        ("MANIFEST_JOBS", "0", "a number of processes >= 1, or auto"),
    ],
)
def test_invalid_values_name_the_variable_and_allowed_values(
    tmp_path: Path, variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={variable: value}, cwd=tmp_path)
    message = str(info.value)
    assert variable in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    ("value", "jobs"), [("", None), ("auto", None), (" AUTO ", None), ("3", 3)]
)
def test_manifest_jobs(tmp_path: Path, value: str, jobs: int | None) -> None:
    assert load_config(env={"MANIFEST_JOBS": value}, cwd=tmp_path).jobs == jobs
