"""The Dagster glue with the raw root and the state store on a bucket (a real S3 API on
127.0.0.1), through Dagster's own harness: an edit becomes exactly one run, a failure is
retried, success promotes ``last``. Two "pods" (separate definitions and resources, as a code
server and a run worker would have) share the one store."""

from collections.abc import Iterator

import dagster as dg
import pytest

from dagster_glue import ManifestResource, change_detection
from manifest import Repository, load_config
from manifest.errors import ConfigError
from tests.s3server import S3Server
from tests.test_bucket import upload

from .harness import Project, sqlite_instance

RAW = {
    "customers.csv": b"id,name\n1,Ada\n2,Grace\n",
    "prices/a.csv": b"sku,price\nx,1\n",
    "prices/b.csv": b"sku,price\ny,2\n",
    "readme.md": b"not watched\n",
}


def build(raw: str, state: str) -> dg.Definitions:
    @dg.asset(group_name="raw", metadata={"source_path": "customers.csv"})
    def customers(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.MaterializeResult:
        text = raw_manifest.read_text("customers.csv")
        if "FAIL" in text:
            raise RuntimeError("customers.csv has a FAIL row")
        meta = raw_manifest.source_metadata(context)
        return dg.MaterializeResult(metadata={**meta, "rows": len(text.splitlines()) - 1})

    @dg.asset(deps=[customers])
    def customer_report(raw_manifest: ManifestResource) -> int:
        return len(raw_manifest.read_text("customers.csv").splitlines()) - 1

    @dg.asset(group_name="raw", metadata={"source_path": "prices/*.csv"})
    def prices(
        context: dg.AssetExecutionContext, raw_manifest: ManifestResource
    ) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))

    @dg.asset(deps=[prices])
    def price_index(raw_manifest: ManifestResource) -> int:
        return len(raw_manifest.list_files("prices"))

    return dg.Definitions.merge(
        dg.Definitions(assets=[customers, customer_report, prices, price_index]),
        change_detection(root=raw, state_dir=state, name="raw", cooldown_sec=0, max_attempts=3),
    )


@pytest.fixture
def bucket_project(s3: S3Server) -> Iterator[tuple[Project, str, str]]:
    raw = f"s3://{s3.make_bucket('raw')}/landing"
    state = f"s3://{s3.make_bucket('state')}/dagster/raw"
    upload(raw, RAW)
    with sqlite_instance() as instance:
        yield Project(build(raw, state), instance), raw, state


def keys(request: dg.RunRequest) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection or []}


def test_an_edit_in_the_bucket_is_exactly_one_run_failures_retry_success_promotes(
    bucket_project: tuple[Project, str, str],
) -> None:
    project, raw, state = bucket_project
    store = Repository(load_config(root=raw, store=state, env={}))
    assert "baseline" in (project.tick("raw_schedule").skip_message or "")
    project.warm()
    assert project.tick("raw_schedule").skip_message == "no changes since last"

    # one edited key: one run, that asset and its downstream only
    upload(raw, {"customers.csv": b"id,name\n1,Ada\n2,Grace\n3,Linus\n"})
    (request,) = project.tick("raw_schedule").run_requests
    assert keys(request) == {"customers", "customer_report"}
    # in flight: a tick asks again only under the same run key, which Dagster runs once
    assert [r.run_key for r in project.tick("raw_schedule").run_requests] == [request.run_key]
    result = project.execute(request)
    assert result.success
    (mat,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("customers")
    ]
    assert mat.metadata["source_file"].value == f"{raw}/customers.csv"
    assert mat.metadata["change"].value == "modified"
    assert mat.metadata["rows"].value == 3
    assert project.tick("raw_schedule").run_requests == []
    assert store.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    assert store.log("last")[0].runs == (result.run_id,)

    # a failing run keeps last; the next tick retries; the fix is picked up and promoted
    before = store.find_ref("last")
    upload(raw, {"customers.csv": b"id,name\nFAIL\n"})
    (failing,) = project.tick("raw_schedule").run_requests
    assert not project.execute(failing).success
    assert store.find_ref("last") == before
    (retry,) = project.tick("raw_schedule").run_requests
    assert retry.tags[".dagster/raw_fingerprint"] == failing.tags[".dagster/raw_fingerprint"]
    assert retry.tags["raw_attempt"] == "2"
    upload(raw, {"customers.csv": b"id,name\n1,Ada\n"})
    assert project.execute(retry).success  # the asset reads the fixed file
    project.tick("raw_schedule")
    assert store.find_ref("last") == failing.tags[".dagster/raw_fingerprint"]
    (fixed,) = project.tick("raw_schedule").run_requests  # the fix itself is a new change
    assert keys(fixed) == {"customers", "customer_report"}
    assert project.execute(fixed).success
    project.tick("raw_schedule")
    assert store.find_ref("pending") is None

    # a glob over keys: one run for two changed price files; an unwatched key: no run
    upload(raw, {"prices/a.csv": b"sku,price\nx,3\n", "prices/c.csv": b"sku,price\nz,9\n"})
    (request,) = project.tick("raw_schedule").run_requests
    assert keys(request) == {"prices", "price_index"}
    assert project.execute(request).output_for_node("price_index") == 3
    project.tick("raw_schedule")
    upload(raw, {"readme.md": b"still not watched\n"})
    data = project.tick("raw_schedule")
    assert data.run_requests == [] and "readme.md" in (data.skip_message or "")
    assert store.fsck().ok


