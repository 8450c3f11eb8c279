"""The engine stays free of its faces (shared/STYLE.md)."""

from __future__ import annotations

import subprocess
import sys


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
