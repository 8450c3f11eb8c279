"""The CLI through Typer's runner, on a store made by `manifest init`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from manifest.cli import app

runner = CliRunner()


@pytest.fixture
def cli(raw: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    base = ["--root", str(raw), "--store", str(tmp_path / "state"), "--cooldown", "0"]
    made = runner.invoke(app, ["--store", str(tmp_path / "state"), "init", "--root", str(raw)])
    assert made.exit_code == 0, made.output

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, *args], env={"NO_COLOR": "1"})
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    return run
