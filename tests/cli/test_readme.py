"""The README's terminal session is replayed so it cannot rot: same commands, same output
once ids, times and the temporary root are masked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).parents[2]


def _session_blocks() -> list[tuple[str, list[str]]]:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def _mask(text: str, root: str) -> str:
    text = text.replace(root, "<dir>")
    text = re.sub(r"\b[0-9a-f]{64}\b", "<id64>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id12>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    return re.sub(r"\(\d+ seconds? ago\)", "(<ago>)", text)


def test_readme_session_is_real(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    shutil.copytree(REPO_ROOT / "data", work / "data")
    hour_ago = time.time_ns() - 3600 * 10**9
    for p in (work / "data").rglob("*"):
        os.utime(p, ns=(hour_ago, hour_ago))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env["NO_COLOR"] = "1"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")

    last_rc = [0]

    def sh(command: str) -> str:
        if command == "echo $?":  # each step runs in its own shell: answer for the last one
            return f"{last_rc[0]}\n"
        proc = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=60
        )
        last_rc[0] = proc.returncode
        return proc.stdout

    # The setup the README describes: a baseline, then one concept added while an editor's
    # temporary file is still being written.
    sh("manifest init")
    sh('manifest snapshot --ref last -m "baseline"')
    raw = work / "data" / "1_raw"
    with open(raw / "concepts" / "concepts_metadata.csv", "a") as fh:
        fh.write("c011,compass,object,concepts/descriptions/c011.txt\n")
    (raw / "concepts" / "descriptions" / "c011.txt").write_text("A compass.\n")
    ten_ago = time.time_ns() - 10 * 10**9
    for p in (
        raw / "concepts" / "concepts_metadata.csv",
        raw / "concepts" / "descriptions" / "c011.txt",
    ):
        os.utime(p, ns=(ten_ago, ten_ago))
    (raw / "essay_templates.csv.tmp").write_text("draft\n")

    steps = _session_blocks()
    assert [c for c, _ in steps][:2] == [
        "manifest status",
        'manifest snapshot --ref last -m "took the new concept"',
    ]
    readme_root = "/tmp/demo"
    for command, expected in steps:
        # the editor is still writing its temporary file: it stays inside the cooldown
        # however long the steps before took (under load they took over 3 s)
        os.utime(raw / "essay_templates.csv.tmp")
        actual = sh(command)
        want = _mask("\n".join(expected), readme_root).rstrip()
        got = _mask(actual, str(work)).rstrip()
        assert got == want, f"README step {command!r} differs:\n{got}\n--- README ---\n{want}"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    """The README's second command installs, runs lint, format and type checks and the
    tests, as it says, and `.ci/run` runs those same steps."""
    top = Path(__file__).parents[2]
    readme = (top / "README.md").read_text()
    command = re.findall(r"```sh\n(python3\.11 -m venv .*?)\n```", readme)[1]
    steps = [
        ".venv/bin/pip install -q uv",
        ".venv/bin/uv pip install -q --python .venv/bin/python -e '.[test]'",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
    ]
    pytest_step = re.search(r"\.venv/bin/python -m pytest -q -n \d+", command)
    assert pytest_step is not None, command  # the tests, on xdist workers
    steps.append(pytest_step.group())
    ci = (top / ".ci" / "run").read_text()
    for step in steps:
        assert step in command and step in ci, step
