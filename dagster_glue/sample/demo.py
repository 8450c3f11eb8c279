"""``python -m dagster_glue.sample.demo``: the whole story on a copy of the bundled sample data.

Baseline tick; full materialization; one edited CSV; the next tick requests exactly one run
for that file's asset and its downstream; the run executes in process; `last` is promoted;
the next tick skips. Then one edited feedback file: one run for its partition, then the
fan-in digest once. Works in a temporary folder, so ``data/1_raw`` is left untouched.
"""

import datetime
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main() -> int:
    sample = Path(os.environ.get("RAW_DATA_DIR", "data/1_raw"))
    if not sample.is_dir():
        print(f"demo: {sample} is not a folder; run from the repository root", file=sys.stderr)
        return 3
    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices
    logging.disable(logging.INFO)  # the ticks' own log lines; the story is printed below
    with tempfile.TemporaryDirectory(prefix="manifest-demo-") as tmp:
        root = Path(tmp) / "1_raw"
        shutil.copytree(sample, root)
        old = time.time_ns() - 3600 * 10**9
        for path in root.rglob("*"):
            os.utime(path, ns=(old, old))
        from dagster_glue.sample.definitions import build
        from dagster_glue.sample.settings import load_glue_settings
        from manifest import Repository, load_config

        env = {"RAW_DATA_DIR": str(root), "RAW_STATE_DIR": str(Path(tmp) / "state")}
        config = load_config(env={**env, "RAW_SCAN_COOLDOWN_SEC": "0"})
        defs = build(load_glue_settings({}), config)
        repository_def = defs.get_repository_def()
        schedule = repository_def.get_schedule_def("raw_schedule")
        job = repository_def.get_job("raw_reload_job")
        graph = repository_def.asset_graph
        repo = Repository(config)
        (Path(tmp) / "dagster_home").mkdir()
        (Path(tmp) / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        clock = datetime.datetime.now(datetime.UTC)
        with dg.DagsterInstance.local_temp(tempdir=str(Path(tmp) / "dagster_home")) as instance:

            def tick(label: str) -> list[dg.RunRequest]:
                nonlocal clock
                clock += datetime.timedelta(minutes=5)
                with dg.build_schedule_context(
                    instance=instance,
                    scheduled_execution_time=clock,
                    repository_def=repository_def,
                    resources=defs.resources,
                ) as context:
                    data = schedule.evaluate_tick(context)
                requests = list(data.run_requests or [])
                print(
                    f"[tick] {label}: " + (data.skip_message or f"{len(requests)} run request(s)")
                )
                for r in requests:
                    keys = ", ".join(k.to_user_string() for k in r.asset_selection or [])
                    part = f" partition={r.partition_key}" if r.partition_key else ""
                    print(f"       run_key={r.run_key}{part} assets: {keys}")
                return requests

            def run(request: dg.RunRequest) -> dg.ExecuteInProcessResult:
                result = job.execute_in_process(
                    instance=instance,
                    asset_selection=request.asset_selection,
                    tags=request.tags,
                    partition_key=request.partition_key,
                    run_config=QUIET,
                    raise_on_error=False,
                )
                done = sorted(
                    e.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()
                    if e.asset_key is not None
                )
                print(
                    f"[run]  {result.run_id[:8]} success={result.success} "
                    f"materialized: {', '.join(done)}"
                )
                return result

            tick("first tick")
            flat = [k for k in graph.materializable_asset_keys if not graph.get(k).partitions_def]
            parted = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def]
            ok = job.execute_in_process(
                instance=instance, asset_selection=flat, run_config=QUIET
            ).success
            for key in instance.get_dynamic_partitions("raw_feedback_files"):
                ok &= job.execute_in_process(
                    instance=instance, asset_selection=parted, partition_key=key, run_config=QUIET
                ).success
            print(f"[run]  full materialization: success={ok}")

            csv_path = root / "evaluation_templates.csv"
            with open(csv_path, "a", encoding="utf-8") as fh:
                fh.write("clarity,Clarity,evaluation_templates/coherence.txt,true\n")
            os.utime(csv_path, ns=(old + 10**9, old + 10**9))
            print("[edit] appended a row to evaluation_templates.csv")
            requests = tick("after the edit")
            for request in requests:
                ok &= run(request).success
            tick("next tick")
            tick("and the one after")
            log = repo.log("last")
            print(f"[last] {log[0].id[:12] if log[0].id else '-'}: {log[0].reason}")
            ok &= len(requests) == 1 and repo.find_ref("pending") is None

            note = root / "feedback" / "reviewer_c.txt"
            note.write_text("Vignettes are too short; letters should be retired.\n")
            os.utime(note, ns=(old + 2 * 10**9, old + 2 * 10**9))
            print("[edit] rewrote feedback/reviewer_c.txt")
            partition_runs = tick("after the feedback edit")
            for request in partition_runs:
                ok &= run(request).success
            fan_in = tick("once its partition succeeded")
            for request in fan_in:
                ok &= run(request).success
            tick("next tick")
            ok &= len(partition_runs) == 1 and len(fan_in) == 1
            ok &= repo.find_ref("pending") is None
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
