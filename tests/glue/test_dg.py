"""``dg`` (dagster-dg-cli) finds, describes and scaffolds ``ChangeDetectionComponent``: the
entry point in pyproject.toml registers it, and its scaffolder writes a ``defs.yaml`` that
validates as written (``root`` is required; Dagster's default scaffold, ``attributes: {}``,
does not validate). Each ``dg`` call is a real subprocess in a minimal project made here."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from dagster_glue import ManifestResource

COMPONENT = "dagster_glue.ChangeDetectionComponent"
DG = Path(sys.executable).with_name("dg")
PROJECT_MODULE = "dg_probe_project"

RunDg = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The smallest ``dg`` project: a ``dg.toml`` and an empty ``defs`` package."""
    root = tmp_path / "project"
    defs = root / "src" / PROJECT_MODULE / "defs"
    defs.mkdir(parents=True)
    (defs.parent / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    (root / "dg.toml").write_text(
        textwrap.dedent(f"""\
            directory_type = "project"

            [project]
            root_module = "{PROJECT_MODULE}"
            """)
    )
    return root


@pytest.fixture
def run_dg(tmp_path: Path) -> RunDg:
    assert DG.exists(), f"{DG} is missing: install the test extra, pip install -e '.[test]'"
    home = tmp_path / "dagster_home"  # no telemetry banner in the output, no ~/.dagster
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "NO_COLOR": "1"}
    env["PATH"] = os.pathsep.join([str(DG.parent), env.get("PATH", "")])

    def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(DG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        if ok:
            assert out.returncode == 0, f"dg {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out

    return run


def test_the_entry_point_names_the_module_that_exports_the_component() -> None:
    points = importlib.metadata.entry_points(group="dagster_dg_cli.registry_modules")
    assert "dagster_glue" in {p.value for p in points}, "reinstall: pip install -e '.[test]'"


def test_dg_list_components_lists_it(project: Path, run_dg: RunDg) -> None:
    out = run_dg("list", "components", "--json", cwd=project)
    items = {item["key"]: item for item in json.loads(out.stdout)["items"]}
    assert COMPONENT in items
    assert "raw root" in items[COMPONENT]["summary"]


def test_dg_inspect_component_shows_its_schema(project: Path, run_dg: RunDg) -> None:
    out = run_dg("utils", "inspect-component", COMPONENT, cwd=project)
    assert COMPONENT in out.stdout
    assert '"root"' in out.stdout
    assert '"required": [\n        "root"\n    ]' in out.stdout


def test_dg_scaffold_defs_writes_a_defs_yaml_that_loads(
    project: Path,
    run_dg: RunDg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = project / "src" / PROJECT_MODULE / "defs"
    run_dg("scaffold", "defs", COMPONENT, "watch_raw", cwd=project)
    landing = tmp_path / "landing"
    run_dg(
        "scaffold", "defs", COMPONENT, "watch_landing", "--root", str(landing), "--name", "landing",
        cwd=project,
    )  # fmt: skip
    assert (defs / "watch_raw" / "defs.yaml").read_text() == textwrap.dedent(f"""\
        type: {COMPONENT}

        attributes:
          root: '{{{{ context.project_root }}}}/data/1_raw'
          name: raw
        """)
    assert f"root: {landing}\n" in (defs / "watch_landing" / "defs.yaml").read_text()

    # `dg check yaml` checks a file against the component's schema, and fails on Dagster's
    # default scaffold, which has no `root`. One folder a call: given several files of one
    # component type, dagster-dg-core 1.13 checks only one of them (keyed by type).
    run_dg("check", "yaml", str(defs / "watch_raw"), cwd=project)
    bare = defs / "bare"
    bare.mkdir()
    (bare / "defs.yaml").write_text(f"type: {COMPONENT}\nattributes: {{}}\n")
    out = run_dg("check", "yaml", str(bare), cwd=project, ok=False)
    assert out.returncode != 0 and "'root' is a required property" in out.stdout + out.stderr
    (bare / "defs.yaml").unlink()
    bare.rmdir()

    # And Dagster's component loading builds both from the files as written.
    monkeypatch.syspath_prepend(str(project / "src"))
    try:
        loaded = dg.load_from_defs_folder(path_within_project=project)
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == PROJECT_MODULE]:
            del sys.modules[module]
    resources = loaded.resources or {}
    raw, other = resources["raw_manifest"], resources["landing_manifest"]
    assert isinstance(raw, ManifestResource) and isinstance(other, ManifestResource)
    assert raw.root == str(project.resolve() / "data" / "1_raw")
    assert other.root == str(landing)
    assert loaded.resolve_schedule_def("raw_schedule").cron_schedule == "*/5 * * * *"
    assert loaded.resolve_schedule_def("landing_schedule").cron_schedule == "*/5 * * * *"
