"""Every leaf command as a user runs it: ``python -m excite ...`` in a fresh process, in an empty folder,
with nothing imported beforehand; the happy path and one bad input each.

In-process tests share state (anything an earlier test imported or registered); these do not, so a
command that works only after something else was imported fails here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from excite.cli import build_parser

REF = Path(__file__).parents[1] / "reference" / "checkpoints"
TIMEOUT = 240  # seconds per command; a loaded 2-core machine takes ~5 s to import torch


def excite(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "EXCITE_HOME": str(cwd / ".excite-home"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "excite", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env=full_env)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    return r.stdout


def refused(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one line on stderr that names the problem, no traceback."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-1000:]}\nstderr: {r.stderr[-2000:]}"
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def empty(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model file written by ``excite train`` (one epoch cut to two steps) in its own fresh process."""
    cwd = empty(tmp_path_factory, "train")
    out = ok(excite(["train", "--model", "resnet20", "--attention", "eca", "--epochs", "1", "--subset", "64",
                     "--batch-size", "32", "--out", "run", "--no-progress"], cwd))
    assert "-> run" in out
    return cwd / "run" / "best.safetensors"


STUDY = """name = "tiny"
models = ["resnet20"]
seeds = [0]
dataset = "digits"

[recipe]
epochs = 1
batch_size = 64
subset = 64

[[variant]]
label = "plain"
attention = "none"

[[variant]]
label = "SE"
attention = "se"
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    cwd = empty(tmp_path_factory, "study")
    (cwd / "tiny.toml").write_text(STUDY)
    out = ok(excite(["study", "run", "tiny.toml", "--out", "st"], cwd))
    assert "2" in out
    return cwd / "st"


def leaf_commands() -> set[str]:
    import argparse

    found = set()

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.add(" ".join(prefix))
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, prefix + [name])

    walk(build_parser(), [])
    return found


# Every leaf command names the tests below that run it; a new command fails here until it has one.
TESTED = {"list", "study run", "study report", "inspect", "bench", "export onnx", "export openvino", "train", "eval",
          "demo", "convert", "attach", "profile", "explain", "paper-table", "weights list", "weights download",
          "scale"}


def test_every_leaf_command_has_a_fresh_process_test():
    assert leaf_commands() == TESTED


def test_list(tmp_path):
    assert "resnet20" in ok(excite(["list", "models"], tmp_path))
    assert "eca" in ok(excite(["list", "attention"], tmp_path))
    r = excite(["list", "model"], tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_train_refuses_bad_epochs_before_writing(tmp_path):
    refused(excite(["train", "--epochs", "0", "--out", "run"], tmp_path), "epochs")
    assert not (tmp_path / "run").exists()


def test_train_compile_runs_the_compiled_step_and_counts_its_compile_apart(tmp_path):
    out = ok(excite(["train", "--model", "resnet20", "--attention", "eca", "--epochs", "1", "--subset", "64",
                     "--batch-size", "16", "--compile", "--out", "run", "--no-progress"], tmp_path))
    assert "-> run" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["compile_seconds"] > 0 and metrics["img_per_s"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True


def test_train_compile_without_a_compiler_is_refused_before_writing(tmp_path):
    no_compiler = {"PATH": str(tmp_path / "no-bin"), "CXX": ""}
    refused(excite(["train", "--compile", "--epochs", "1", "--out", "run"], tmp_path, env=no_compiler), "C++ compiler")
    assert not (tmp_path / "run").exists()


def test_eval(trained, tmp_path):
    assert "top-1" in ok(excite(["eval", str(trained)], tmp_path))
    refused(excite(["eval", "missing.safetensors"], tmp_path), "missing.safetensors")


def test_convert_real_cifar_checkpoint_then_eval(tmp_path):
    out = ok(excite(["convert", str(REF / "resnet20-12fca82f.th"), "r20.safetensors", "--model", "resnet20"], tmp_path))
    assert "loaded 97 tensors" in out and (tmp_path / "r20.safetensors").is_file()
    assert "top-1" in ok(excite(["eval", "r20.safetensors"], tmp_path))
    refused(excite(["convert", str(REF / "resnet20-12fca82f.th"), "x.safetensors", "--model", "resnet21"], tmp_path),
            "resnet21")
    assert not (tmp_path / "x.safetensors").exists()


def test_profile(trained, tmp_path):
    assert "params 269,749" in ok(excite(["profile", str(trained), "--depth", "0"], tmp_path))
    refused(excite(["profile", "resnet2O"], tmp_path), "resnet2O")


def test_explain(tmp_path):
    assert "conv" in ok(excite(["explain", "resnet20", "--attention", "se"], tmp_path)).lower()
    refused(excite(["explain", "resnet20", "--attention", "sse"], tmp_path), "sse")


def test_paper_table(tmp_path):
    assert "resnet20" in ok(excite(["paper-table", "resnet-cifar"], tmp_path))
    refused(excite(["paper-table", "resnett"], tmp_path), "resnett")


def test_bench(tmp_path):
    out = ok(excite(["bench", "resnet20", "--batch-size", "1", "--runs", "3", "--warmup", "1", "--threads", "1"],
                    tmp_path))
    assert "resnet20" in out
    refused(excite(["bench", "resnet20x"], tmp_path), "resnet20x")


def test_export_onnx(trained, tmp_path):
    out = ok(excite(["export", "onnx", str(trained), "m.onnx", "--batch-size", "2"], tmp_path))
    assert "wrote m.onnx" in out and (tmp_path / "m.onnx").is_file()
    refused(excite(["export", "onnx", str(trained), "m.txt"], tmp_path))
    assert not (tmp_path / "m.txt").exists()


def test_export_openvino(trained, tmp_path):
    r = excite(["export", "openvino", str(trained), "ov/m.xml"], tmp_path)
    try:
        import openvino  # noqa: F401  optional package
    except ImportError:
        refused(r, "openvino")  # not installed: one line that says so and how to install it
    else:
        ok(r)
    refused(excite(["export", "openvino", str(trained), "m.onnx"], tmp_path), ".xml")


def test_attach(tmp_path):
    out = ok(excite(["attach", "resnet20", "se", "--out", "a.safetensors"], tmp_path))
    assert "se" in out and (tmp_path / "a.safetensors").is_file()
    assert "top-1" in ok(excite(["eval", "a.safetensors"], tmp_path))
    refused(excite(["attach", "resnet20", "sex"], tmp_path), "sex")


def test_inspect(trained, tmp_path):
    ok(excite(["inspect", str(trained), "--limit", "40", "--out", "page"], tmp_path))
    assert any((tmp_path / "page").iterdir())
    refused(excite(["inspect", "nothing.safetensors"], tmp_path), "nothing.safetensors")


def test_study_run_and_report(study_dir, tmp_path):
    ok(excite(["study", "report", str(study_dir), "--out", "rep", "--no-profile"], tmp_path))
    assert (tmp_path / "rep").is_dir()
    refused(excite(["study", "report", "no-such-study"], tmp_path), "no-such-study")
    refused(excite(["study", "run", "no-such.toml"], tmp_path), "no-such")


def test_weights(tmp_path):
    assert "resnet50" in ok(excite(["weights", "list"], tmp_path))
    # No network here: the download fails in one line that says why, and leaves no partial file.
    line = refused(excite(["weights", "download", "resnet50"], tmp_path), "download")
    assert "resnet50" in line
    assert not list((tmp_path / ".excite-home").rglob("*.pth"))


def test_scale(tmp_path):
    assert "efficientnet_b0" in ok(excite(["scale", "efficientnet_b0", "--phi", "1"], tmp_path))
    refused(excite(["scale", "resnet50"], tmp_path), "resnet50")


def test_demo(tmp_path):
    out = ok(excite(["demo", "--quick", "--epochs", "1", "--out", "d", "--no-progress"], tmp_path))
    assert "cbam" in out and (tmp_path / "d" / "summary.png").is_file()
    with open(tmp_path / "d" / "summary.csv") as f:
        rows = {r["attention"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["none", "se", "eca", "cbam"] and rows["none"]["runs"] == "1"
    assert float(rows["none"]["top1_mean"]) > 50  # one epoch on the whole digits split is far above chance (10%)
    r = excite(["demo", "--epochs", "0", "--out", "d0"], tmp_path)
    assert r.returncode == 2 and "epochs" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d0").exists()
