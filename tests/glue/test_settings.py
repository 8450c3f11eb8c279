"""Issue 23.5: the glue's settings are declared once, in ``ManifestResource``. The factory, the
YAML Component and the resource take exactly the same settings with the same defaults; every
setting reaches the resource by each route (and from the sample's variables); the Component
takes the settings it once lacked and they act; the docs' table is the model's; and the
resource builds its ``Repository`` once per process (and thread), never serving a store's
settings stale.

``python -m tests.glue.test_settings`` rewrites the table in docs/dagster.md."""

from __future__ import annotations

import concurrent.futures
import inspect
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from dagster_glue import ChangeDetectionComponent, ManifestResource, change_detection
from dagster_glue.resource import setting_of
from manifest import Repository, load_config
from manifest.errors import SettingsMismatchError
from manifest.fsutil import StoreLock
from manifest.store import STORE_LOCK
from tests.s3server import S3Server
from tests.test_bucket import upload

from .harness import Project, age_tree, edit, sqlite_instance

DOCS = Path(__file__).parents[2] / "docs"
TABLE_START = (
    "<!-- settings table: generated from ManifestResource by tests/glue/test_settings.py -->"
)
TABLE_END = "<!-- end of settings table -->"
COMPONENT = "dagster_glue.ChangeDetectionComponent"
REQUIRED = "required"
T = TypeVar("T")

# A value other than the default for every setting, as Python gives it and as text (YAML
# and the sample's variables give text for some).
VALUES: dict[str, Any] = {
    "root": "/srv/landing",
    "state_dir": "/srv/landing-store",
    "name": "landing",
    "asset_mode": "observe",
    "selection": "group:landing",
    "cron": "*/2 * * * *",
    "trigger": "sensor",
    "minimum_interval_seconds": 30,
    "full_hash_cron": "0 3 * * *",
    "enabled": True,
    "hash_mode": "mtime_size",
    "cooldown_sec": 7.5,
    "include": ["*.csv", "sub/**"],
    "exclude": ["*.tmp"],
    "bootstrap": "all",
    "batch_size": 9,
    "max_attempts": 4,
    "run_grace_sec": 60.0,
    "lock_timeout_sec": 2.5,
    "events_queue": "https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events",
}
TEXT = {
    **{k: str(v) for k, v in VALUES.items()},
    "enabled": "true",
    "include": "*.csv, sub/**",
    "exclude": "*.tmp",
}


def settings_of(res: ManifestResource) -> dict[str, Any]:
    return {name: getattr(res, name) for name in ManifestResource.model_fields}


def defaults_of_resource() -> dict[str, Any]:
    return {
        name: REQUIRED if field.is_required() else field.default
        for name, field in ManifestResource.model_fields.items()
    }


# -- one model, three routes ---------------------------------------------------------------


def test_the_factory_the_component_and_the_resource_take_exactly_the_same_settings() -> None:
    parameters = inspect.signature(change_detection).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    factory = {
        name: REQUIRED if p.default is inspect.Parameter.empty else p.default
        for name, p in parameters.items()
    }
    yaml_schema = ChangeDetectionComponent.model().model_json_schema()
    component = {
        name: REQUIRED if name in yaml_schema.get("required", ()) else prop["default"]
        for name, prop in yaml_schema["properties"].items()
    }
    resource = defaults_of_resource()
    assert factory == resource
    assert component == resource
    assert list(factory) == list(component) == list(resource)  # the same order, too
    assert set(VALUES) == set(resource), "give the new setting a value in VALUES"


def test_the_component_schema_lists_each_settings_choices_and_description() -> None:
    schema = ChangeDetectionComponent.model().model_json_schema()["properties"]
    for name, field in ManifestResource.model_fields.items():
        assert schema[name]["description"] == field.description, name
        listed = [v for option in schema[name].get("anyOf", []) for v in option.get("enum", [])]
        assert listed == list(setting_of(field).choices), name
    enum = [o for o in schema["hash_mode"]["anyOf"] if "enum" in o]
    assert enum == [{"enum": ["content_hash", "mtime_size", "etag"], "type": "string"}]


@pytest.fixture
def sandbox() -> Iterator[Any]:
    with create_defs_folder_sandbox() as sandbox:
        yield sandbox


def load_component(
    sandbox: Any, attributes: dict[str, Any], assets: str = ""
) -> AbstractContextManager[dg.Definitions]:
    """The definitions Dagster's component loading builds from a ``defs.yaml`` with these
    attributes and a module of assets beside it, as a project's ``defs`` folder holds."""
    sandbox.scaffold_component(
        ChangeDetectionComponent,
        defs_path="watch",
        defs_yaml_contents={"type": COMPONENT, "attributes": attributes},
    )
    if assets:
        (sandbox.defs_folder_path / "assets.py").write_text(assets)
    return sandbox.build_all_defs()


