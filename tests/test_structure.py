"""The package's shape: every module imports, no public name hides a subpackage, the registry is a
leaf, no import cycles, and the command line starts without importing torch."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import excite

SRC = Path(excite.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(SRC)], prefix="excite.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_public_name_hides_a_subpackage():
    for pkg in ["excite"] + [m for m in MODULES if (SRC / Path(*m.split(".")[1:]) / "__init__.py").exists()]:
        module = importlib.import_module(pkg)
        folder = Path(module.__file__).parent
        for name in getattr(module, "__all__", []):
            assert not (folder / name).is_dir() and not (folder / f"{name}.py").exists(), f"{pkg}.{name}"


def _top_level_imports(path: Path, name: str) -> set[str]:
    """excite modules imported at module level (not inside functions) by the file ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("excite")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("excite"):
                found.add(mod)
                for a in node.names:  # `from . import attention` imports a submodule
                    if f"{mod}.{a.name}" in MODULES:
                        found.add(f"{mod}.{a.name}")
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        rel = Path(*name.split(".")[1:])
        path = SRC / rel / "__init__.py" if (SRC / rel).is_dir() else SRC / rel.with_suffix(".py")
        graph[name] = {m for m in _top_level_imports(path, name) if m in MODULES and m != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodule is not a cycle by itself; parent packages are
    # imported implicitly, so edges to them are ignored.
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if n.startswith(m + "."):
                continue
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_registry_imports_no_model_code():
    assert not {m for m in _graph()["excite.core.registry"] if m.startswith(("excite.models", "excite.attention"))}


def test_command_line_starts_without_torch():
    code = ("import sys; from excite.cli import build_parser; build_parser(); "
            "from excite.cli.listing import load_catalog; load_catalog(); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_catalog_matches_the_registry():
    """`excite list models` reads a catalog; it must equal what the registry builds (refresh it with
    `python -m excite.cli.listing` after adding a model)."""
    from excite.cli.listing import build_catalog, load_catalog

    assert load_catalog() == build_catalog()


def test_cli_choice_lists_match_the_library():
    from excite.files.keymap import SOURCES
    from excite.cli.attach import SOURCES as CLI_SOURCES
    from excite.cli.profile import CONVENTION_NAMES
    from excite.profiling.conventions import CONVENTIONS

    assert tuple(sorted(CONVENTIONS)) == CONVENTION_NAMES
    assert tuple(SOURCES) == CLI_SOURCES
