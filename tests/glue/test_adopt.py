"""A new project written only from docs/dagster.md: the Python example (an exact path, a
glob, per-file partitions, downstream of each, two roots) and the YAML Component, each run
through Dagster's own harness. The examples are read from the doc, so they cannot rot."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from manifest import Repository, load_config
from manifest.text import escape_path

from .harness import Project, age_tree, edit, sqlite_instance

DOC = Path(__file__).parents[2] / "docs" / "dagster.md"


def doc_block(language: str, after: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match is not None, f"no {language} block after {after!r} in {DOC}"
    return match.group(1)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    age_tree(root)


RAW = {
    "customers.csv": "id,name\n1,Ada\n2,Grace\n",
    "prices/a.csv": "sku,price\nx,1\n",
    "prices/b.csv": "sku,price\ny,2\n",
    "notes/2026/jan.txt": "cold and quiet\n",
    "notes/2026/feb.txt": "snow again\n",
    "readme.md": "not watched\n",
}
LANDING = {"events.jsonl": '{"e": 1}\n'}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    raw, landing = tmp_path / "raw", tmp_path / "landing"
    write_tree(raw, RAW)
    write_tree(landing, LANDING)
    monkeypatch.setenv("RAW_ROOT", str(raw))
    monkeypatch.setenv("RAW_STORE", str(tmp_path / "raw_store"))
    monkeypatch.setenv("LANDING_ROOT", str(landing))
    monkeypatch.setenv("LANDING_STORE", str(tmp_path / "landing_store"))
    module_path = tmp_path / "docs_example.py"
    module_path.write_text(doc_block("python", "## Adopt it in Python"))
    spec = importlib.util.spec_from_file_location("docs_example", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with sqlite_instance() as instance:
        yield Project(module.defs, instance)


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dg.AssetMaterialization:
    (mat,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(key)
    ]
    return mat


def keys(request: dg.RunRequest) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection or []}


def store(name: str) -> Repository:
    root = os.environ[f"{name.upper()}_ROOT"]
    return Repository(load_config(root=root, store=os.environ[f"{name.upper()}_STORE"], env={}))


def test_docs_project_gets_exactly_the_described_work(project: Project) -> None:
    raw = Path(os.environ["RAW_ROOT"])
    landing = Path(os.environ["LANDING_ROOT"])
    defs = project.defs
    assert {s.name for s in defs.schedules} == {
        "raw_schedule",
        "raw_full_hash_check",
        "landing_schedule",
        "landing_full_hash_check",
    }
    assert set(defs.resources) == {"raw_manifest", "landing_manifest"}
    # the schedule's description names the real root, not data/1_raw
    assert str(raw) in (project.repository_def.get_schedule_def("raw_schedule").description or "")

    # Baseline: both roots record their tree; every note file becomes a partition.
    assert "baseline" in (project.tick("raw_schedule").skip_message or "")
    assert "baseline" in (project.tick("landing_schedule").skip_message or "")
    assert sorted(project.instance.get_dynamic_partitions("note_files")) == [
        "notes/2026/feb.txt",
        "notes/2026/jan.txt",
    ]
    project.warm("raw_reload_job")
    project.warm("landing_reload_job")

    # An exact path: that asset and its downstream, nothing else; the other root skips.
    edit(raw / "customers.csv", "3,Linus\n")
    (request,) = project.tick("raw_schedule").run_requests
    assert keys(request) == {"customers", "customer_report"}
    assert request.partition_key is None and request.tags["raw_paths"] == "customers.csv"
    result = project.execute(request)
    assert result.success
    mat = materialization(result, "customers")
    assert mat.metadata["source_path"].value == "customers.csv"
    assert mat.metadata["source_file"].value == str(raw / "customers.csv")
    assert mat.metadata["change"].value == "modified"
    assert mat.metadata["fingerprint_old"].value != mat.metadata["fingerprint_new"].value
    assert mat.metadata["rows"].value == 3
    assert project.tick("landing_schedule").skip_message == "no changes since last"
    assert project.tick("raw_schedule").run_requests == []  # promoted
    assert store("raw").log("last")[0].runs == (result.run_id,)

    # A glob: the one asset, once, for the two files that changed.
    edit(raw / "prices" / "a.csv", "z,3\n")
    edit(raw / "prices" / "c.csv", "sku,price\nw,4\n", append=False)
    (request,) = project.tick("raw_schedule").run_requests
    assert keys(request) == {"prices", "price_index"}
    result = project.execute(request)
    assert result.success
    mat = materialization(result, "prices")
    rows = mat.metadata["changed_files"].value.records  # type: ignore[attr-defined]
    assert [(r.data["path"], r.data["change"]) for r in rows] == [
        ("prices/a.csv", "modified"),
        ("prices/c.csv", "added"),
    ]
    assert rows[1].data["fingerprint_old"] == "missing" != rows[1].data["fingerprint_new"]
    assert mat.metadata["source_file"].value == f"{raw}/prices/*.csv"
    assert result.output_for_node("price_index") == 3
    project.tick("raw_schedule")

    # Per-file partitions: a changed file is one partition run, then the fan-in once.
    edit(raw / "notes" / "2026" / "jan.txt", "and windy\n")
    edit(raw / "notes" / "2026" / "mar.txt", "thaw at last\n", append=False)
    partition_runs = project.tick("raw_schedule").run_requests
    assert sorted(r.partition_key or "" for r in partition_runs) == [
        "notes/2026/jan.txt",
        "notes/2026/mar.txt",
    ]
    assert all(keys(r) == {"notes", "note_words"} for r in partition_runs)
    assert "notes/2026/mar.txt" in project.instance.get_dynamic_partitions("note_files")
    first = project.execute(partition_runs[0])
    assert first.success
    # one partition still has no run: the fan-in is not requested yet
    waiting = project.tick("raw_schedule").run_requests
    assert [r.partition_key for r in waiting] == [partition_runs[1].partition_key]
    second = project.execute(waiting[0])
    assert second.success
    assert second.output_for_node("note_words") in (3, 4)
    (fan_in,) = project.tick("raw_schedule").run_requests
    assert keys(fan_in) == {"notes_digest"} and fan_in.partition_key is None
    assert store("raw").find_ref("pending") == fan_in.tags[".dagster/raw_fingerprint"]
    assert project.execute(fan_in).output_for_node("notes_digest") == 3
    assert project.tick("raw_schedule").run_requests == []
    assert store("raw").find_ref("pending") is None

    # A removed file: its partition is deleted; only the fan-in runs.
    (raw / "notes" / "2026" / "feb.txt").unlink()
    (fan_in,) = project.tick("raw_schedule").run_requests
    assert keys(fan_in) == {"notes_digest"}
    assert "notes/2026/feb.txt" not in project.instance.get_dynamic_partitions("note_files")
    assert project.execute(fan_in).output_for_node("notes_digest") == 2
    project.tick("raw_schedule")

    # A file nothing watches: last advances without a run, and the message names it.
    edit(raw / "readme.md", "still not watched\n")
    data = project.tick("raw_schedule")
    assert data.run_requests == [] and "readme.md" in (data.skip_message or "")
    assert store("raw").find_ref("pending") is None

    # The second root: its own store, tags and run keys.
    edit(landing / "events.jsonl", '{"e": 2}\n')
    assert project.tick("raw_schedule").skip_message == "no changes since last"
    (request,) = project.tick("landing_schedule").run_requests
    assert keys(request) == {"events", "event_count"}
    assert request.job_name == "landing_reload_job"
    assert request.run_key.startswith("landing-") and ".dagster/landing_fingerprint" in request.tags
    assert ".dagster/raw_fingerprint" not in request.tags
    assert project.execute(request).output_for_node("event_count") == 2
    project.tick("landing_schedule")
    assert store("landing").find_ref("last") == request.tags[".dagster/landing_fingerprint"]


def test_hostile_file_names_reach_partitions_tags_and_runs(project: Project) -> None:
    raw = Path(os.environ["RAW_ROOT"])
    project.tick("raw_schedule")
    project.warm()
    name = os.fsdecode(b"notes/bad\nname \xff...x.txt")
    path = raw / name
    path.write_bytes(b"one two three\n")
    age_tree(raw)
    (request,) = project.tick("raw_schedule").run_requests
    assert request.partition_key == escape_path(name) == "notes/bad\\nname \\xff..\\x2ex.txt"
    assert request.tags["raw_paths"] == escape_path(name)
    result = project.execute(request)
    assert result.success
    assert result.output_for_node("note_words") == 3


def test_component_from_yaml_watches_its_root(tmp_path: Path, monkeypatch: Any) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, {"customers.csv": "id\n1\n"})
    monkeypatch.setenv("RAW_ROOT", str(raw))
    monkeypatch.setenv("RAW_STORE", str(tmp_path / "store"))
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "change_detection"
        folder.mkdir()
        (folder / "defs.yaml").write_text(doc_block("yaml", "## Adopt it in YAML"))
        (sandbox.defs_folder_path / "assets.py").write_text(
            "import dagster as dg\n"
            "from dagster_glue import ManifestResource\n\n"
            "@dg.asset(group_name='raw', metadata={'source_path': 'customers.csv'})\n"
            "def customers(context: dg.AssetExecutionContext, raw_manifest: ManifestResource):\n"
            "    return dg.MaterializeResult(metadata=raw_manifest.source_metadata(context))\n\n"
            "@dg.asset(deps=[customers])\n"
            "def report() -> int:\n"
            "    return 1\n"
        )
        with sandbox.build_all_defs() as defs, sqlite_instance() as instance:
            assert (
                defs.resolve_schedule_def("raw_schedule").default_status
                == dg.DefaultScheduleStatus.RUNNING
            )
            project = Project(defs, instance)
            assert "baseline" in (project.tick().skip_message or "")
            edit(raw / "customers.csv", "2\n")
            (request,) = project.tick().run_requests
            assert keys(request) == {"customers", "report"}
            assert project.execute(request).success
            project.tick()
            repo = Repository(load_config(root=raw, store=tmp_path / "store", env={}))
            assert repo.find_ref("last") == request.tags[".dagster/raw_fingerprint"]
    sys.modules.pop("docs_example", None)