LANDING_ASSET = (
    "import dagster as dg\n\n"
    "@dg.observable_source_asset(group_name='landing', metadata={'source_path': 'a.csv'})\n"
    "def a():\n"
    "    return dg.DataVersion('x')\n"
)


def test_every_setting_reaches_the_resource_by_every_route(sandbox: Any) -> None:
    """Python, YAML (as written and as text) and the sample's variables: the same resource."""
    by_python = change_detection(**VALUES).resources["landing_manifest"]
    assert settings_of(by_python) == VALUES
    for attributes in (VALUES, TEXT):
        with load_component(sandbox, attributes, LANDING_ASSET) as defs:
            assert settings_of(defs.resources["landing_manifest"]) == VALUES
            sensor = defs.resolve_sensor_def("landing_automation_sensor")  # observe mode
            assert sensor is not None
            # trigger: sensor: the sensor replaces the schedule; the full-hash check stays
            trigger = defs.resolve_sensor_def("landing_sensor")
            assert trigger.minimum_interval_seconds == 30
            assert trigger.default_status == dg.DefaultSensorStatus.RUNNING
            with pytest.raises(dg.DagsterInvariantViolationError):
                defs.resolve_schedule_def("landing_schedule")
            schedule = defs.resolve_schedule_def("landing_full_hash_check")
            assert schedule.cron_schedule == "0 3 * * *"
            assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    env = {
        setting_of(field).env_var: TEXT[name]
        for name, field in ManifestResource.model_fields.items()
        if setting_of(field).env_var
    }
    from_env = ManifestResource.settings_from_env(env)
    assert from_env == {k: v for k, v in VALUES.items() if k not in ("name", "selection")}
    assert settings_of(ManifestResource(**from_env, name="landing", selection="group:landing")) == (
        VALUES
    )


def test_an_asset_selection_object_is_held_as_dagsters_text() -> None:
    defs = change_detection(root="/srv/raw", selection=dg.AssetSelection.groups("raw"))
    assert defs.resources["raw_manifest"].selection == 'group:"raw"'


def test_a_bad_value_fails_alike_by_every_route(sandbox: Any) -> None:
    from manifest.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid bootstrap='some'"):
        change_detection(root="/srv/raw", bootstrap="some")
    with pytest.raises(ConfigError, match="invalid lock_timeout_sec='-1'"):
        ManifestResource(root="/srv/raw", lock_timeout_sec="-1")
    with pytest.raises(ConfigError, match="invalid RAW_LOCK_TIMEOUT_SEC='soon'"):
        ManifestResource.settings_from_env({"RAW_LOCK_TIMEOUT_SEC": "soon"})
    with (
        pytest.raises(Exception) as raised,
        load_component(sandbox, {"root": "/r", "bootstrap": "x"}),
    ):
        pass
    assert "bootstrap" in "\n".join(str(e) for e in causes(raised.value))


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


# -- the settings the Component once lacked, acting ----------------------------------------

RAW_ASSETS = (
    "import dagster as dg\n"
    "from dagster_glue import ManifestResource\n\n"
    "@dg.asset(group_name='raw', metadata={'source_path': 'customers.csv'})\n"
    "def customers(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):\n"
    "    return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))\n"
)


def test_bootstrap_and_lock_timeout_from_yaml_take_effect(sandbox: Any, tmp_path: Path) -> None:
    raw, store = tmp_path / "raw", tmp_path / "store"
    raw.mkdir()
    (raw / "customers.csv").write_text("id\n1\n")
    age_tree(raw)
    attributes = {
        "root": str(raw),
        "state_dir": str(store),
        "bootstrap": "all",
        "lock_timeout_sec": 0.3,
    }
    with (
        load_component(sandbox, attributes, RAW_ASSETS) as defs,
        sqlite_instance() as instance,
    ):
        project = Project(defs, instance)
        store.mkdir()
        with StoreLock(store / STORE_LOCK, exclusive=True, timeout=0):  # gc holds the store
            started = time.monotonic()
            skipped = project.tick().skip_message or ""
            waited = time.monotonic() - started
        assert "retrying next tick: store busy" in skipped
        assert 0.3 <= waited < 3  # lock_timeout_sec, not the default 5 s
        # bootstrap: all: the first scan requests every file, where baseline requests none
        (request,) = project.tick().run_requests
        assert request.tags["raw_paths"] == "customers.csv"
        assert project.execute(request).success


def test_etag_from_yaml_reaches_the_store(sandbox: Any, s3: S3Server, tmp_path: Path) -> None:
    raw = f"s3://{s3.make_bucket('raw')}/landing"
    upload(raw, {"customers.csv": b"id\n1\n"})
    store = tmp_path / "store"
    attributes = {"root": raw, "state_dir": str(store), "hash_mode": "etag", "cooldown_sec": 0}
    with (
        load_component(sandbox, attributes, RAW_ASSETS) as defs,
        sqlite_instance() as instance,
    ):
        assert "baseline" in (Project(defs, instance).tick().skip_message or "")
    recorded = Repository(load_config(root=raw, store=store, env={}))
    assert recorded.config.mode == "etag"
    assert (store / "config.toml").read_text().count('mode = "etag"') == 1