def test_two_pods_share_one_bucket_store(bucket_project: tuple[Project, str, str]) -> None:
    """The schedule in one process and the promotion in another: each builds its own
    definitions from the same URLs; the store on the bucket is the one truth."""
    scheduler, raw, state = bucket_project
    assert "baseline" in (scheduler.tick("raw_schedule").skip_message or "")
    worker = Project(build(raw, state), scheduler.instance)
    upload(raw, {"prices/b.csv": b"sku,price\ny,5\n"})
    (request,) = scheduler.tick("raw_schedule").run_requests
    # in flight: the other pod asks for nothing new (at most the same run key, which
    # Dagster runs once)
    assert {r.run_key for r in worker.tick("raw_schedule").run_requests} <= {request.run_key}
    assert worker.execute(request).success
    assert scheduler.tick("raw_schedule").run_requests == []
    store = Repository(load_config(root=raw, store=state, env={}))
    assert store.find_ref("last") == request.tags[".dagster/raw_fingerprint"]


def test_bucket_root_has_no_local_path() -> None:
    res = ManifestResource(root="s3://bkt/raw", state_dir="s3://bkt/state")
    assert res.location("a/b.csv") == "s3://bkt/raw/a/b.csv"
    with pytest.raises(ConfigError, match="read_bytes"):
        res.root_path()


def test_component_yaml_on_buckets(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' YAML Component, unchanged, with its env pointing at bucket URLs."""
    import sys
    import time

    from dagster.components.testing import create_defs_folder_sandbox

    from .test_adopt import doc_block

    raw = f"s3://{s3.make_bucket('raw')}/in"
    state = f"s3://{s3.make_bucket('state')}/store"
    upload(raw, {"customers.csv": b"id\n1\n"})
    monkeypatch.setenv("RAW_ROOT", raw)
    monkeypatch.setenv("RAW_STORE", state)
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "change_detection"
        folder.mkdir()
        (folder / "defs.yaml").write_text(doc_block("yaml", "## Adopt it in YAML"))
        (sandbox.defs_folder_path / "assets.py").write_text(
            "import dagster as dg\n"
            "from dagster_glue import ManifestResource\n\n"
            "@dg.asset(group_name='raw', metadata={'source_path': 'customers.csv'})\n"
            "def customers(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):\n"
            "    rows = raw_manifest.read_text('customers.csv').splitlines()\n"
            "    meta = raw_manifest.source_metadata(context)\n"
            "    return dg.MaterializeResult(metadata={**meta, 'rows': len(rows) - 1})\n"
        )
        with sandbox.build_all_defs() as defs, sqlite_instance() as instance:
            project = Project(defs, instance)
            time.sleep(4.2)  # the default 3 s cooldown, from the end of the LastModified second
            assert "baseline" in (project.tick().skip_message or "")
            upload(raw, {"customers.csv": b"id\n1\n2\n"})
            assert project.tick().run_requests == []  # still settling
            time.sleep(4.2)
            (request,) = project.tick().run_requests
            assert keys(request) == {"customers"}
            assert project.execute(request).success
            project.tick()
            repo = Repository(load_config(root=raw, store=state, env={}))
            assert repo.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    sys.modules.pop("docs_example", None)
