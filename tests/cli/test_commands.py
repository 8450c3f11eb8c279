from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from manifest.cli import app
from manifest.format import quote_path, to_json
from manifest.text import escape_text

from ..conftest import write

runner = CliRunner()


def edit(raw: Path) -> None:
    write(raw / "link_templates.csv", "template_id,template_file\nnew,links/new.txt\n")


def test_status_before_and_after_a_baseline(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("status")
    assert "last:    (unset)" in out and "added:    link_templates.csv" in out
    sid = cli("snapshot", "--ref", "last", "-m", "baseline").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", sid)
    out = cli("status")
    assert f"last:    {sid[:12]}" in out and "nothing changed since last (5 files)" in out
    edit(raw)
    out = cli("status")
    assert "modified: link_templates.csv" in out
    cli("status", "--exit-code", code=1)


def test_status_json_contract(cli, raw: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("snapshot", "--ref", "last")
    edit(raw)
    (raw / "links" / "analogy.txt").rename(raw / "links" / "moved.txt")
    data = json.loads(cli("status", "--json"))
    assert data["modified"] == ["link_templates.csv"]
    assert data["added"] == ["links/moved.txt"] and data["removed"] == ["links/analogy.txt"]
    assert data["renamed"] == [{"from": "links/analogy.txt", "to": "links/moved.txt"}]
    assert data["root"] == str(raw) and data["store"] == str(tmp_path / "state")
    assert data["mode"] == "content_hash" and data["pending"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", data["last"])
    assert data["unstable"] == [] and data["problems"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["last_moved"])


def _init(raw: Path, store: Path) -> None:
    made = runner.invoke(app, ["--store", str(store), "init", "--root", str(raw)])
    assert made.exit_code == 0, made.output


def test_status_lists_settling_files(raw: Path, tmp_path: Path) -> None:
    write(raw / "fresh.csv", "x\n", age=0)
    _init(raw, tmp_path / "s")
    # longer than any loaded machine takes from the write to the status; shorter than the
    # age of the fixture's files (60 s)
    settings = ["--root", str(raw), "--store", str(tmp_path / "s"), "--cooldown", "30"]
    result = runner.invoke(app, [*settings, "status", "--json"])
    assert json.loads(result.output)["unstable"] == ["fresh.csv"]


def test_snapshot_json_and_show(cli) -> None:  # type: ignore[no-untyped-def]
    snap = json.loads(cli("snapshot", "--json", "-m", "hello"))
    assert re.fullmatch(r"[0-9a-f]{64}", snap["id"]) and len(snap["added"]) == 5
    shown = json.loads(cli("show", snap["id"][:10], "--json"))
    assert shown["id"] == snap["id"] and shown["message"] == "hello"
    assert [e["path"] for e in shown["entries"]][:1] == ["concepts/concepts_metadata.csv"]
    assert all(len(e["fingerprint"]) == 64 for e in shown["entries"])
    out = cli("show", snap["id"])
    assert f"snapshot {snap['id']}" in out and "link_templates.csv" in out


def test_log_json_newest_first(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    first = cli("snapshot", "--ref", "last", "-m", "one").strip()
    edit(raw)
    second = cli("snapshot", "--ref", "last", "-m", "two").strip()
    entries = json.loads(cli("log", "--json"))
    assert [e["id"] for e in entries] == [second, first]
    assert entries[0]["previous"] == first and entries[1]["previous"] is None
    assert entries[0]["reason"] == "snapshot: two"
    assert entries[0]["counts"]["modified"] == 1
    assert len(json.loads(cli("log", "-n", "1", "--json"))) == 1
    out = cli("log")
    assert out.index(second[:12]) < out.index(first[:12]) and "last@{1}" in out
    assert "never moved" in cli("log", "pending")


def test_diff_between_revisions_and_worktree(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    cli("snapshot", "--ref", "last")
    edit(raw)
    cli("snapshot", "--ref", "last")
    assert json.loads(cli("diff", "last@{1}", "last", "--json"))["modified"] == [
        "link_templates.csv"
    ]
    assert "no differences" in cli("diff", "last")
    cli("diff", "last", "--exit-code")
    cli("diff", "last@{1}", "--exit-code", code=1)


def test_reset_rolls_back_and_is_logged(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    first = cli("snapshot", "--ref", "last").strip()
    edit(raw)
    second = cli("snapshot", "--ref", "last").strip()
    out = cli("reset", "last", "last@{1}", "-m", "reprocess")
    assert out.strip() == f"last: {second[:12]} -> {first[:12]}"
    assert json.loads(cli("log", "--json"))[0]["reason"] == "reset by hand: reprocess"
    assert "modified: link_templates.csv" in cli("status")


def test_reset_delete_clears_a_ref(cli) -> None:  # type: ignore[no-untyped-def]
    sid = cli("snapshot", "--ref", "pending").strip()
    out = cli("reset", "pending", "--delete", "--force").splitlines()
    assert out == [
        f"pending: {sid[:12]} -> (unset)",
        f"to undo: manifest reset --create pending {sid}",
    ]
    assert json.loads(cli("status", "--json"))["pending"] is None
    cli("reset", "pending", "last", "--delete", code=2)
    cli("reset", "pending", code=2)


def test_gc_and_fsck(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("snapshot", "--ref", "last")
    orphan = cli("snapshot").splitlines()[0]
    gc = json.loads(cli("gc", "--grace", "0", "--json"))
    assert gc["removed"] == 1
    cli("show", orphan, code=3)
    report = json.loads(cli("fsck", "--json"))
    assert report["ok"] is True and report["problems"] == []
    assert "ok" in cli("fsck")
    objects = tmp_path / "state" / "objects"
    victim = next(p for p in objects.rglob("*") if p.is_file())
    victim.write_bytes(b"junk")
    report = json.loads(cli("fsck", "--json", code=3))
    assert report["ok"] is False
    assert any(p["message"].startswith("corrupt") for p in report["problems"])


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["show", "nosuchrev"], 3, "unknown revision 'nosuchrev'"),
        (["reset", "last", "deadbeef"], 3, "unknown revision 'deadbeef'"),
        (["reset", "../x", "last"], 3, "invalid ref name '../x'"),
        (["--mode", "sha1", "status"], 3, "invalid --mode='sha1'"),
        (["log", "-n", "0"], 2, ""),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_error_paths_exit_codes(
    raw: Path, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    _init(raw, tmp_path / "s")
    result = runner.invoke(app, ["--root", str(raw), "--store", str(tmp_path / "s"), *args])
    assert result.exit_code == code
    assert needle in result.output
    assert "Traceback" not in result.output


def test_missing_root_is_exit_3(raw: Path, tmp_path: Path) -> None:
    _init(raw, tmp_path / "s")
    raw.rename(tmp_path / "moved")  # the root the store records is gone
    result = runner.invoke(app, ["--store", str(tmp_path / "s"), "status"])
    assert result.exit_code == 3 and "does not exist" in result.output


def test_held_lock_is_exit_4(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    cli("snapshot", "--ref", "last")
    (tmp_path / "state" / "refs" / "last.lock").write_text("1 host\n")
    monkeypatch.setenv("RAW_LOCK_TIMEOUT_SEC", "0.1")
    out = cli("snapshot", "--ref", "last", code=4)
    assert "last.lock exists" in out


def test_dangerous_names_are_escaped(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    cli("snapshot", "--ref", "last")
    write(raw / "evil\x1b[31mred\nline.csv", "x")
    out = cli("status")
    assert "\x1b" not in out
    assert '"evil\\x1b[31mred\\nline.csv"' in out


def test_non_utf8_name_in_json_is_reversible(cli, raw: Path) -> None:  # type: ignore[no-untyped-def]
    name = b"caf\xe9.csv"
    path = os.fsencode(raw) + b"/" + name
    with open(path, "wb") as fh:
        fh.write(b"x")
    os.utime(path, ns=(10**18, 10**18))
    out = cli("status", "--json")
    assert "\\udce9" in out
    (added,) = [p for p in json.loads(out)["added"] if p.startswith("caf")]
    assert os.fsencode(added) == name
    assert "caf\\xe9.csv" in cli("status")


def test_escape_helpers() -> None:
    assert quote_path("plain/name.csv") == "plain/name.csv"
    assert quote_path("tab\there") == '"tab\\there"'
    assert quote_path('quo"te\nx') == '"quo\\"te\\nx"'
    assert escape_text("bell\x07") == "bell\\x07"
    assert to_json({"p": "a\udcffb"}) == '{\n  "p": "a\\udcffb"\n}'
    assert json.loads(to_json({"p": "é"})) == {"p": "é"}


def test_every_command_has_help_with_an_example() -> None:
    names = sorted(c.name or c.callback.__name__ for c in app.registered_commands)  # type: ignore[union-attr]
    assert names == [
        "build-client",
        "diff",
        "fsck",
        "gc",
        "init",
        "log",
        "requeue",
        "reset",
        "show",
        "snapshot",
        "status",
        "watch",
    ]
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert "Example: manifest " in result.output, name


def test_every_command_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for c in app.registered_commands:
        name = c.name or c.callback.__name__  # type: ignore[union-attr]
        assert f"### `manifest {name}" in doc, name
    for code in range(5):
        assert f"| {code} |" in doc


def test_progress_bar_only_on_a_terminal_after_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from manifest import format as cli_module

    class FakeTty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(cli_module.sys, "stderr", io.StringIO())
    monkeypatch.delenv("NO_COLOR", raising=False)
    quiet = cli_module.HashProgress()
    quiet(100)
    assert not quiet.enabled and quiet.bar is None

    monkeypatch.setattr(cli_module.sys, "stderr", FakeTty())
    progress = cli_module.HashProgress()
    progress(100)
    assert progress.enabled and progress.bar is None  # not yet: hashing just started
    progress.started -= 1.0
    progress(2**20)
    assert progress.bar is not None and progress.files == 2
    progress.close()

    # with the previous walk's totals (last's counts): the walk against that total, and an ETA
    known = cli_module.HashProgress(expected=(1000, 10 * 2**20))
    known.started -= 1.0
    known.walked(250, 2**20)
    assert known.bar is not None
    (task,) = known.bar.tasks
    assert task.total == 1000 and task.completed == 250
    assert any(type(c).__name__ == "TimeRemainingColumn" for c in known.bar.columns)
    known.close()

    # the totals read only when the display starts: a quick scan never reads them
    asked: list[int] = []
    lazy = cli_module.HashProgress(expected=lambda: asked.append(1) or (10, 100))
    lazy.walked(5, 50)
    assert asked == [] and lazy.bar is None
    lazy.started -= 1.0
    lazy.walked(6, 60)
    assert asked == [1] and lazy.bar is not None and lazy.bar.tasks[0].total == 10
    lazy.close()


def test_log_names_the_runs_that_processed_each_move(cli, raw: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from manifest import Repository, load_config

    repo = Repository(load_config(root=raw, store=tmp_path / "state", cooldown_sec=0, env={}))
    repo.begin()
    edit(raw)
    started = repo.begin()
    assert started.snapshot is not None
    repo.promote(started.snapshot, reason="promoted after run r-1, r-2", runs=("r-1", "r-2"))
    entries = json.loads(cli("log", "--json"))
    assert entries[0]["runs"] == ["r-1", "r-2"] and entries[1]["runs"] == []
    out = cli("log")
    assert "    runs r-1, r-2" in out


def test_show_json_mtime_zero_and_status_order(raw: Path, tmp_path: Path) -> None:
    base = ["--root", str(raw), "--store", str(tmp_path / "s"), "--cooldown", "0"]
    epoch = raw / "epoch.csv"
    epoch.write_text("x\n")
    os.utime(epoch, ns=(0, 0))
    write(raw / "é.csv", "x\n")
    (raw / os.fsdecode(b"\x80.csv")).write_text("x\n")
    os.utime(raw / os.fsdecode(b"\x80.csv"), ns=(0, 10**18))
    result = runner.invoke(app, [*base, "--mode", "mtime_size", "snapshot", "--ref", "last"])
    assert result.exit_code == 0, result.output
    shown = json.loads(runner.invoke(app, [*base, "--mode", "mtime_size", "show", "--json"]).output)
    by_path = {e["path"]: e for e in shown["entries"]}
    assert by_path["epoch.csv"]["mtime_ns"] == 0
    paths = [e["path"] for e in shown["entries"]]
    assert paths == sorted(paths)  # by text, as status sorts: "é" before byte 0x80
    assert paths.index("é.csv") < paths.index(os.fsdecode(b"\x80.csv"))


def test_json_carries_old_and_new_fingerprints_and_names_the_store(
    cli, raw: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from blake3 import blake3

    cli("snapshot", "--ref", "last")
    before = (raw / "link_templates.csv").read_bytes()
    write(raw / "link_templates.csv", "template_id\nnew\n")
    (raw / "links" / "analogy.txt").unlink()
    write(raw / "added.csv", "a\n")
    status = json.loads(cli("status", "--json", "--fingerprints"))
    by_path = {c["path"]: c for c in status["changes"]}
    modified = by_path["link_templates.csv"]
    assert modified["change"] == "modified"
    assert modified["old"]["fingerprint"] == blake3(before).hexdigest()
    assert modified["new"]["fingerprint"] == blake3(b"template_id\nnew\n").hexdigest()
    assert modified["new"]["mtime_ns"] is None  # content mode records no mtime
    assert by_path["links/analogy.txt"]["new"] is None
    assert by_path["added.csv"]["old"] is None and by_path["added.csv"]["change"] == "added"
    snap = cli("snapshot", "--ref", "last").splitlines()[0]
    diff = json.loads(cli("diff", "last^", snap, "--json", "--fingerprints"))
    assert {c["path"] for c in diff["changes"]} == set(by_path)
    assert diff["store"] == str(tmp_path / "state") and diff["root"] == str(raw)
    assert "changes" not in json.loads(cli("diff", "last^", "last", "--json"))


def test_docs_and_help_agree_on_every_command_and_option() -> None:
    """Every command and every option in `--help` is in docs/cli.md, and every option the
    doc gives a command exists in that command's `--help`."""
    import typer.main

    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    group: Any = typer.main.get_command(app)
    for param in group.params:
        for opt in param.opts:
            if opt not in ("--help", "-h", "--install-completion", "--show-completion"):
                assert f"`{opt}" in doc, f"global option {opt} is not in docs/cli.md"
    for name, command in group.commands.items():
        heading = re.search(rf"### `manifest {name}( [^\n]*)?`", doc)
        assert heading is not None, f"command {name} is not in docs/cli.md"
        help_text = runner.invoke(app, [name, "--help"]).output
        for param in command.params:
            opts = [o for o in param.opts if o.startswith("-") and o not in ("--help", "-h")]
            if opts:
                assert any(o in heading.group(0) for o in opts), f"{name} {opts} not in its doc"
        for opt in re.findall(r"\[(-[-\w]+)", heading.group(0)):
            assert opt in help_text, f"docs give {name} {opt}, which --help does not list"


def test_words_one_file_and_no_placeholders(tmp_path: Path) -> None:
    """Counts agree with their nouns, suggestions read as a sentence, and `--help` names
    each option's value (DIR, PATH, N...), never a type placeholder such as <str>."""
    raw = tmp_path / "raw"
    write(raw / "only.csv", "x\n")
    store = tmp_path / "s"
    _init(raw, store)
    out = runner.invoke(app, ["--store", str(store), "status"], env={"NO_COLOR": "1"}).output
    assert "(1 file scanned)" in out
    from manifest import Repository, load_config

    result = Repository(load_config(store=store, env={})).begin()
    assert result.message == "recorded a baseline of 1 file; nothing to process"
    out = runner.invoke(app, ["--store", str(store), "reset", "lats", "last"]).output
    assert "no ref named 'lats' (did you mean 'last'?); pass --create" in out
    import typer.main

    group: Any = typer.main.get_command(app)
    for name in ["", *group.commands]:
        help_text = runner.invoke(app, [name, "--help"] if name else ["--help"]).output
        assert not re.search(r"<(str|int|float|int range|path)>", help_text), (name, help_text)


def test_every_command_that_scans_says_what_it_left_out_in_json(raw: Path, tmp_path: Path) -> None:
    """Issue 22.6: `snapshot --json` and `diff REV --json` (against the working tree) carry
    the scan's problems and settling paths, as `status --json` does."""
    _init(raw, tmp_path / "s")
    base = ["--store", str(tmp_path / "s")]
    assert runner.invoke(app, [*base, "snapshot", "--ref", "last"]).exit_code == 0
    write(raw / "fresh.csv", "still being written\n", age=0)
    for args in (["snapshot", "--json"], ["diff", "last", "--json"], ["status", "--json"]):
        data = json.loads(runner.invoke(app, [*base, *args]).output)
        assert data["unstable"] == ["fresh.csv"] and data["problems"] == [], args


def test_the_program_builds_only_the_command_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`manifest` as a program (`app(...)`, what the console script and `python -m manifest`
    call) turns only the command it runs into its click form; its help lists every command
    exactly as the eagerly built group (typer.testing's) does, and an unknown command is
    still a usage error that suggests the right one."""
    import typer.main

    built: list[str] = []
    real = typer.main.get_command_from_info

    def spy(command_info: Any, **kwargs: Any) -> Any:
        built.append(command_info.callback.__name__)
        return real(command_info, **kwargs)

    monkeypatch.setattr(typer.main, "get_command_from_info", spy)
    for key in [k for k in os.environ if k.startswith("RAW_") or k == "DAGSTER_HOME"]:
        monkeypatch.delenv(key)

    def program(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            app([*args], prog_name="manifest")
        return int(exit_info.value.code or 0)

    assert program("-C", str(tmp_path), "status") == 3  # no store here: a manifest error
    assert built == ["status"]
    capsys.readouterr()
    assert program("--help") == 0
    lazy_help = capsys.readouterr().out
    eager_help = runner.invoke(app, ["--help"]).output

    def listed(text: str) -> tuple[list[str], list[str]]:
        """The commands and the options a help lists (their wrapping follows the width)."""
        commands = text.split("Commands:")[1]
        return re.findall(r"^  (\w+) ", commands, re.M), re.findall(r"--[\w-]+", text)

    assert listed(lazy_help) == listed(eager_help)
    assert listed(lazy_help)[0][:2] == ["init", "status"] and "watch" in listed(lazy_help)[0]
    assert program("statu") == 2
    assert "Did you mean 'status'?" in capsys.readouterr().err
