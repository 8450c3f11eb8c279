"""The program's quick path for a plain `manifest status` (manifest.entry) against the Typer
app it stands in for: the same options, the same parse, the same output and exit code."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from manifest import entry
from manifest.cli import app
from manifest.commands import Options

from ..conftest import write
from .conftest import runner

# Typer's own options, which the quick path leaves to Typer
TYPER_ONLY = {"--version", "--help", "-h", "--install-completion", "--show-completion"}


def _options(command: Any) -> tuple[set[str], set[str]]:
    """The value options and the flags a click command declares (Typer's own left out)."""
    values: set[str] = set()
    flags: set[str] = set()
    for param in command.params:
        names = set(param.opts) - TYPER_ONLY
        if names and getattr(param, "is_flag", False):
            flags |= names
        elif names:
            values |= names
    return values, flags


def test_the_quick_path_knows_exactly_the_options_typer_declares() -> None:
    group = typer.main.get_command(app)
    assert _options(group) == (set(entry.GROUP_VALUES), set(entry.GROUP_FLAGS))
    status = group.commands["status"]  # type: ignore[attr-defined]
    assert _options(status) == (set(entry.STATUS_VALUES), set(entry.STATUS_FLAGS))


# (argv, what the quick path makes of it: None = "leave it to Typer")
LINES: list[tuple[list[str], bool]] = [
    (["status"], True),
    (["status", "--json"], True),
    (["--root", "r", "--store=s", "--cooldown", "1e1", "status", "--limit", "5"], True),
    (["-C", ".", "--no-pager", "--mode", "mtime_size", "status", "--exit-code"], True),
    (["--name", "raw", "status", "--fingerprints", "--json", "--limit=2"], True),
    (["--root", "status", "status"], True),  # a root named "status"
    (["--cooldown=0", "status", "--exit-code", "--json"], True),
    # left to Typer: its errors, help and rules
    (["status", "--json", "--json"], False),  # twice: the last wins in click
    (["--root", "a", "--root", "b", "status"], False),
    (["status", "--limit", "0"], False),  # below the range
    (["status", "--limit", "x"], False),
    (["--cooldown", "soon", "status"], False),
    (["--root", "-x", "status"], False),  # a value that looks like an option
    (["status", "--root", "r"], False),  # a group option after the command
    (["status", "--help"], False),
    (["--help"], False),
    (["--version"], False),
    (["status", "extra"], False),
    (["--json", "status"], False),
    (["-Cdir", "status"], False),
    (["log"], False),
    ([], False),
    (["--root"], False),
    (["--root", "r"], False),
]


@pytest.mark.parametrize(("argv", "quick"), LINES, ids=[" ".join(a) or "-" for a, _ in LINES])
def test_the_quick_path_parses_a_line_as_typer_does(
    argv: list[str], quick: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the quick path reads from a line is what Typer hands the status command; every
    other line is Typer's, whole."""
    parsed = entry.parse_status(argv)
    assert (parsed is not None) == quick
    if parsed is None:
        return
    seen: dict[str, Any] = {}
    monkeypatch.setattr("manifest.cli.enter", lambda directory: seen.update(directory=directory))

    def record(options: Options, *args: Any) -> None:
        seen.update({k: v for k, v in vars(options).items() if not k.startswith("_")})
        seen.update(zip(("as_json", "exit_code", "limit", "fingerprints"), args, strict=True))

    monkeypatch.setattr("manifest.cli.show_status", record)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    group, command = parsed
    expected = {
        "directory": None,
        "root": None,
        "store": None,
        "name": None,
        "mode": None,
        "cooldown": None,
        "no_pager": False,
        "as_json": False,
        "exit_code": False,
        "limit": None,
        "fingerprints": False,
        **group,
        **command,
    }
    assert seen == expected


def _quick(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        entry.main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _typer(argv: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, argv)
    return result.exit_code, result.stdout, result.stderr


def _same_second(text: str) -> str:
    return re.sub(r"\(\d+ \w+ ago\)", "(ago)", text)


def test_the_quick_path_prints_and_exits_as_typer_does(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("RAW_") or k == "DAGSTER_HOME"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NO_COLOR", "1")
    store = tmp_path / "state"
    base = ["--store", str(store), "--root", str(raw), "--cooldown", "0"]
    assert _typer([*base, "snapshot", "--ref", "last"])[0] == 0
    write(raw / "concepts" / "descriptions" / "c3.txt", "A third.\n")
    (raw / "links" / "analogy.txt").unlink()
    lines = [
        [*base, "status"],
        [*base, "status", "--json"],
        [*base, "status", "--json", "--fingerprints"],
        [*base, "status", "--exit-code", "--limit", "1"],
        ["--store", str(tmp_path / "none"), "status"],  # no store there: exit 3
        [*base, "--mode", "sideways", "status"],  # a bad setting: exit 3, named
    ]
    for argv in lines:
        assert entry.parse_status(argv) is not None
        quick = _quick(argv, capsys)
        assert (quick[0], _same_second(quick[1]), quick[2]) == (
            lambda r: (r[0], _same_second(r[1]), r[2])
        )(_typer(argv)), argv
    code, out, _ = _quick([*base, "status", "--json"], capsys)
    assert code == 0 and json.loads(out)["added"] == ["concepts/descriptions/c3.txt"]
    assert _quick([*base, "status", "--exit-code"], capsys)[0] == 1
    assert _quick(["--store", str(tmp_path / "none"), "status"], capsys)[0] == 3
    # -C: the store is found from there, as Typer's -C does
    (tmp_path / "sub").mkdir()
    assert (
        _typer(["--store", str(tmp_path / "sub" / ".manifest"), "init", "--root", str(raw)])[0] == 0
    )
    monkeypatch.chdir(raw)
    code, out, _ = _quick(["-C", str(tmp_path / "sub"), "--cooldown", "0", "status"], capsys)
    assert code == 0 and "Changes since last" not in out and "last:    (unset)" in out
    code, _, err = _quick(["-C", str(tmp_path / "gone"), "status"], capsys)
    assert code == 3 and err.startswith("manifest: error: -C ") and "give an existing" in err
