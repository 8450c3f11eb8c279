"""Ref edits that cannot go wrong silently, and history you can walk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import write


@pytest.fixture
def history(cli, raw: Path) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(3):
        write(raw / "link_templates.csv", f"template_id\nt{i}\n")
        ids.append(cli("snapshot", "--ref", "last", "-m", f"s{i}").strip())
    return ids


def test_reset_refuses_a_ref_that_does_not_exist_and_suggests(cli, history: list[str]) -> None:  # type: ignore[no-untyped-def]
    out = cli("reset", "lsat", "last@{1}", code=3)
    assert "no ref named 'lsat'" in out and "did you mean 'last'" in out and "--create" in out
    assert "lsat" not in cli("log", "last")  # nothing was created
    cli("reset", "--create", "keep/before", "last@{1}")
    assert json.loads(cli("log", "keep/before", "--json"))[0]["id"] == history[1]


def test_deleting_last_needs_force_and_says_how_to_undo(cli, history: list[str]) -> None:  # type: ignore[no-untyped-def]
    out = cli("reset", "last", "--delete", code=3)
    assert "needs --force" in out
    out = cli("reset", "last", "--delete", "--force")
    assert f"to undo: manifest reset --create last {history[2]}" in out
    cli("reset", "--create", "last", history[2])
    assert json.loads(cli("log", "--json"))[0]["id"] == history[2]


def test_log_of_a_ref_that_never_existed_is_an_error(cli, history: list[str]) -> None:  # type: ignore[no-untyped-def]
    out = cli("log", "pendng", code=3)
    assert "no ref named 'pendng'" in out and "did you mean 'pending'" in out
    assert "never moved" in cli("log", "pending")  # pending always exists, maybe unmoved


def test_parent_revisions(cli, history: list[str]) -> None:  # type: ignore[no-untyped-def]
    def rev(text: str) -> str:
        return str(json.loads(cli("show", text, "--json"))["id"])

    assert rev("last^") == history[1]
    assert rev("last~2") == history[0] == rev("last^^") == rev("last~1^")
    assert rev(f"{history[2][:8]}~1") == history[1]
    assert "has no parent" in cli("show", "last~3", code=3)
    assert f"parent   {history[1]}" in cli("show", "last")


def test_completion_offers_refs_and_reflog_entries(
    cli, history: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from manifest.cli import complete_refs, complete_revisions

    monkeypatch.setenv("RAW_STATE_DIR", str(tmp_path / "state"))
    assert complete_refs("la") == ["last"]
    assert complete_revisions("last@") == ["last@{0}", "last@{1}", "last@{2}"]


def test_log_shows_a_hand_reset_as_the_move_it_made(cli, history: list[str]) -> None:  # type: ignore[no-untyped-def]
    cli("reset", "last", "last~2", "-m", "reprocess")
    first = cli("log").splitlines()[0]
    assert "reset by hand: reprocess" in first
    assert f"({history[2][:12]} -> {history[0][:12]}: +0 ~1 -0)" in first


def test_snapshot_without_a_ref_warns_about_gc(raw: Path, tmp_path: Path) -> None:
    from manifest.cli import app

    from .conftest import runner

    base = ["--root", str(raw), "--store", str(tmp_path / "s"), "--cooldown", "0"]
    result = runner.invoke(app, [*base, "snapshot"])
    assert result.exit_code == 0
    assert "a later `manifest gc` removes it" in result.output


def test_fsck_says_what_to_do_about_a_corrupt_object(
    cli, history: list[str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "state" / "objects" / history[0][:2] / history[0][2:]
    path.write_bytes(b"garbage")
    out = cli("fsck", code=3)
    assert "manifest reset <ref> <rev>" in out and "run `manifest fsck`" not in out


def test_unset_last_messages_never_suggest_last(raw: Path, tmp_path: Path) -> None:
    from manifest.cli import app

    from .conftest import runner

    base = ["--root", str(raw), "--store", str(tmp_path / "s")]
    assert runner.invoke(app, [*base, "init", "--root", str(raw)]).exit_code == 0
    for args in (["diff", "last"], ["show"], ["reset", "keep", "last", "--create"]):
        out = runner.invoke(app, [*base, *args]).output
        assert "last is unset: no baseline has been recorded yet" in out, args
        assert "such as 'last'" not in out
    status = runner.invoke(app, [*base, "--no-pager", "status"], env={"NO_COLOR": "1"}).output
    assert "No `last` yet" in status and 'use "manifest diff last"' not in status


def _one_file_store(tmp_path: Path) -> tuple[Path, list[str]]:
    """A root with a.csv and an initialised store; the CLI arguments that reach them."""
    from typer.testing import CliRunner

    from manifest.cli import app

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("x\n")
    base = ["--store", str(tmp_path / "s"), "--cooldown", "0"]
    assert CliRunner().invoke(app, [*base, "init", "--root", str(raw)]).exit_code == 0
    return raw, base


def test_requeue_refuses_a_path_that_is_not_in_last(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from manifest.cli import app

    _raw, base = _one_file_store(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, [*base, "snapshot", "--ref", "last"]).exit_code == 0
    out = runner.invoke(app, [*base, "requeue", "data/1_raw/a.csv"])
    assert out.exit_code == 3 and "data/1_raw/a.csv" in out.output
    assert "as `manifest show last` lists them" in out.output
    ok = runner.invoke(app, [*base, "requeue", "a.csv", "-m", "again"])
    assert ok.exit_code == 0 and "requeued 1 path;" in ok.output


def test_log_reads_only_the_moves_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22.14: `manifest log -n 5` of a ref with many moves reads five snapshots, not
    one per move (26,000 moves took 119 s on a bucket)."""
    from typer.testing import CliRunner

    from manifest.cli import app
    from manifest.store.objects import ObjectStore

    raw, base = _one_file_store(tmp_path)
    runner = CliRunner()
    one = runner.invoke(app, [*base, "snapshot", "--ref", "last"]).output.strip()
    (raw / "a.csv").write_text("y\n")
    two = runner.invoke(app, [*base, "snapshot", "--ref", "last"]).output.strip()
    for i in range(40):
        target = one if i % 2 == 0 else two
        assert runner.invoke(app, [*base, "reset", "last", target]).exit_code == 0
    reads = []
    real = ObjectStore.find_snapshot

    def counting(self: ObjectStore, oid: str):  # type: ignore[no-untyped-def]
        reads.append(oid)
        return real(self, oid)

    monkeypatch.setattr(ObjectStore, "find_snapshot", counting)
    out = runner.invoke(app, [*base, "log", "-n", "5"], env={"NO_COLOR": "1"}).output
    assert out.count("last@{") == 5 and "37 older moves: manifest log last -n 42" in out
    assert len(reads) <= 5 + 5  # the moves shown (and the diffs of those made by hand)