# -- the docs ----------------------------------------------------------------------------


def settings_table() -> str:
    """The table of settings in docs/dagster.md, from the model."""
    lines = [
        TABLE_START,
        "| setting | default | a `dg.EnvVar` for it is read | the sample's variable | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in ManifestResource.model_fields.items():
        setting = setting_of(field)
        default = REQUIRED if field.is_required() else f"`{field.default}`"
        read = "when the resource is used" if setting.read_at_use else "when the definitions load"
        variable = f"`{setting.env_var}`" if setting.env_var else ""
        lines.append(f"| `{name}` | {default} | {read} | {variable} | {field.description} |")
    return "\n".join([*lines, TABLE_END])


def documented_table(text: str) -> str:
    return text[text.index(TABLE_START) : text.index(TABLE_END) + len(TABLE_END)]


def test_the_docs_table_is_the_models() -> None:
    text = (DOCS / "dagster.md").read_text(encoding="utf-8")
    assert documented_table(text) == settings_table(), (
        "docs/dagster.md's settings table differs from ManifestResource: run "
        "`python -m tests.glue.test_settings` to rewrite it"
    )


def test_every_variable_the_model_declares_is_documented_for_the_sample() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    for name, field in ManifestResource.model_fields.items():
        variable = setting_of(field).env_var
        if variable:
            assert f"| `{variable}` |" in text, (name, variable)


# -- one Repository per process ----------------------------------------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Repository]:
    """Every ``Repository`` the resource builds from now on (a real one, counted)."""
    import dagster_glue.resource

    out: list[Repository] = []

    class Counted(Repository):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            out.append(self)

    monkeypatch.setattr(dagster_glue.resource, "Repository", Counted)
    return out


def in_a_new_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own (one whose cache of repositories is empty)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def test_a_tick_its_run_and_the_promotion_share_one_repository(
    make_harness: Any, built: list[Repository]
) -> None:
    h = make_harness()
    h.tick()  # creates the store, which then records its settings: built again once
    assert len(built) == 1
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    (request,) = h.tick().run_requests
    assert len(built) == 2 and built[1].config.recorded
    result = h.execute(request)  # the assets call source_metadata, which reads the store
    assert result.success

    def promote() -> None:
        h.run_promotion_sensor(result)

    assert len(built) == 2  # the run's helpers used the tick's
    in_a_new_thread(promote)  # a thread with none yet: the promotion builds exactly one
    assert len(built) == 3
    assert h.repo.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    promote()  # this thread's, still current
    assert len(built) == 3
    assert h.tick().skip_message == "no changes since last"
    assert len(built) == 3


def test_the_same_settings_share_one_repository_until_the_store_record_changes(
    tmp_path: Path, built: list[Repository]
) -> None:
    raw, store = tmp_path / "raw", tmp_path / "store"
    raw.mkdir()
    res = ManifestResource(root=str(raw), state_dir=str(store))
    first = res.repository()
    assert res.repository() is first
    assert ManifestResource(root=str(raw), state_dir=str(store)).repository() is first  # a copy
    assert ManifestResource(root=str(raw), state_dir=str(store), name="b").repository() is not (
        first
    )
    assert in_a_new_thread(res.repository) is not first
    assert len(built) == 3

    first.init()  # the store now records its settings (content_hash)
    pinned = ManifestResource(root=str(raw), state_dir=str(store), hash_mode="content_hash")
    recorded = res.repository()
    assert recorded is not first and recorded.config.recorded
    assert res.repository() is recorded
    assert pinned.repository().config.mode == "content_hash"

    # `manifest init --force --mode mtime_size`: the next call sees the new record
    Repository(
        load_config(root=raw, store=store, mode="mtime_size", env={}, ignore_recorded=True)
    ).init(force=True)
    changed = res.repository()
    assert changed is not recorded and changed.config.mode == "mtime_size"
    with pytest.raises(SettingsMismatchError, match="mtime_size"):
        pinned.repository()  # its own setting now disagrees: an error, never the old one

    shutil.rmtree(store)  # gone: built again (and the next writer records it again)
    again = res.repository()
    assert again is not changed and not again.config.recorded


def test_the_environment_is_part_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: list[Repository]
) -> None:
    """``state_dir`` unset: the store is under ``$DAGSTER_HOME``, which the cache follows."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "one"))
    res = ManifestResource(root=str(tmp_path / "raw"))
    one = res.repository()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "two"))
    two = res.repository()
    assert (one.config.store, two.config.store) == (
        tmp_path / "one" / "state" / "raw",
        tmp_path / "two" / "state" / "raw",
    )


def rewrite_docs() -> None:
    path = DOCS / "dagster.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(documented_table(text), settings_table()), encoding="utf-8")


if __name__ == "__main__":
    rewrite_docs()
    sys.exit(0)
