"""Trigger exactness on the sample, with a real Dagster instance and in-process runs: a
requested change is never dropped, previews cost at most one tick, switching asset modes is
detected, and the planning rules for several matches and observe-mode partitions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_glue import ManifestResource
from dagster_glue.planning import Watched, plan
from manifest import ChangeSet
from manifest.errors import ConfigError

from .harness import edit, sqlite_instance

MALFORMED = "clarity,Clarity,evaluation_templates/coherence.txt,true,EXTRA,FIELDS\n"


def test_a_restored_file_after_a_failed_run_is_reprocessed(make_harness: Any) -> None:
    """The story from the issue: a malformed CSV fails its run, the user restores the good
    file, and the next tick still reloads it and its downstream."""
    h = make_harness()
    h.tick()
    h.warm()
    path = h.root / "evaluation_templates.csv"
    good = path.read_text()
    edit(path, MALFORMED)
    (request,) = h.tick().run_requests
    failed = h.execute(request)
    assert not failed.success
    assert "expected 4 fields" in str(failed.get_step_failure_events()[0].event_specific_data)
    edit(path, good, append=False)  # restored: no difference from last any more
    assert h.repo.status().changes == ChangeSet()
    (again,) = h.tick().run_requests
    assert again.tags[".dagster/raw_fingerprint"] != request.tags[".dagster/raw_fingerprint"]
    assert again.tags["raw_paths"] == "evaluation_templates.csv"
    requeued = h.repo.pending_changes(
        again.tags[".dagster/raw_fingerprint"], h.repo.find_ref("last")
    ).requeued
    assert requeued == ("evaluation_templates.csv",)
    assert {k.to_user_string() for k in again.asset_selection} == {
        "raw_evaluation_templates",
        "evaluation_tasks",
    }
    result = h.execute(again)
    assert result.success
    assert {t["template_id"] for t in result.output_for_node("evaluation_tasks")} == {
        "coherence",
        "originality",
    }
    assert h.tick().run_requests == []
    assert h.repo.find_ref("last") == again.tags[".dagster/raw_fingerprint"]
    assert h.repo.find_ref("unfinished") is None
    assert h.tick().skip_message == "no changes since last"


def test_a_preview_between_two_ticks_costs_nothing(make_harness: Any) -> None:
    """'Preview tick result' evaluates the schedule without launching: it takes pending, but
    the next real tick requests the run at once instead of waiting out the grace period."""
    h = make_harness()  # run_grace_sec: 300
    h.tick()
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    preview = h.tick()  # launched nothing
    (previewed,) = preview.run_requests
    (real,) = h.tick().run_requests  # the next real tick, one minute later
    assert real.run_key == previewed.run_key
    assert h.execute(real).success
    assert h.tick().run_requests == [] and h.repo.find_ref("pending") is None


def test_other_instigators_wait_for_the_grace_period(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    assert len(h.tick().run_requests) == 1
    data = h.tick("raw_full_hash_check")  # not the schedule that took pending
    assert data.run_requests == []
    assert "asks again on its next tick" in (data.skip_message or "")
    assert "evaluation_templates.csv" in (data.skip_message or "")
    assert re.search(r"waiting until \d\d:\d\d:\d\d UTC", data.skip_message or "")


def test_switching_asset_mode_is_detected_and_handled(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    (request,) = h.tick().run_requests
    assert h.execute(request).success
    h.tick()
    observe = make_harness(asset_mode="observe")  # same store and instance, other mode
    data = observe.tick()
    message = data.skip_message or ""
    assert "last was processed in materialize mode" in message
    # every source already has a data version (from its materializations): none is
    # overwritten, so the switch alone recomputes nothing
    assert "recorded 0 source data versions" in message
    for key in ("raw_concepts", "raw_evaluation_templates"):
        assert h.instance.get_latest_data_version_record(dg.AssetKey(key)) is not None
    edit(observe.root / "link_templates.csv", "y,Y,generation_templates/links/causal.txt,true\n")
    (request,) = observe.tick().run_requests
    assert request.job_name == "observe_raw_sources"
    assert observe.execute(request).success
    observe.tick()
    back = make_harness()
    assert "last was processed in observe mode" in (back.tick().skip_message or "")


def test_raw_observation_carries_source_and_fingerprints(make_harness: Any) -> None:
    h = make_harness(asset_mode="observe")
    h.tick()
    edit(h.root / "link_templates.csv", "y,Y,generation_templates/links/causal.txt,true\n")
    (request,) = h.tick().run_requests
    result = h.execute(request)
    (observation,) = result.asset_observations_for_node("raw_sources")
    meta = observation.metadata
    assert meta["source_path"].value == "link_templates.csv"
    assert meta["source_file"].value == str(h.root / "link_templates.csv")
    assert meta["change"].value == "modified"
    assert meta["fingerprint_new"].value == observation.data_version
    assert meta["fingerprint_old"].value not in (observation.data_version, "missing")


def test_materialized_raw_and_derived_assets_explain_themselves(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    h.warm()
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    (request,) = h.tick().run_requests
    result = h.execute(request)
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    raw = meta["raw_evaluation_templates"]
    assert raw["source_file"].value == str(h.root / "evaluation_templates.csv")
    assert raw["change"].value == "modified" and raw["rows"].value == 3
    assert meta["evaluation_tasks"]["rows"].value > 0
    assert request.tags["raw_paths"] == "evaluation_templates.csv"


def _watched(key: str, glob: str, partitions: str | None = None) -> Watched:
    from manifest.globs import compile_globs

    pattern = compile_globs([glob], "test")
    assert pattern is not None
    return Watched(dg.AssetKey(key), glob, pattern, partitions, False)


def test_a_file_matched_by_several_assets_triggers_each() -> None:
    graph = dg.Definitions(
        assets=[dg.AssetSpec("csvs"), dg.AssetSpec("prices"), dg.AssetSpec("other")]
    ).resolve_asset_graph()
    watched = [
        _watched("csvs", "**/*.csv"),
        _watched("prices", "prices/*.csv"),
        _watched("other", "other.txt"),
    ]
    changes = ChangeSet(added=("prices/a.csv", "notes.md"), modified=("top.csv",))
    planned = plan(changes, watched, graph, batch_size=50, observe=False)
    assert [b.roots for b in planned.batches] == [(dg.AssetKey("csvs"), dg.AssetKey("prices"))]
    assert planned.by_path["prices/a.csv"] == [dg.AssetKey("csvs"), dg.AssetKey("prices")]
    assert planned.ignored == ["notes.md"]


def test_partitions_in_observe_mode_are_refused_with_a_reason() -> None:
    graph = dg.Definitions(assets=[dg.AssetSpec("notes")]).resolve_asset_graph()
    with pytest.raises(ConfigError, match="use asset_mode='materialize'"):
        plan(
            ChangeSet(added=("n/a.txt",)),
            [_watched("notes", "n/*.txt", partitions="notes_files")],
            graph,
            batch_size=50,
            observe=True,
        )


def test_state_dir_defaults_under_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    res = ManifestResource(root=str(tmp_path / "raw"), name="landing")
    assert res.store_path() == tmp_path / "state" / "landing"
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(ConfigError, match="DAGSTER_HOME is unset"):
        res.store_path()


def test_bad_factory_arguments_name_the_argument() -> None:
    from dagster_glue import change_detection

    for kwargs, name in [
        ({"asset_mode": "both"}, "asset_mode"),
        ({"cron": "every minute"}, "cron"),
        ({"batch_size": 0}, "batch_size"),
        ({"run_grace_sec": "nan"}, "run_grace_sec"),
        ({"name": "bad name"}, "name"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(name)):
            change_detection(root="/tmp", **kwargs)


def test_tick_logs_what_it_scanned_and_decided(
    make_harness: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", "x,X,evaluation_templates/coherence.txt,true\n")
    capfd.readouterr()
    h.tick()
    text = capfd.readouterr().err
    assert f"scanned {h.root}" in text
    assert "evaluation_templates.csv -> raw_evaluation_templates" in text
    assert "requesting run raw-" in text


def test_partitions_are_registered_when_the_baseline_was_taken_elsewhere(
    make_harness: Any,
) -> None:
    h = make_harness()
    assert h.repo.begin().outcome == "baseline"  # by the CLI, not by a tick
    assert h.instance.get_dynamic_partitions("raw_feedback_files") == []
    assert h.tick().skip_message == "no changes since last"
    assert len(h.instance.get_dynamic_partitions("raw_feedback_files")) == 3


def test_selection_narrows_the_watched_assets() -> None:
    from dagster_glue.planning import find_watched

    specs = [
        dg.AssetSpec("a", group_name="raw", metadata={"source_path": "a.csv"}),
        dg.AssetSpec("b", group_name="other", metadata={"source_path": "b/*.csv"}),
        dg.AssetSpec("c", group_name="raw"),  # no source_path: never watched
    ]
    repository_def = dg.Definitions(assets=specs).get_repository_def()
    assert [w.key.to_user_string() for w in find_watched(repository_def, None)] == ["a", "b"]
    # specs are external assets, like observable sources: an AssetSelection object must
    # include sources to see them (a selection string always does)
    by_object = find_watched(
        repository_def, dg.AssetSelection.groups("other", include_sources=True)
    )
    assert [(w.key.to_user_string(), w.source_path) for w in by_object] == [("b", "b/*.csv")]
    by_string = find_watched(repository_def, "group:raw")
    assert [w.key.to_user_string() for w in by_string] == ["a"]


def test_every_setting_may_be_an_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_glue import change_detection

    values = {
        "W_ROOT": str(tmp_path / "root"),
        "W_STORE": str(tmp_path / "store"),
        "W_NAME": "landing",
        "W_MODE": "observe",
        "W_CRON": "*/2 * * * *",
        "W_ON": "true",
        "W_HASH": "mtime_size",
        "W_COOL": "7.5",
        "W_INC": "*.csv,sub/**",
        "W_BATCH": "9",
        "W_GRACE": "60",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    e = dg.EnvVar
    defs = change_detection(
        root=e("W_ROOT"),
        state_dir=e("W_STORE"),
        name=e("W_NAME"),
        asset_mode=e("W_MODE"),
        cron=e("W_CRON"),
        enabled=e("W_ON"),
        hash_mode=e("W_HASH"),
        cooldown_sec=e("W_COOL"),
        include=e("W_INC"),
        batch_size=e("W_BATCH"),
        run_grace_sec=e("W_GRACE"),
    )
    schedule = defs.resolve_schedule_def("landing_schedule")
    assert schedule.cron_schedule == "*/2 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_job_def("observe_landing_sources") is not None
    assert str(tmp_path / "root") in (schedule.description or "")
    with dg.build_resources(dict(defs.resources or {})) as resources:
        res = resources.landing_manifest
        repo = res.repository()
    assert repo.config.root == tmp_path / "root" and repo.config.store == tmp_path / "store"
    assert repo.config.mode == "mtime_size" and repo.config.cooldown_sec == 7.5
    assert repo.config.include == ("*.csv", "sub/**")
    assert (res.batch_size, res.run_grace_sec) == (9, 60.0)


def test_nothing_is_materialized_twice_or_from_a_stale_fan_in() -> None:
    """An unpartitioned change whose downstream also reads a fan-in waits for the partition
    runs and runs the fan-in with it, once; an unrelated unpartitioned change runs at once."""
    from dagster_glue.planning import find_watched, progress, selection

    parts = dg.DynamicPartitionsDefinition(name="parts")

    @dg.asset(partitions_def=parts, metadata={"source_path": "p/*.txt"})
    def a() -> None: ...

    @dg.asset(deps=[a])
    def f() -> None: ...  # the fan-in

    @dg.asset(metadata={"source_path": "u.csv"})
    def u() -> None: ...

    @dg.asset(deps=[u, f])
    def g() -> None: ...  # reads the changed file and the fan-in

    @dg.asset(metadata={"source_path": "other.csv"})
    def other() -> None: ...

    repository_def = dg.Definitions(assets=[a, f, u, g, other]).get_repository_def()
    graph = repository_def.asset_graph
    watched = find_watched(repository_def, None)
    changes = ChangeSet(modified=("other.csv", "p/x.txt", "u.csv"))
    planned = plan(changes, watched, graph, batch_size=1, observe=False)
    by_roots = {tuple(k.to_user_string() for k in b.roots): b for b in planned.batches}
    assert set(by_roots) == {("a",), ("other",), ("u", "f")}
    assert by_roots[("other",)].after == ()  # not held back
    assert by_roots[("u", "f")].after == (by_roots[("a",)].number,)
    assert by_roots[("u", "f")].processed() == ("p/x.txt", "u.csv")
    with sqlite_instance() as instance:
        keys, _, _ = selection(by_roots[("u", "f")], graph, instance, observe=False)
    assert {k.to_user_string() for k in keys} == {"u", "f", "g"}  # g once, after the parts
    # after the partition and `other` succeeded, a superseding pending skips both
    done, done_own = progress(
        planned, changes, {by_roots[("a",)].number, by_roots[("other",)].number}
    )
    assert (done, done_own) == (("other.csv",), ("p/x.txt",))
