"""``python -m dagster_glue.demo``: the whole story on a copy of the bundled sample data.

Baseline tick; full materialization; one edited CSV; the next tick requests exactly one run
for that file's asset and its downstream; the run executes in process; `last` is promoted;
the next tick skips. Works in a temporary folder, so ``data/1_raw`` is left untouched.
"""

import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg


def main() -> int:
    sample = Path(os.environ.get("RAW_DATA_DIR", "data/1_raw"))
    if not sample.is_dir():
        print(f"demo: {sample} is not a folder; run from the repository root", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="manifest-demo-") as tmp:
        root = Path(tmp) / "1_raw"
        shutil.copytree(sample, root)
        old = time.time_ns() - 3600 * 10**9
        for path in root.rglob("*"):
            os.utime(path, ns=(old, old))
        os.environ.update(
            RAW_DATA_DIR=str(root),
            RAW_STATE_DIR=str(Path(tmp) / "state"),
            RAW_SCAN_COOLDOWN_SEC="0",
        )
        from dagster_glue.definitions import build
        from dagster_glue.settings import load_glue_settings
        from manifest import Repository, load_config

        defs, glue = build(load_glue_settings())
        schedule = defs.resolve_schedule_def("raw_schedule")
        job = defs.resolve_job_def(glue.job_name)
        repo = Repository(load_config())
        (Path(tmp) / "dagster_home").mkdir()
        with dg.DagsterInstance.local_temp(tempdir=str(Path(tmp) / "dagster_home")) as instance:

            def tick(label: str) -> list[dg.RunRequest]:
                data = schedule.evaluate_tick(
                    dg.build_schedule_context(
                        instance=instance,
                        scheduled_execution_time=datetime.datetime.now(datetime.UTC),
                    )
                )
                requests = list(data.run_requests or [])
                print(
                    f"[tick] {label}: " + (data.skip_message or f"{len(requests)} run request(s)")
                )
                for r in requests:
                    keys = ", ".join(k.to_user_string() for k in r.asset_selection or [])
                    print(f"       run_key={r.run_key} batch={r.tags['raw_batch']} assets: {keys}")
                return requests

            tick("first tick")
            result = job.execute_in_process(instance=instance)
            print(f"[run]  full materialization: success={result.success}")
            csv_path = root / "evaluation_templates.csv"
            with open(csv_path, "a", encoding="utf-8") as fh:
                fh.write("clarity,Clarity,evaluation_templates/coherence.txt,true\n")
            os.utime(csv_path, ns=(old + 10**9, old + 10**9))
            print("[edit] appended a row to evaluation_templates.csv")
            requests = tick("after the edit")
            for request in requests:
                run = job.execute_in_process(
                    instance=instance, asset_selection=request.asset_selection, tags=request.tags
                )
                done = sorted(
                    e.asset_key.to_user_string()
                    for e in run.get_asset_materialization_events()
                    if e.asset_key is not None
                )
                print(
                    f"[run]  {run.run_id[:8]} success={run.success} materialized: {', '.join(done)}"
                )
            tick("next tick")
            tick("and the one after")
            log = repo.log("last")
            print(f"[last] {log[0].id[:12] if log[0].id else '-'}: {log[0].reason}")
            ok = len(requests) == 1 and repo.find_ref("pending") is None
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
