"""End to end with the real Dagster harness: baseline, one edit, exactly one selective run,
promotion, skip; and a failed run that is retried until it succeeds."""

from __future__ import annotations

from typing import Any

import dagster as dg

from .glue.harness import edit

DOWNSTREAM_OF_EVALUATION = {"raw_evaluation_templates", "evaluation_tasks"}


def test_materialize_path_one_edit_one_run(make_harness: Any) -> None:
    h = make_harness()
    first = h.tick()
    assert first.run_requests == [] and "baseline" in (first.skip_message or "")
    assert h.tick().skip_message == "no changes since last"

    # Warm the pipeline once so this test sees only the selective part (fresh-instance
    # ancestors are tested below).
    h.warm()

    edit(
        h.root / "evaluation_templates.csv",
        "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
    )
    data = h.tick()
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    pending = h.repo.find_ref("pending")
    assert pending is not None
    assert request.tags[".dagster/raw_fingerprint"] == pending
    assert request.tags["trigger"] == "raw_schedule"
    assert request.tags["raw_batch"] == "1/1"
    assert request.tags["raw_paths"] == "evaluation_templates.csv"
    assert {k.to_user_string() for k in request.asset_selection} == DOWNSTREAM_OF_EVALUATION

    # The same tick evaluated again before its run exists (a daemon retry): no duplicate.
    again = h.tick(when=h.clock)
    assert again.run_requests == []
    assert "asks again on its next tick" in (again.skip_message or "")

    result = h.execute(request)
    assert result.success
    assert h.materialized(result) == DOWNSTREAM_OF_EVALUATION
    evaluation = result.output_for_node("evaluation_tasks")
    assert {t["template_id"] for t in evaluation} == {"coherence", "originality", "clarity"}

    after = h.tick()  # reconciliation promotes (the sensor may also have)
    assert after.run_requests == []
    assert h.repo.find_ref("pending") is None
    assert h.repo.find_ref("last") == pending
    # the log says what the promotion processed
    moved = h.repo.log("last")[0]
    assert moved.reason == (
        f"promoted after run {result.run_id[:8]}: evaluation_templates.csv (modified)"
    )
    assert moved.runs == (result.run_id,)
    assert h.tick().skip_message == "no changes since last"


def test_fresh_instance_adds_never_materialized_ancestors(make_harness: Any) -> None:
    h = make_harness()
    h.tick()
    edit(
        h.root / "evaluation_templates.csv",
        "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
    )
    (request,) = h.tick().run_requests
    selected = {k.to_user_string() for k in request.asset_selection}
    assert selected >= DOWNSTREAM_OF_EVALUATION
    assert "essay_generation_tasks" in selected and "raw_concepts" in selected
    assert "essay_generation_tasks" in request.tags["raw_added_ancestors"].split(",")
    assert h.execute(request).success


def test_failed_run_keeps_last_and_is_retried_until_success(make_harness: Any) -> None:
    h = make_harness()
    base = h.tick() and h.repo.find_ref("last")
    h.warm()
    link_csv = h.root / "link_templates.csv"
    original = link_csv.read_text()
    edit(link_csv, "broken,Broken,generation_templates/links/nope.txt,true\n")
    (request,) = h.tick().run_requests
    failed = h.execute(request)
    assert not failed.success
    assert h.repo.find_ref("last") == base

    (retry,) = h.tick().run_requests  # same pending, same change, a new run_key
    assert retry.tags[".dagster/raw_fingerprint"] == request.tags[".dagster/raw_fingerprint"]
    assert retry.run_key != request.run_key and retry.tags["raw_attempt"] == "2"
    assert retry.asset_selection == request.asset_selection

    # The bad template file appears: the retry succeeds and last is promoted.
    edit(
        h.root / "generation_templates" / "links" / "nope.txt",
        "{concept_a} / {concept_b}\n",
        append=False,
    )
    # (a new file outside the observed CSVs: the pending snapshot is superseded, which
    # is what a newer edit must do; then the next request succeeds)
    data = h.tick()
    assert h.repo.find_ref("pending") != request.tags[".dagster/raw_fingerprint"]
    (fresh,) = data.run_requests
    assert h.execute(fresh).success
    h.tick()
    assert h.repo.find_ref("pending") is None
    assert h.repo.find_ref("last") == fresh.tags[".dagster/raw_fingerprint"]
    link_csv.write_text(original)


def test_observe_path_one_edit_observes_one_file_and_automation_requests_downstream(
    make_harness: Any,
) -> None:
    h = make_harness(asset_mode="observe")
    assert "baseline" in (h.tick().skip_message or "")
    # Baseline recorded a data version per raw file: downstream is not blocked, and once
    # materialized, nothing is requested until a real change.
    for key in ("raw_concepts", "raw_link_templates"):
        record = h.instance.get_latest_data_version_record(dg.AssetKey(key))
        assert record is not None
    derived = [
        k for k in h.defs.resolve_all_asset_keys() if not k.to_user_string().startswith("raw_")
    ]
    assert dg.materialize(
        [a for a in h.defs.resolve_asset_graph().assets_defs if a.is_materializable],
        instance=h.instance,
        selection=derived,
    ).success
    quiet = dg.evaluate_automation_conditions(defs=h.defs, instance=h.instance)
    cursor = quiet.cursor
    quiet = dg.evaluate_automation_conditions(defs=h.defs, instance=h.instance, cursor=cursor)
    assert quiet.total_requested == 0

    edit(
        h.root / "evaluation_templates.csv",
        "clarity,Clarity,evaluation_templates/coherence.txt,true\n",
    )
    (request,) = h.tick().run_requests
    assert request.job_name == "observe_raw_sources"
    assert [k.to_user_string() for k in request.asset_selection] == ["raw_evaluation_templates"]
    result = h.execute(request)
    assert result.success
    observations = result.asset_observations_for_node("raw_sources")
    assert [o.asset_key.to_user_string() for o in observations] == ["raw_evaluation_templates"]
    pending = request.tags[".dagster/raw_fingerprint"]
    entry = h.repo.find_file(pending, "evaluation_templates.csv")
    assert entry is not None
    assert observations[0].data_version == entry.fingerprint

    evaluation = dg.evaluate_automation_conditions(
        defs=h.defs, instance=h.instance, cursor=quiet.cursor
    )
    requested = {
        k.to_user_string()
        for k in h.defs.resolve_all_asset_keys()
        if evaluation.get_num_requested(k)
    }
    assert requested == {"evaluation_tasks"}

    h.tick()
    assert h.repo.find_ref("last") == pending and h.repo.find_ref("pending") is None
    assert h.tick().skip_message == "no changes since last"
