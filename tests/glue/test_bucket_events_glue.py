"""Issue 24.3 through Dagster's harness: a bucket root whose S3 events reach the schedule
through SQS (moto). One edited key is one run; the tick deletes the messages only once its
pending snapshot is written; quiet ticks make no request to the bucket."""

from pathlib import Path

import dagster as dg
import pytest

from dagster_glue import ManifestResource, change_detection
from manifest import Repository, load_config
from tests.s3server import CountingProxy, S3Server
from tests.test_bucket import upload
from tests.test_bucket_events import waiting

from .harness import Project, sqlite_instance


def test_the_schedule_reads_a_buckets_events_instead_of_listing_it(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    proxy = CountingProxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    bucket = s3.make_bucket("raw")
    raw = f"s3://{bucket}/landing"
    state = str(tmp_path / "state")  # a store on a bucket: tests/test_bucket_events.py
    queue = s3.make_queue(bucket, "landing/").replace(s3.endpoint, proxy.endpoint)
    upload(raw, {"customers.csv": b"id\n1\n", "readme.md": b"x\n"})

    @dg.asset(group_name="raw", metadata={"source_path": "customers.csv"})
    def customers(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))

    defs = dg.Definitions.merge(
        dg.Definitions(assets=[customers]),
        change_detection(root=raw, state_dir=state, cooldown_sec=0, events_queue=queue),
    )
    with sqlite_instance() as instance:
        project = Project(defs, instance)
        assert "baseline" in (project.tick().skip_message or "")
        proxy.take()
        assert project.tick().skip_message == "no changes since last"
        assert "LIST" not in proxy.take(bucket)

        upload(raw, {"customers.csv": b"id\n1\n2\n"})
        proxy.take()
        (request,) = project.tick().run_requests
        counts = proxy.take(bucket)
        assert "LIST" not in counts and counts["HEAD"] == 1, counts
        assert waiting(s3, queue) == (1, 0)  # the event deleted: the pending snapshot holds it
        assert {k.to_user_string() for k in request.asset_selection or []} == {"customers"}
        assert project.execute(request).success
        project.tick()  # promotes
        store = Repository(load_config(root=raw, store=state, env={}))
        assert store.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
        assert store.config.events_queue == queue  # recorded: the CLI reads the events too
        status = store.status()
        assert (status.scan_source, status.changes.paths) == ("journal", ())
    proxy.close()
