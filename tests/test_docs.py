"""Every console and Python block of README.md and docs/*.md is executed and compared with what it
prints, so the documentation cannot drift from the tool.

How a page is read:

* ```` ```console ````: a line starting with ``$ `` is a command (``excite`` and ``python`` run this
  checkout with this interpreter; pipes through ``head``/``tail`` work) and the lines after it are its
  expected output. ``...`` alone on a line stands for any number of lines; ``...`` inside a line for
  any text on that line (timings, throughput).
* ```` ```python ````: run with this interpreter; it must exit 0. A ```` ```text ```` block right after
  it (nothing but blank lines between) is its expected output, compared the same way.
* ```` ```python ```` or ```` ```toml ```` whose first line is ``# file: NAME``: written as ``NAME`` (before the page's first
  block runs, so a command may use a file the page shows below it), not run.
* ``<!-- skip-test: why -->`` on the line before a block: not run, reported as skipped with the reason.
  Every ```` ```bash ```` block (commands that install or run for minutes) must carry it.
* Other blocks (```` ```text ````, ```` ```toml ````) are illustrations and are not run.

The blocks of one page run in order in one empty temporary folder, so a later block can use what an
earlier one wrote (the lifecycle: train -> eval -> profile -> export -> predict). Each block is one test
(its id: page, line and kind), so the test output counts what ran; under pytest-xdist a worker that
starts in the middle of a page first runs the page's earlier blocks itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip-test:?\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    kind: str                 # "console", "python", "file", "bash", "other"
    body: str
    skip: str | None = None   # the marker's reason
    expected: list[str] = field(default_factory=list)
    name: str = ""            # file name of a "file" block

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}:{self.kind}"


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page, with skip markers, file names and expected outputs attached."""
    text = page.read_text()
    blocks: list[Block] = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, m.start()) + 1
        prev = blocks[-1] if blocks else None
        if lang == "text" and prev and prev.kind == "python" and not text[prev_end:m.start()].strip():
            prev.expected = body.rstrip("\n").split("\n")  # the output of the python block above
            prev_end = m.end()
            continue
        kind = lang if lang in ("console", "python", "bash") else "other"
        name = ""
        first = body.split("\n", 1)[0]
        if lang in ("python", "toml") and first.startswith("# file: "):
            kind, name = "file", first[len("# file: "):].strip()
        blocks.append(Block(page, line, kind, body, skip.group(1) if skip else None, name=name))
        prev_end = m.end()
    return blocks


