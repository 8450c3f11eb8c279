"""Tick outcomes, with a real Dagster instance and real in-process runs."""

from __future__ import annotations

import datetime
import os
import re
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_glue.planning import find_watched, match
from dagster_glue.sample.assets import RAW_FILES
from dagster_glue.sample.definitions import defs as sample_defs
from dagster_glue.sample.settings import load_glue_settings
from manifest.errors import ConfigError

from .harness import edit

NEW_EVAL = "clarity,Clarity,evaluation_templates/coherence.txt,true\n"


def path_to_asset_key(path: str) -> dg.AssetKey | None:
    hits = match(find_watched(sample_defs.get_repository_def(), None), path)
    return hits[0].key if hits else None


def test_mapping_comes_from_source_path_metadata() -> None:
    assert path_to_asset_key("concepts/concepts_metadata.csv") == dg.AssetKey("raw_concepts")
    assert path_to_asset_key("link_templates.csv") == dg.AssetKey("raw_link_templates")
    assert path_to_asset_key("essay_templates.csv") == dg.AssetKey("raw_essay_templates")
    assert path_to_asset_key("evaluation_templates.csv") == dg.AssetKey("raw_evaluation_templates")
    # Deliberately not observed:
    assert path_to_asset_key("concepts/descriptions/c001.txt") is None
    assert path_to_asset_key("generation_templates/links/analogy.txt") is None
    specs = {s.key.to_user_string(): s for s in sample_defs.resolve_all_asset_specs()}
    for name, rel in RAW_FILES.items():
        assert specs[name].metadata["source_path"] == rel


