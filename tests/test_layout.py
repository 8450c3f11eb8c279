"""The engine stays free of its faces (shared/STYLE.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_import_manifest_leaves_the_faces_out() -> None:
    code = (
        "import sys, manifest, manifest.repo;"
        "print(' '.join(m for m in ('dagster', 'typer', 'rich', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_engine_imports_only_stdlib_msgspec_blake3() -> None:
    code = (
        "import sys; before = set(sys.modules); import manifest;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "third = sorted(n for n in new"
        " if n not in sys.stdlib_module_names and not n.startswith('_'));"
        "print(' '.join(third))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # typing_extensions arrives with msgspec itself.
    assert set(out.stdout.split()) <= {"manifest", "msgspec", "blake3", "typing_extensions"}


def test_the_sample_uses_the_public_api_only_and_nothing_imports_private_names() -> None:
    """Issue 23.6: the sample pipeline lives apart (`dagster_glue/sample/`) and imports from
    the library only what `dagster_glue` exports (and the engine's public names); nothing
    imports `dagster._...`, and the glue imports no private name (`_cron`)."""
    import ast

    import dagster_glue

    top = Path(__file__).parents[1]
    for path in [*top.glob("manifest/**/*.py"), *top.glob("dagster_glue/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                assert not node.module.startswith("dagster._"), (path, node.module)
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if "dagster_glue" in path.parts:  # the engine's own internals: issue 23.2
                    assert not private, (path, node.module, private)
                in_sample = "sample" in path.parts
                if in_sample and node.module == "dagster_glue":
                    assert set(names) <= set(dagster_glue.__all__), (path, names)
                elif in_sample and node.module.startswith("dagster_glue."):
                    assert node.module.startswith("dagster_glue.sample"), (path, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("dagster._"), (path, alias.name)


def test_the_spawned_test_children_import_no_dagster() -> None:
    """Issue 23.7: the process tests' spawned children import their test module, and so
    tests/conftest.py; Dagster (about a second each) is imported by the fixture that uses it."""
    code = (
        "import sys, tests.conftest, tests.test_repo, tests.test_maintenance,"
        " tests.test_fingerprint; print(' '.join(m for m in sys.modules if m == 'dagster'))"
    )
    top = Path(__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=top
    )
    assert out.stdout.strip() == ""
