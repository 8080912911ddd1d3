"""The package layout: no import circles, every import points down the layers, old paths still import.

Every module of ``miars_core`` and of the built-in plugins is parsed (not imported): each
``import`` and ``from ... import`` counts, at module level or inside a function (a lazy import
is still a dependency), with relative imports resolved. The layers of ``miars_core``, from the
bottom (README "Layout", docs/notes.md):

    contracts < science < kit < engine < reports < the face (cli.py, docgen.py, __main__.py)

A module imports its own layer or those below; ``miars_core/__init__.py`` imports nothing of the
package; a plugin imports contracts, science and kit, and another plugin only through that
plugin's package or its public modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "miars_core"
LAYERS = ("contracts", "science", "kit", "engine", "reports")
FACE = ("cli", "docgen", "__main__")
#: What a plugin may import of another plugin.
PUBLIC = {"miars_recbole": {"miars_recbole", "miars_recbole.training"}}


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _modules() -> dict[str, Path]:
    """Every module of the project's packages (pyproject's package-dir), by dotted name."""
    dirs = _pyproject()["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path`` that names a project module, relative ones resolved."""
    is_package = path.name == "__init__.py"
    found = []

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] not in {m.split(".")[0] for m in MODULES}:
                continue
            if target in MODULES:
                found.append((target, node.lineno))
            else:  # a project package's module that does not exist: an old path or a typo
                found.append((f"?{target}", node.lineno))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> tuple[int, str]:
    """(rank, layer name) of a module; plugins rank just above the kit (they may use contracts, science, kit)."""
    parts = module.split(".")
    if parts[0] != CORE:
        return (LAYERS.index("kit"), "plugins")
    if len(parts) == 1:
        return (-1, "miars_core/__init__.py")
    if parts[1] in LAYERS:
        return (LAYERS.index(parts[1]), parts[1])
    assert parts[1] in FACE, f"{module} sits in no layer: move it into one of {', '.join(LAYERS)} or the face"
    return (len(LAYERS), "the face")


def test_every_module_is_in_a_layer_and_packaged():
    packages = set(_pyproject()["tool"]["setuptools"]["packages"])
    for name, path in MODULES.items():
        _layer(name)
        if path.name == "__init__.py":
            assert name in packages, f"pyproject.toml [tool.setuptools] packages misses {name}: a wheel would lack it"


def test_imports_name_existing_modules():
    """Project code imports modules where they live, never through the old paths kept for plugins."""
    wrong = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t[1:]}" for m, edges in GRAPH.items()
             for t, line in edges if t.startswith("?")]
    assert not wrong, "imports of modules that do not exist (old paths?):\n" + "\n".join(wrong)


def _cycle() -> list[str] | None:
    """One import circle among the project's modules, as a path a -> b -> ... -> a; None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target, _ in GRAPH.get(module, []):
            if target.startswith("?") or target == module:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_import_circles():
    """No module reaches itself through imports (function-level ones included) in miars_core and plugins/."""
    circle = _cycle()
    if circle:
        lines = [f"{a} -> {b} ({MODULES[a].relative_to(ROOT)}:{next(l for t, l in GRAPH[a] if t == b)})"
                 for a, b in zip(circle, circle[1:])]
        pytest.fail("import circle:\n" + "\n".join(lines))


def test_the_cycle_finder_finds_a_circle(monkeypatch):
    fake = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", fake)
    assert _cycle() in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", {"a": [("b", 1)], "b": []})
    assert _cycle() is None


def test_imports_point_down_the_layers():
    wrong = []
    for module, edges in GRAPH.items():
        own = module.split(".")[0]
        rank, layer = _layer(module)
        for target, line in edges:
            where = f"{MODULES[module].relative_to(ROOT)}:{line}: {module} ({layer}) imports {target.lstrip('?')}"
            package = target.split(".")[0]
            if target.startswith("?") or target == CORE:  # the first test's business; __version__
                continue
            if package != CORE:  # a plugin's module
                if own == CORE:
                    wrong.append(f"{where}, a plugin")
                elif package != own and target not in PUBLIC.get(package, {package}):
                    wrong.append(f"{where}, not a public module of that plugin ({', '.join(sorted(PUBLIC.get(package, {package})))})")
                continue
            t_rank, t_layer = _layer(target)
            if t_rank > rank:
                wrong.append(f"{where} ({t_layer}), a layer above it")
    assert not wrong, "\n".join(wrong)


def test_old_paths_import_the_moved_modules():
    """Each old top-level path (plugins, notebooks and scripts written before the layout) gives the same module."""
    import importlib

    import miars_core

    assert miars_core.MOVED
    for old, new in miars_core.MOVED.items():
        assert f"{CORE}.{new}" in MODULES, f"MOVED[{old!r}] names {new}, which does not exist"
        assert f"{CORE}.{old}" not in MODULES, f"{CORE}.{old} exists again and shadows the old path's alias"
        assert importlib.import_module(f"{CORE}.{old}") is importlib.import_module(f"{CORE}.{new}")
    from miars_core import checks, hookspecs  # noqa: F401
    from miars_core.engine import FAILED_EXIT, run_grid  # the grid engine module that became engine/run.py
    from miars_core.engine import run
    from miars_core.pipeline import AttackConfig, load_dataset, run_attack  # noqa: F401 - the documented API

    assert run_grid is run.run_grid and FAILED_EXIT == run.FAILED_EXIT
    assert sys.modules["miars_core.pipeline"].__spec__.name == "miars_core.engine.pipeline"
    with pytest.raises(ImportError):
        importlib.import_module("miars_core.nosuchmodule")


def test_the_command_line_imports_no_numeric_stack():
    """`miars --help` stays fast: the face's import path loads none of the heavy libraries."""
    heavy = ("numpy", "scipy", "torch", "recbole", "pandas", "sklearn", "matplotlib")
    code = f"import sys, miars_core.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
