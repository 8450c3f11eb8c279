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


# -- issue 23.3: the layers ----------------------------------------------------------------

_TOP = Path(__file__).parents[1]
# the modules that may know whether a location is a folder or a bucket: the two backend
# packages, and where settings text is parsed into a location (docs/architecture.md)
_KNOW_BACKENDS = ("manifest/store/", "manifest/root/", "manifest/location.py", "manifest/config.py")
# (``manifest.store.objects`` and ``.refs`` hold what every backend shares, and the local
# classes, which are named below)
_BACKEND_MODULES = {
    "manifest.store.local",
    "manifest.store.bucket",
    "manifest.store.s3",
    "manifest.store.s3list",
    "manifest.root.local",
    "manifest.root.bucket",
    "manifest.root.scan",
    "manifest.root.pool",
    "manifest.root.index",
}
_BACKEND_NAMES = {
    "BucketURL",
    "Bucket",
    "BucketStore",
    "BucketRoot",
    "BucketObjects",
    "BucketRefs",
    "LocalStore",
    "LocalRoot",
    "ObjectStore",
    "RefStore",
    "root_url",
    "store_url",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(_TOP).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The ``manifest`` modules a module imports when it runs (anywhere in it, lazy imports
    included; ``if TYPE_CHECKING:`` blocks left out)."""
    import ast

    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("manifest"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("manifest"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                file = _TOP / sub.replace(".", "/")
                is_module = file.with_suffix(".py").is_file() or (file / "__init__.py").is_file()
                found.add(sub if is_module else node.module)
            continue
    return found


def test_no_import_circle_in_the_engine() -> None:
    """Issue 23.3: imports flow one way (docs/architecture.md); a module that imports one
    that (through others) imports it back is refused, lazy imports included."""
    modules = {_module_name(p): p for p in _TOP.glob("manifest/**/*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ is run by importing any module in it: not an edge of its own
    for module, edges in graph.items():
        edges.discard(module.rsplit(".", 1)[0] if "." in module else "")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycle = [*stack[stack.index(other) :], other]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if other not in state:
                visit(other)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert "manifest.root.pool" in graph["manifest.root.local"]  # the graph is real


def test_no_backend_branch_outside_the_two_packages() -> None:
    """Issue 23.3: whether the store or the root is a folder or a bucket is decided in
    ``manifest/store/`` and ``manifest/root/`` (chosen once by ``open_store``/``open_root``);
    no other module of the engine or the glue names a backend's class, imports a backend
    module, or reads a bucket-only setting. ``location.py`` and ``config.py`` parse the
    settings' text into a location and may name ``BucketURL``."""
    import ast

    offenders = []
    for path in [*_TOP.glob("manifest/**/*.py"), *_TOP.glob("dagster_glue/**/*.py")]:
        rel = path.relative_to(_TOP).as_posix()
        if rel.startswith(_KNOW_BACKENDS):
            continue
        imported = _imports(path)
        offenders += [f"{rel} imports {m}" for m in sorted(imported & _BACKEND_MODULES)]
        for node in ast.walk(ast.parse(path.read_text())):
            name = (
                node.id
                if isinstance(node, ast.Name)
                else node.attr
                if isinstance(node, ast.Attribute)
                else None
            )
            if name in _BACKEND_NAMES:
                offenders.append(f"{rel}:{node.lineno} names {name}")
    assert offenders == []


def test_the_layout_checks_see_a_branch() -> None:
    """The check above finds what it looks for (a module written the old way fails it)."""
    import ast

    old = "if config.root_url is not None:\n    from manifest.store.bucket import Bucket\n"
    names = {n.attr for n in ast.walk(ast.parse(old)) if isinstance(n, ast.Attribute)}
    assert names & _BACKEND_NAMES == {"root_url"}


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
