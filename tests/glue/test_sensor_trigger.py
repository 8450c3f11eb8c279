"""``trigger="sensor"`` (issue 24.4): ``{name}_sensor`` evaluates the same reconcile, request,
tag and promotion logic as the schedule, every ``minimum_interval_seconds``."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest

from .harness import edit

NEW_EVAL = "clarity,Clarity,evaluation_templates/coherence.txt,true\n"


def _evaluate(h: Any) -> dg.SensorExecutionData:
    sensor = h.repository_def.get_sensor_def("raw_sensor")
    context = dg.build_sensor_context(
        instance=h.instance, resources=h.defs.resources, repository_def=h.repository_def
    )
    return sensor.evaluate_tick(context)


def test_the_sensor_replaces_the_schedule_and_requests_one_run_per_change(
    make_harness: Any,
) -> None:
    h = make_harness(trigger="sensor", minimum_interval_seconds=5)
    assert h.repository_def.get_sensor_def("raw_sensor").minimum_interval_seconds == 5
    assert not h.repository_def.has_schedule_def("raw_schedule")
    assert h.repository_def.has_schedule_def("raw_full_hash_check")  # the nightly net stays
    first = _evaluate(h)
    assert first.run_requests == [] and "baseline" in (first.skip_message or "")
    assert _evaluate(h).skip_message == "no changes since last"
    edit(h.root / "evaluation_templates.csv", NEW_EVAL)
    (request,) = _evaluate(h).run_requests
    assert request.tags["trigger"] == "raw_sensor"
    assert request.tags["raw_paths"] == "evaluation_templates.csv"
    # not launched yet (in flight): the sensor asks again with the same run key, which the
    # daemon launches once (run keys are unique per sensor), never a second run
    (again,) = _evaluate(h).run_requests
    assert again.run_key == request.run_key
    result = h.execute(request)
    assert result.success
    h.run_promotion_sensor(result)
    assert h.repo.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    assert _evaluate(h).skip_message == "no changes since last"


def test_the_schedule_stays_the_default(make_harness: Any) -> None:
    h = make_harness()
    assert h.repository_def.has_schedule_def("raw_schedule")
    assert not h.repository_def.has_sensor_def("raw_sensor")


def test_a_bad_trigger_is_refused_with_its_choices(make_harness: Any) -> None:
    from manifest.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule or sensor"):
        make_harness(trigger="cron")