def console_commands(body: str) -> list[tuple[str, list[str]]]:
    """A console block as ``[(command, expected lines), ...]``."""
    cmds: list[tuple[str, list[str]]] = []
    for line in body.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            cmds.append((line[2:], []))
        elif cmds:
            cmds[-1][1].append(line)
    return cmds


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line match with ``...`` elisions (a whole line: any lines; inside a line: any text)."""
    exp = [e.rstrip() for e in expected]
    act = [a.rstrip() for a in actual]
    while exp and not exp[-1]:
        exp.pop()
    while act and not act[-1]:
        act.pop()

    def line_ok(e: str, a: str) -> bool:
        if "..." not in e:
            return e == a
        pattern = ".*".join(re.escape(part) for part in e.split("..."))
        return re.fullmatch(pattern, a) is not None

    def go(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i].strip() == "...":
            return any(go(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and line_ok(exp[i], act[j]) and go(i + 1, j + 1)

    return go(0, 0)


BLOCKS = {page: parse(page) for page in PAGES}
RUNNABLE = [b for blocks in BLOCKS.values() for b in blocks if b.kind in ("console", "python")]


def test_matcher():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["x ... img/s"], ["x 12 img/s"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a"], ["a", "b"])


def test_parser(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n<!-- skip-test: slow -->\n```bash\nsleep 9\n```\n"
                    "```python\n# file: a.py\nx = 1\n```\n```console\n$ echo hi\nhi\n```\n")
    kinds = [(b.kind, b.skip, b.expected, b.name) for b in parse(page)]
    assert kinds == [("python", None, ["1"], ""), ("bash", "slow", [], ""), ("file", None, [], "a.py"),
                     ("console", None, [], "")]


def test_every_block_is_run_or_marked():
    """A shell block that is not run says why; the docs keep few such blocks."""
    unmarked = [b.id for blocks in BLOCKS.values() for b in blocks if b.kind == "bash" and not b.skip]
    assert not unmarked, f"```bash blocks without <!-- skip-test: why -->: {unmarked}"
    skipped = [b for b in RUNNABLE if b.skip]
    assert len(skipped) <= 0.2 * len(RUNNABLE), [b.id for b in skipped]
    assert len(RUNNABLE) >= 40


_FOLDERS: dict[Path, tuple[Path, int]] = {}  # page -> (its folder, how many of its blocks have run)
_BINS: dict[Path, Path] = {}  # page -> the folder of its `excite` / `python` shims (outside the page's folder)


def _folder(page: Path, tmp_path_factory) -> Path:
    if page not in _FOLDERS:
        d = tmp_path_factory.mktemp(page.stem.lower())
        bindir = tmp_path_factory.mktemp(page.stem.lower() + "-bin")
        for name, argv in (("excite", f"{sys.executable} -m excite"), ("python", sys.executable),
                           ("python3", sys.executable)):
            (bindir / name).write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
            (bindir / name).chmod(0o755)
        for b in BLOCKS[page]:
            if b.kind == "file":
                (d / b.name).write_text(b.body.split("\n", 1)[1])
        _FOLDERS[page] = (d, 0)
        _BINS[page] = bindir
    return _FOLDERS[page][0]


def _run(block: Block, folder: Path) -> None:
    env = dict(os.environ, PATH=f"{_BINS[block.page]}:{os.environ['PATH']}", COLUMNS="200",
               PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    if block.kind == "python":
        r = subprocess.run([sys.executable, "-"], input=block.body, cwd=folder, env=env, capture_output=True,
                           text=True, timeout=900)
        out = (r.stdout + r.stderr).splitlines()
        assert r.returncode == 0, f"{block.id} exited {r.returncode}\n" + "\n".join(out)
        if block.expected:
            assert matches(block.expected, out), (f"{block.id}\n--- page\n" + "\n".join(block.expected)
                                                  + "\n--- actual\n" + "\n".join(out))
        return
    for cmd, expected in console_commands(block.body):
        r = subprocess.run(cmd, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        out = (r.stdout + r.stderr).splitlines()
        assert matches(expected, out), f"{block.id}\n$ {cmd}\n--- page\n" + "\n".join(expected) + "\n--- actual\n" + "\n".join(out)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block(block, tmp_path_factory):
    if block.skip:
        pytest.skip(f"marked skip-test: {block.skip}")
    folder = _folder(block.page, tmp_path_factory)
    runnable = [b for b in BLOCKS[block.page] if b.kind in ("console", "python") and not b.skip]
    index = runnable.index(block)
    done = _FOLDERS[block.page][1]
    for earlier in runnable[done:index]:  # a worker that starts mid-page replays what came before
        _run(earlier, folder)
    _FOLDERS[block.page] = (folder, index + 1)
    _run(block, folder)


def _generator(name: str):
    """A docs/ generator script as a module (docs/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_parsers():
    """docs/cli.md is exactly what docs/gen_cli.py makes of excite.cli.build_parser(), and names every command."""
    import argparse

    from excite.cli import build_parser

    gen = _generator("gen_cli")
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == gen.render(), "docs/cli.md is out of date: run python docs/gen_cli.py"
    for name, _, sub in gen._subparsers(build_parser()):
        assert f"## `excite {name}`" in page
        for action in sub._actions:
            for flag in [] if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert f"`{flag}`" in page, (name, flag)


def test_result_tables_are_generated_from_the_committed_files():
    """Every table a page includes is what docs/gen_results.py makes of benchmarks/results/ now."""
    gen = _generator("gen_results")
    for name, text in gen.tables().items():
        path = ROOT / "docs" / "_generated" / name
        assert path.exists() and path.read_text() == text, f"{name} is out of date: run python docs/gen_results.py"
        assert "Source: `benchmarks/results/" in text or name == "builtin-studies.md", name
    included = {m for page in PAGES for m in re.findall(r'^--8<-- "([^":]+)"', page.read_text(), flags=re.M)}
    assert included - {"README.md", "CHANGELOG.md"} <= set(gen.tables()), included


def test_no_process_language():
    """The pages speak of the tool, not of how it was made."""
    words = re.compile(r"\bissue \d+|\bsessions?\b|\bhelper\b|\bthe lead\b|\bwas lent\b", re.I)
    for page in [*PAGES, ROOT / "CHANGELOG.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code may say `session = ...`
        assert not words.findall(text), (page.name, words.findall(text))


def test_readme_is_short_and_keeps_the_quick_start():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "python3 -m pip install torch==2.13.0 -e . && python3 -m excite demo" in text
    assert 'python3 -m pip install torch==2.13.0 -e ".[test]" && python3 -m pytest' in text


def test_site_builds_strict(tmp_path):
    """mkdocs build --strict: no broken link, anchor, snippet or API reference (when mkdocs is installed)."""
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "cli" / "index.html").exists()
