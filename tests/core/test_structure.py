"""The package's shape: every module imports, no public name hides a subpackage, the registry is a
leaf, no import cycles, no function longer than a screen, and the command line starts without
importing torch."""

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


# The layers, lowest first (ARCHITECTURE.md): a module may import its own layer and the ones below.
LAYERS = {
    "core": 0, "attention": 1, "models": 2, "data": 2, "profiling": 3, "plug": 4, "files": 4, "factory": 5,
    "deploy": 6, "training": 7, "study": 8, "cli": 9, "__main__": 10,
}
# Why a function-level import may stay: keeping torch (or a heavy module) out of the command line's
# start-up, or an optional package. The comment says so in four words or fewer.
MAX_REASON_WORDS = 4


def _file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    return SRC / rel / "__init__.py" if (SRC / rel).is_dir() else SRC / rel.with_suffix(".py")


def _imports(name: str):
    """``(target, line, function_level, source line)`` for every import of an excite module in ``name``,
    function-level ones included."""
    path = _file(name)
    text = path.read_text()
    tree = ast.parse(text)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    lines = text.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            mods = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for mod in mods:
            yield mod, node.lineno, id(node) not in top, lines[node.lineno - 1]


def _graph(function_level: bool = True) -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        graph[name] = {m for m, _, inner, _ in _imports(name)
                       if m in MODULES and m != name and (function_level or not inner)}
    return graph


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_imports_go_down_only():
    """No module imports a layer above its own, at module level or inside a function."""
    assert set(LAYERS) >= {_layer(m) for m in MODULES if _layer(m)}, "a new top-level module needs a layer"
    upward = []
    for name in MODULES:
        for target, line, _, _ in _imports(name):
            a, b = _layer(name), _layer(target)
            if target in MODULES and a and b and LAYERS[b] > LAYERS[a]:
                upward.append(f"{name}:{line} imports {target} ({a} is below {b})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Cycles through function-level imports count too: they only hide the cycle."""
    graph = _graph()
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if n.startswith(m + "."):  # a module's own parent package is imported implicitly
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


def test_every_function_level_import_says_why():
    unexplained = []
    for name in MODULES:
        seen = set()
        for target, line, inner, source in _imports(name):
            if not inner or line in seen:
                continue
            seen.add(line)
            reason = source.partition("#")[2].replace("noqa: F401", "").strip()
            if not reason or len(reason.split()) > MAX_REASON_WORDS:
                unexplained.append(f"{name}:{line}: {source.strip()}")
    assert not unexplained, "function-level imports without a short reason:\n" + "\n".join(unexplained)


MAX_FUNCTION_LINES = 80  # a screen, docstring included


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_registry_is_torch_free_and_needs_no_import_order():
    """In a fresh process, with nothing imported first, the registry knows every model and attention
    module, and looking them up imports no torch."""
    code = ("import sys; from excite.core.registry import list_models, list_attention, model_entry; "
            "from excite.cli import build_parser; build_parser(); "
            "n = len(list_models()); model_entry('resnet20'); "
            "print(n, len(list_attention()), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n, n_attention, torch_loaded = r.stdout.split()
    from excite.core.registry import list_attention, list_models

    assert (int(n), int(n_attention), torch_loaded) == (len(list_models()), len(list_attention()), "False")


def test_index_matches_the_code():
    """The index is what the ``register_*`` marks declare (refresh it with ``python -m excite.models.index``)."""
    from excite.core.registry import index
    from excite.models.index import build_index

    assert index() == build_index()


def test_cli_choice_lists_match_the_library():
    from excite.files.keymap import SOURCES
    from excite.cli.attach import SOURCES as CLI_SOURCES
    from excite.cli.profile import CONVENTION_NAMES
    from excite.profiling.conventions import CONVENTIONS

    assert tuple(sorted(CONVENTIONS)) == CONVENTION_NAMES
    assert tuple(SOURCES) == CLI_SOURCES


def test_test_folders_mirror_the_layers():
    """A test file sits in the folder of the layer it tests (tests/models/ for excite/models/ ...); only
    what is no layer's (the docs, the benchmarks, the factory at the package root) sits in tests/ itself."""
    tests = Path(__file__).resolve().parents[1]
    layers = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("reference", "__pycache__")}
    assert folders <= layers, f"test folders that are no layer of src/excite: {sorted(folders - layers)}"
    assert {p.name for p in tests.glob("test_*.py")} <= {"test_docs.py", "test_benchmarks.py", "test_modelflow.py"}