def test_unchanged_tree_skips(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    data = h.tick()
    assert data.run_requests == [] and data.skip_message == "no changes since last"


def test_one_request_with_expected_key_and_tags(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    (request,) = h.tick().run_requests
    pending = h.repo.find_ref("pending")
    assert pending is not None
    assert request.run_key == f"raw-{pending[:16]}-b1-a1"
    assert request.job_name == "raw_reload_job"
    assert request.tags[".dagster/raw_last"] == h.repo.find_ref("last")
    assert request.tags["raw_paths"] == "evaluation_templates.csv"
    # the Runs list shows what a person filters by; ids are hidden tags
    shown = {k for k in request.tags if not k.startswith((".dagster/", "dagster/"))}
    assert shown == {"trigger", "raw_paths", "raw_batch", "raw_attempt", "raw_added_ancestors"}
    assert not any(re.search(r"[0-9a-f]{64}", request.tags[k]) for k in shown)
    # The same change begun again (the first pending abandoned) is a new request with a new
    # key: a run of the abandoned snapshot never stands in for it.
    h.repo.abandon(request.tags[".dagster/raw_fingerprint"])
    (again,) = h.tick().run_requests
    assert again.run_key != request.run_key
    assert again.tags[".dagster/raw_fingerprint"] != request.tags[".dagster/raw_fingerprint"]


def test_cooldown_filters_a_fresh_edit(make_harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_SCAN_COOLDOWN_SEC", "30")
    h = make_harness()
    h.tick()
    path = h.root / "evaluation_templates.csv"
    with open(path, "a") as fh:
        fh.write(NEW_EVAL)  # mtime: now
    data = h.tick()
    assert data.run_requests == []
    assert "waiting for evaluation_templates.csv to settle" in (data.skip_message or "")
    stamp = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(stamp, stamp))
    assert len(h.tick().run_requests) == 1


def test_batching_splits_and_promotes_only_when_every_batch_succeeded(make_harness: Any) -> None:
    h = make_harness(batch_size=1)
    h.tick()
    h.warm()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    edit(
        h.root / "essay_templates.csv",
        "letter2,Letter,generation_templates/essay/letter.txt,true\n",
    )
    requests = h.tick().run_requests
    assert [r.tags["raw_batch"] for r in requests] == ["1/2", "2/2"]
    assert len({r.run_key for r in requests}) == 2
    pending = h.repo.find_ref("pending")
    assert h.execute(requests[0]).success
    # batch 2 has no run: a later tick asks for it again (same key), and does not promote
    assert [r.run_key for r in h.tick().run_requests] == [requests[1].run_key]
    assert h.repo.find_ref("pending") == pending
    assert h.execute(requests[1]).success
    h.tick()
    assert h.repo.find_ref("last") == pending and h.repo.find_ref("pending") is None


def test_failed_batch_is_retried_alone(make_harness: Any) -> None:
    h = make_harness(batch_size=1)
    h.tick()
    h.warm()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    edit(h.root / "link_templates.csv", "bad,Bad,generation_templates/links/missing.txt,true\n")
    first, second = h.tick().run_requests
    results = [h.execute(first), h.execute(second)]
    assert [r.success for r in results] == [True, False]  # evaluation ok, links broken
    (retry,) = h.tick().run_requests
    assert retry.tags["raw_batch"] == second.tags["raw_batch"]
    assert retry.tags["raw_attempt"] == "2"


def test_retry_limit_then_skip_with_instructions(make_harness: Any) -> None:
    h = make_harness(max_attempts=2)
    h.tick()
    h.warm()
    edit(h.root / "link_templates.csv", "bad,Bad,generation_templates/links/missing.txt,true\n")
    (request,) = h.tick().run_requests
    assert not h.execute(request).success
    (retry,) = h.tick().run_requests
    assert not h.execute(retry).success
    # giving up fails the tick (red in the UI, never the grey of "nothing changed"), naming
    # the file and the runs in the order they ran; every later tick too, until it is fixed
    for _ in range(2):
        with pytest.raises(dg.DagsterUserCodeExecutionError) as info:
            h.tick()
        message = str(info.value.__cause__)
        assert message.startswith("gave up processing link_templates.csv: stopped retrying")
        runs = [r.run_id for r in reversed(h.instance.get_runs())][-2:]  # oldest first
        assert f"runs {runs[0]}, {runs[1]}, oldest first" in message
        assert "manifest reset" in message
    assert h.repo.find_ref("pending") == request.tags[".dagster/raw_fingerprint"]
    # `manifest status` no longer says a run is processing it: it failed, which runs, what to do
    failure = h.repo.status().pending_failure
    assert failure is not None and len(failure.runs) == 2
    from typer.testing import CliRunner

    from manifest.cli import app

    out = CliRunner().invoke(app, ["--no-pager", "status"], env={"NO_COLOR": "1"}).output
    assert "processing FAILED, retries stopped" in out and failure.runs[0] in out
    assert "handed to a run" not in out
    # a newer edit supersedes it; the record no longer applies
    edit(h.root / "link_templates.csv", "", append=True)
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    h.tick()
    assert h.repo.status().pending_failure is None


def test_changes_mapping_to_no_asset_advance_last_without_a_run(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "concepts" / "descriptions" / "c001.txt", "More prose.\n")
    data = h.tick()
    assert data.run_requests == []
    assert "concepts/descriptions/c001.txt" in (data.skip_message or "")
    assert h.repo.find_ref("pending") is None
    assert h.repo.log("last")[0].reason == "no run needed: ignored concepts/descriptions/c001.txt"
    assert h.tick().skip_message == "no changes since last"


def test_bootstrap_all_requests_everything(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAW_SCAN_BOOTSTRAP", "all")
    h = make_harness()
    first = h.tick().run_requests  # one run per feedback file, and everything unpartitioned
    partitions = [r for r in first if r.partition_key is not None]
    assert sorted(r.partition_key for r in partitions) == [
        "feedback/reviewer_a.txt",
        "feedback/reviewer_b.txt",
        "feedback/reviewer_c.txt",
    ]
    (unpartitioned,) = [r for r in first if r.partition_key is None]  # not held back
    assert "feedback_digest" not in {k.to_user_string() for k in unpartitioned.asset_selection}
    assert all(h.execute(r).success for r in first)
    (fan_in,) = h.tick().run_requests  # then the fan-in, once
    assert {k.to_user_string() for k in fan_in.asset_selection} == {"feedback_digest"}
    assert h.execute(fan_in).success
    h.tick()
    assert h.repo.find_ref("last") == fan_in.tags[".dagster/raw_fingerprint"]


def test_removed_file_is_an_empty_table(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    h.warm()
    (h.root / "evaluation_templates.csv").unlink()
    (request,) = h.tick().run_requests
    assert request.tags["raw_paths"] == "evaluation_templates.csv"
    result = h.execute(request)
    assert result.success
    assert result.output_for_node("evaluation_tasks") == []


def test_missed_ticks_replayed_back_to_back_are_harmless(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    when = h.clock = h.clock + datetime.timedelta(minutes=1)
    (request,) = h.tick(when=when).run_requests
    # The daemon re-evaluating the same tick (after a crash) never requests twice
    replays = [h.tick(when=when) for _ in range(5)]
    assert all(r.run_requests == [] for r in replays)
    # A later tick that finds no run (the daemon creates a tick's runs before the next
    # tick, so this one was never launched) requests it again at once, same key.
    (again,) = h.tick().run_requests
    assert again.run_key == request.run_key
    assert h.execute(again).success
    assert h.tick().run_requests == [] and h.repo.find_ref("pending") is None


def test_lost_request_is_requested_again_after_the_grace_period(make_harness: Any) -> None:
    h = make_harness(run_grace_sec=0)
    h.tick()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    (request,) = h.tick().run_requests  # never executed: the request was lost
    (again,) = h.tick().run_requests
    assert again.tags[".dagster/raw_fingerprint"] == request.tags[".dagster/raw_fingerprint"]


def test_promotion_sensor_promotes_at_once(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    (request,) = h.tick().run_requests
    result = h.execute(request)
    h.run_promotion_sensor(result)
    assert h.repo.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    assert h.repo.find_ref("pending") is None
    h.run_promotion_sensor(result)  # idempotent, and the tick agrees
    assert h.tick().skip_message == "no changes since last"


def test_full_hash_check_catches_an_edit_that_kept_size_and_mtime(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    path = h.root / "evaluation_templates.csv"
    st = path.stat()
    data = path.read_bytes().replace(b"Coherence", b"COHERENCE")
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    (request,) = h.tick("raw_full_hash_check").run_requests
    assert {k.to_user_string() for k in request.asset_selection} >= {"raw_evaluation_templates"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RAW_ASSET_MODE", "both"),
        ("RAW_SCAN_CRON", "every minute"),
        ("RAW_MAX_ATTEMPTS", "0"),
        ("RAW_BATCH_SIZE", "x"),
        ("RAW_SCHEDULE_ENABLED", "maybe"),
    ],
)
def test_bad_glue_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_glue_settings({variable: value})


def test_schedule_is_stopped_unless_enabled() -> None:
    from dagster_glue.sample.definitions import build

    off = build(load_glue_settings({}))
    on = build(load_glue_settings({"RAW_SCHEDULE_ENABLED": "true", "RAW_SCAN_CRON": "* * * * *"}))
    assert (
        off.resolve_schedule_def("raw_schedule").default_status == dg.DefaultScheduleStatus.STOPPED
    )
    schedule = on.resolve_schedule_def("raw_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "* * * * *"


def test_observe_path_records_missing_for_a_removed_file(make_harness: Any) -> None:
    h = make_harness(asset_mode="observe")
    h.tick()
    (h.root / "link_templates.csv").unlink()
    (request,) = h.tick().run_requests
    assert [k.to_user_string() for k in request.asset_selection] == ["raw_link_templates"]
    result = h.execute(request)
    assert result.success
    (observation,) = result.asset_observations_for_node("raw_sources")
    assert observation.data_version == "missing"
    record = h.instance.get_latest_data_version_record(dg.AssetKey("raw_link_templates"))
    assert record is not None


def test_full_hash_check_in_mtime_mode(make_harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_SCAN_HASH_MODE", "mtime_size")
    h = make_harness()
    h.tick()
    recorded = h.tick("raw_full_hash_check")  # the first check only records content hashes
    assert recorded.run_requests == [] and recorded.skip_message == "no changes since last"
    assert h.repo.log("last")[0].reason.startswith("full-hash check: recorded content hashes")
    path = h.root / "evaluation_templates.csv"
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b"Coherence", b"COHERENCE"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert h.tick().run_requests == []  # invisible to size + mtime
    (request,) = h.tick("raw_full_hash_check").run_requests
    assert "raw_evaluation_templates" in {k.to_user_string() for k in request.asset_selection}


def test_a_held_lock_is_a_skip_to_retry(make_harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_LOCK_TIMEOUT_SEC", "0")
    h = make_harness()
    h.tick()
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    lock = h.store / "refs" / "pending.lock"
    lock.write_text("1 host\n")
    data = h.tick()
    assert data.run_requests == []
    assert "retrying next tick" in (data.skip_message or "")
    assert "pending.lock exists" in (data.skip_message or "")
    assert h.repo.find_ref("pending") is None
    lock.unlink()
    assert len(h.tick().run_requests) == 1


def test_a_missing_root_fails_the_tick_with_a_clear_message(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAW_DATA_DIR", str(tmp_path / "nope"))
    h = make_harness()
    with pytest.raises(dg.DagsterError) as info:
        h.tick()
    cause = info.value.__cause__
    assert cause is not None and "does not exist" in str(cause) and "RAW_DATA_DIR" in str(cause)
