from __future__ import annotations

from pathlib import Path

import pytest

from manifest import Repository
from manifest.config import load_config
from manifest.errors import AmbiguousStoreError, ConfigError, RootError, SettingsMismatchError


def test_defaults_use_dagster_home_state(tmp_path: Path) -> None:
    cfg = load_config(env={"DAGSTER_HOME": str(tmp_path / "dh")}, cwd=tmp_path)
    assert cfg.root == (tmp_path / "data" / "1_raw").resolve()
    assert cfg.store == (tmp_path / "dh" / "state" / "raw").resolve()  # change_detection's
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


def _store(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "FORMAT").write_text("1\n")
    return path


def test_dagster_home_store_is_found_by_name_or_alone(tmp_path: Path) -> None:
    """The glue keeps ``$DAGSTER_HOME/state/<name>``: the CLI finds the only one, ``name``
    picks one of several, several without a name is an error naming them."""
    env = {"DAGSTER_HOME": str(tmp_path / "dh")}
    state = tmp_path / "dh" / "state"
    _store(state / "landing")
    assert load_config(env=env, cwd=tmp_path).store == state / "landing"
    _store(state / "raw")
    with pytest.raises(AmbiguousStoreError, match=r"several stores \(landing, raw\).*--name"):
        load_config(env=env, cwd=tmp_path)
    assert load_config(env=env, cwd=tmp_path, name="raw").store == state / "raw"
    with pytest.raises(ConfigError, match="DAGSTER_HOME is unset"):
        load_config(env={}, cwd=tmp_path, name="raw")


def test_a_store_kept_at_state_itself_is_still_found(tmp_path: Path) -> None:
    _store(tmp_path / "dh" / "state")
    cfg = load_config(env={"DAGSTER_HOME": str(tmp_path / "dh")}, cwd=tmp_path)
    assert cfg.store == tmp_path / "dh" / "state"


def _recorded_store(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "elsewhere" / "raw"
    root.mkdir(parents=True)
    store = tmp_path / "dh" / "state" / "raw"
    config = load_config(
        root=root, store=store, exclude=("**/*.tmp",), mode="mtime_size", env={}, cwd=tmp_path
    )
    Repository(config).init()
    return root, store


def test_readers_use_the_settings_the_store_records(tmp_path: Path) -> None:
    root, store = _recorded_store(tmp_path)
    cfg = load_config(env={"DAGSTER_HOME": str(tmp_path / "dh")}, cwd=tmp_path / "dh")
    assert cfg.store == store
    assert cfg.root == root  # not ./data/1_raw
    assert cfg.mode == "mtime_size"
    assert cfg.exclude == ("**/*.tmp",) and cfg.include == ()


@pytest.mark.parametrize(
    ("kwargs", "env", "setting", "given_by"),
    [
        ({"exclude": ()}, {}, "exclude", "--exclude"),
        ({}, {"RAW_SCAN_EXCLUDE": "*.bak"}, "exclude", "RAW_SCAN_EXCLUDE"),
        ({"include": ("*.csv",)}, {}, "include", "--include"),
        ({"mode": "content_hash"}, {}, "mode", "--mode"),
        ({}, {"RAW_DATA_DIR": "other"}, "root", "RAW_DATA_DIR"),
    ],
)
def test_a_setting_that_disagrees_with_the_store_names_both(
    tmp_path: Path, kwargs: dict[str, object], env: dict[str, str], setting: str, given_by: str
) -> None:
    _root, store = _recorded_store(tmp_path)
    with pytest.raises(SettingsMismatchError) as info:
        load_config(store=store, env=env, cwd=tmp_path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{setting}: {given_by} gives")
    assert "the store records" in message and str(store / "config.toml") in message
    assert "init --force" in message


def test_the_same_setting_given_again_is_fine(tmp_path: Path) -> None:
    root, store = _recorded_store(tmp_path)
    cfg = load_config(
        root=root, store=store, exclude=("**/*.tmp",), mode="mtime_size", env={}, cwd=tmp_path
    )
    assert cfg.recorded and cfg.exclude == ("**/*.tmp",)


def test_the_first_writer_records_the_settings(tmp_path: Path) -> None:
    """Not only `init`: the first tick or `snapshot` creates the store and records its root,
    mode and filters, so the CLI later sees what the pipeline sees."""
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.tmp").write_text("x")
    store = tmp_path / "st"
    repo = Repository(
        load_config(root=root, store=store, exclude=("**/*.tmp",), env={}, cwd=tmp_path)
    )
    repo.snapshot(ref="last")
    cfg = load_config(store=store, env={}, cwd=tmp_path / "a")
    assert cfg.root == root and cfg.exclude == ("**/*.tmp",)
    assert not Repository(cfg).status().changes  # the excluded file is not "added"


def test_a_store_from_before_settings_is_not_given_a_default_root(tmp_path: Path) -> None:
    """A store made before stores recorded their settings (no config.toml): a writer that
    was not given a root (the CLI's default) records nothing; one given its root does."""
    root = tmp_path / "data" / "in"
    root.mkdir(parents=True)
    (root / "a.csv").write_text("x\n")
    store = tmp_path / "store"
    Repository(load_config(root=root, store=store, env={}, cwd=tmp_path)).snapshot(ref="last")
    (store / "config.toml").unlink()  # as the previous version left it
    default = Repository(load_config(store=store, env={}, cwd=tmp_path))
    with pytest.raises(RootError):
        default.snapshot(ref="last")  # ./data/1_raw does not exist
    assert not (store / "config.toml").exists()
    Repository(load_config(root=root, store=store, env={}, cwd=tmp_path)).snapshot(ref="last")
    assert load_config(store=store, env={}, cwd=tmp_path / "data").root == root
