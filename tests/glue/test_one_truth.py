"""Issue 21's adopter story, in process (the real daemon runs it in test_daemon_adopter.py):
a project built from docs/dagster.md with an exact file, a glob, per-file partitions and a
fan-in, ignored and excluded files. The CLI sees what the pipeline sees; no batch that
succeeded is requested again; nothing waits for what it does not read; a give-up fails the
tick naming only what failed; a restore is reprocessed and can be requeued by hand."""

from __future__ import annotations

import datetime
import json
import os
import runpy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from dagster_glue import change_detection
from manifest import Repository, load_config
from manifest.cli import app

from .harness import Project, age_tree, edit, sqlite_instance

PROJECT = Path(__file__).parent / "projects" / "adopter.py"
FILES = {
    "customers.csv": "id,name\n1,Ada\n2,Grace\n",
    "prices/a.csv": "sku,price\nx,1\n",
    "prices/b.csv": "sku,price\ny,2\n",
    "notes/jan.txt": "cold and dark\n",
    "notes/feb.txt": "colder\n",
    "readme.md": "nothing watches this\n",
    "scratch.tmp": "excluded by the factory\n",
}


@pytest.fixture
def adopter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Project, Path]]:
    root = tmp_path / "raw"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    age_tree(root)
    home = tmp_path / "dagster_home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith("RAW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ADOPTER_ROOT", str(root))
    defs = runpy.run_path(str(PROJECT))["defs"]
    with sqlite_instance() as instance:
        yield Project(defs, instance), root


def cli(root: Path, *args: str) -> tuple[int, str]:
    """`manifest` as the adopter runs it: from the project, only DAGSTER_HOME set."""
    result = CliRunner().invoke(app, ["-C", str(root), "--no-pager", *args], env={"NO_COLOR": "1"})
    return result.exit_code, result.output


def store() -> Repository:
    return Repository(load_config(env={"DAGSTER_HOME": os.environ["DAGSTER_HOME"]}))


def by_partition(requests: list[dg.RunRequest]) -> dict[str | None, dg.RunRequest]:
    return {r.partition_key: r for r in requests}


def test_the_adopter_story(adopter: tuple[Project, Path]) -> None:
    project, root = adopter
    executed: Counter[tuple[str | None, str]] = Counter()  # (partition, raw_paths) -> runs

    def run(request: dg.RunRequest, ok: bool = True) -> dg.ExecuteInProcessResult:
        result = project.execute(request)
        assert result.success is ok, request
        executed[(request.partition_key, request.tags["raw_paths"])] += 1
        return result

    assert "baseline" in (project.tick().skip_message or "")
    project.warm()

    # 1, 2: the CLI finds the factory's store with only DAGSTER_HOME set, with its root and
    # its exclude: the .tmp file is not "added", and status agrees that nothing is pending.
    code, out = cli(root, "status", "--json", "--exit-code")
    assert code == 0, out
    data = json.loads(out)
    assert data["store"] == os.environ["DAGSTER_HOME"] + "/state/raw"
    assert data["root"] == str(root) and data["added"] == []
    edit(root / "other.tmp", "still excluded\n", append=False)
    assert cli(root, "status", "--exit-code")[0] == 0

    # 4, 5: a partition change and an unpartitioned change: both requested at once, each
    # tagged with its own file only; the fan-in waits for the partition run alone.
    edit(root / "notes" / "jan.txt", "and windy\n")
    edit(root / "customers.csv", "3,Linus\n")
    _, out = cli(root, "status", "--json")  # what the next tick processes
    assert json.loads(out)["modified"] == ["customers.csv", "notes/jan.txt"]
    first = by_partition(project.tick().run_requests)
    assert set(first) == {"notes/jan.txt", None}
    assert first["notes/jan.txt"].tags["raw_paths"] == "notes/jan.txt"
    assert first[None].tags["raw_paths"] == "customers.csv"
    assert {k.to_user_string() for k in first[None].asset_selection} == {
        "customers",
        "customer_report",
        "customer_names",
    }
    run(first["notes/jan.txt"])
    run(first[None])

    # 3: an unrelated edit supersedes pending before the fan-in was requested: the partition
    # and customers ran for this content, so neither is requested again; only the fan-in and
    # the new change are.
    edit(root / "prices" / "b.csv", "z,9\n")
    second = project.tick().run_requests
    assert sorted(r.tags["raw_paths"] for r in second) == ["notes/jan.txt", "prices/b.csv"]
    assert all(r.partition_key is None for r in second)
    fan_in = next(r for r in second if r.tags["raw_paths"] == "notes/jan.txt")
    assert {k.to_user_string() for k in fan_in.asset_selection} == {"notes_digest"}
    glob = run(next(r for r in second if r is not fan_in))
    run(fan_in)
    # 8: the glob asset's metadata names each changed file, its change and fingerprints
    mat = next(
        e.materialization
        for e in glob.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "prices"
    )
    rows = mat.metadata["changed_files"].value.records  # type: ignore[attr-defined]
    assert [(r.data["path"], r.data["change"]) for r in rows] == [("prices/b.csv", "modified")]
    assert rows[0].data["fingerprint_old"] != rows[0].data["fingerprint_new"]
    assert mat.metadata["source_file"].value == f"{root}/prices/*.csv"
    assert project.tick().run_requests == []  # promoted
    assert store().find_ref("pending") is None
    assert executed[("notes/jan.txt", "notes/jan.txt")] == 1  # never re-run
    assert executed[(None, "customers.csv")] == 1

    # 5, 6: one partition fails twice: only it is retried, then the tick fails naming it
    # (not the partition that succeeded), with the runs in the order they ran.
    good = (root / "notes" / "feb.txt").read_text()
    edit(root / "notes" / "feb.txt", "FAIL\n")
    edit(root / "notes" / "jan.txt", "snow\n")
    third = by_partition(project.tick().run_requests)
    run(third["notes/jan.txt"])
    failed = [run(third["notes/feb.txt"], ok=False).run_id]
    (retry,) = project.tick().run_requests
    assert retry.partition_key == "notes/feb.txt" and retry.tags["raw_paths"] == "notes/feb.txt"
    assert retry.tags["raw_attempt"] == "2"
    failed.append(run(retry, ok=False).run_id)
    with pytest.raises(dg.DagsterUserCodeExecutionError) as info:
        project.tick()
    message = str(info.value.__cause__)
    assert message.startswith("gave up processing notes/feb.txt: ")
    assert "jan.txt" not in message and f"runs {failed[0]}, {failed[1]}, oldest first" in message
    _, out = cli(root, "status")
    assert "processing FAILED, retries stopped" in out

    # 7: the file is restored: feb is reprocessed (requeued), jan's partition is not run again
    # (only the fan-in it feeds), and the log says what the promotion processed.
    edit(root / "notes" / "feb.txt", good, append=False)
    fourth = project.tick().run_requests
    assert [(r.partition_key, r.tags["raw_paths"]) for r in fourth] == [
        ("notes/feb.txt", "notes/feb.txt")
    ]
    run(fourth[0])
    (fan_in,) = project.tick().run_requests
    assert fan_in.tags["raw_paths"] == "notes/feb.txt\nnotes/jan.txt"
    run(fan_in)
    assert not project.tick().run_requests  # it promotes; the fan-in is not asked for again
    assert executed[("notes/jan.txt", "notes/jan.txt")] == 2  # once per content: cold, snow
    assert executed[("notes/feb.txt", "notes/feb.txt")] == 3  # two failures, one success
    _, out = cli(root, "log", "-n", "1")
    assert "notes/feb.txt (requeued)" in out and "notes/jan.txt (modified)" in out
    assert "1 requeued" in out
    # rolling back by hand: last@{1} has feb's content too, so requeue what last processed
    code, out = cli(root, "requeue", "--of", "last", "-m", "reprocess the notes")
    assert code == 0, out
    assert "notes/feb.txt" in out and "notes/jan.txt" in out
    again = project.tick().run_requests
    assert sorted(r.partition_key or "" for r in again) == ["notes/feb.txt", "notes/jan.txt"]


