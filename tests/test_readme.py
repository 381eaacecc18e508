"""The README's console examples are executed and compared with what the commands print, numbers
included, so the README cannot drift from the tool.

In a ```console block, a line starting with ``$ `` is a command (``excite`` runs this checkout's
``python -m excite``; pipes through ``head``/``tail`` work) and the lines after it are its expected
output. ``...`` alone on a line stands for any number of lines; ``...`` inside a line for any text on
that line (timings, throughput). Blocks run in order in one temporary folder, so a later block can
use the files an earlier one wrote (the lifecycle: train -> eval -> profile -> bench -> export).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as ``[(command, expected lines), ...]``."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        cmds: list[tuple[str, list[str]]] = []
        for line in body.rstrip("\n").split("\n"):
            if line.startswith("$ "):
                cmds.append((line[2:], []))
            elif cmds:
                cmds[-1][1].append(line)
        blocks.append(cmds)
    return blocks


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


def test_matcher():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["x ... img/s"], ["x 12 img/s"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a"], ["a", "b"])


BLOCKS = console_blocks(README.read_text())


def test_readme_has_console_examples():
    assert len(BLOCKS) >= 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    bindir = d / "bin"
    bindir.mkdir()
    shim = bindir / "excite"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m excite \"$@\"\n")
    shim.chmod(0o755)
    # Files the README shows (a ```python block whose first line is `# file: NAME`) are written where
    # its commands run, so `excite profile my_net.py:Net` uses the very code the README prints.
    for name, body in re.findall(r"```python\n# file: (\S+)\n(.*?)```", README.read_text(), flags=re.S):
        (d / name).write_text(body)
    return d


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_console_block(index, workdir):
    env = dict(os.environ, PATH=f"{workdir / 'bin'}:{os.environ['PATH']}", COLUMNS="200",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    for cmd, expected in BLOCKS[index]:
        r = subprocess.run(cmd, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        out = (r.stdout + r.stderr).splitlines()
        assert matches(expected, out), f"$ {cmd}\n--- README\n" + "\n".join(expected) + "\n--- actual\n" + "\n".join(out)