def test_a_preview_says_previewed_and_when(adopter: tuple[Project, Path]) -> None:
    """10: "Preview tick result" in the UI evaluates at a past time the dialog picks and
    launches nothing: pending says "previewed" and records when it happened; the next real
    tick requests the runs at once."""
    project, root = adopter
    project.tick()
    edit(root / "customers.csv", "3,Linus\n")
    past = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    schedule = project.repository_def.get_schedule_def("raw_schedule")
    with dg.ScheduleEvaluationContext(  # what the webserver's dry run builds
        instance_ref=project.instance.get_ref(),
        scheduled_execution_time=past,
        repository_name=project.repository_def.name,
        schedule_name="raw_schedule",
        resources=project.defs.resources,
        repository_def=project.repository_def,
    ) as context:
        preview = schedule.evaluate_tick(context)
    assert len(preview.run_requests or []) == 1
    reason = store().log("pending")[0].reason
    assert reason.startswith("previewed by raw_schedule at 20") and "2026-01-01" not in reason
    _, out = cli(root, "status")
    assert "previewed: no run launched yet" in out and "handed to a run" not in out
    (request,) = project.tick().run_requests  # the real tick asks at once
    assert request.run_key == preview.run_requests[0].run_key  # type: ignore[index]


def _minimal(root: Path, store: Path, instance: dg.DagsterInstance, **kw: object) -> Project:
    @dg.asset(metadata={"source_path": "customers.csv"})
    def customers() -> None:
        return None

    defs = dg.Definitions.merge(
        dg.Definitions(assets=[customers]),
        change_detection(root=str(root), state_dir=str(store), cooldown_sec=0, **kw),  # type: ignore[arg-type]
    )
    return Project(defs, instance)


def test_filters_recorded_in_the_store_are_the_glue_s_too(tmp_path: Path) -> None:
    with sqlite_instance() as instance:
        _filters_recorded_in_the_store(tmp_path, instance)


def _filters_recorded_in_the_store(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """2: an exclude only in the store's config.toml (set with the CLI) is applied by the
    glue, so the CLI never reports a removal that did not happen; an exclude in the factory
    that differs from the store's fails the tick naming both."""
    root, store_dir = tmp_path / "raw", tmp_path / "store"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    age_tree(root)
    code = CliRunner().invoke(
        app, ["--store", str(store_dir), "init", "--root", str(root), "--exclude", "**/*.tmp"]
    )
    assert code.exit_code == 0, code.output
    project = _minimal(root, store_dir, instance)
    assert "baseline" in (project.tick().skip_message or "")
    repo = Repository(load_config(store=store_dir, env={}))
    last = repo.find_ref("last")
    assert last is not None
    assert "scratch.tmp" not in {p for p, _ in repo.iter_files(last)}
    assert not repo.status().changes  # the CLI's view: nothing removed, nothing added
    other = _minimal(root, store_dir, instance, exclude=["**/*.bak"])
    with pytest.raises(dg.DagsterUserCodeExecutionError) as info:
        other.tick()
    message = str(info.value.__cause__)
    assert message.startswith("exclude: change_detection(name='raw') exclude gives ['**/*.bak']")
    assert "the store records ['**/*.tmp']" in message
