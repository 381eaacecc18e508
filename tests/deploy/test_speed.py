"""Compiled inference paths keep outputs; `excite bench --runtimes` names the fastest runtime; `export`
points there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import excite
from excite.models.compiled import CompiledInference
from excite.models.optimize import optimize_for_inference

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "excite", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_jit_compiled_path_keeps_outputs():
    torch.manual_seed(0)
    m = excite.create_model("resnet20", attention="eca", num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    c = optimize_for_inference(m, compile="jit", example_input=x)
    assert isinstance(c, CompiledInference) and c.excite_compiled == "jit" and c.excite_fused_attention == 9
    with torch.no_grad():
        ref = m(x)
    for xi in (x, torch.randn(3, 3, 16, 16)):  # a new batch size reuses the traced graph
        with torch.no_grad():
            ref = m(xi)
        torch.testing.assert_close(c(xi), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(excite.ExciteError, match="compile='tvm' is invalid"):
        optimize_for_inference(m, compile="tvm")


def test_cli_bench_runtimes_names_the_fastest(tmp_path):
    r = _cli(["bench", "resnet20", "--runtimes", "--input-size", "16", "--batch-size", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    for label in ("pytorch eager", "excite optimized", "excite optimized, memory kept", "excite optimized, jit",
                  "onnxruntime fp32"):
        assert label in r.stdout
    assert "fastest: " in r.stdout and "rotated rounds" in r.stdout
    assert os.listdir(tmp_path) == []  # the ONNX file lived in a temporary folder
    bad = _cli(["bench", "resnet20", "--runtimes", "--runs", "3"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "excite: error: --runtimes needs --runs >= 9 (got 3): fewer rounds cannot tell noise apart")


def test_cli_export_points_to_the_runtime_comparison(tmp_path):
    r = _cli(["export", "onnx", "resnet20", "m.onnx", "--input-size", "16"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "excite bench resnet20 --runtimes --batch-size 1" in r.stdout


_FAULTS = """
import resource, sys, torch
from excite.deploy.memory import freed_memory_kept, keep_freed_memory, memory_kept

def faults_per_alloc():
    for _ in range(10):
        torch.ones(16 << 20)  # the first few grow the heap (small objects land between them at first)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)  # 64 MB, above glibc's largest mmap threshold; freed at once
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

assert not freed_memory_kept()
default = faults_per_alloc()
with memory_kept():
    assert freed_memory_kept()
    kept = faults_per_alloc()
assert not freed_memory_kept()
print(default, kept, keep_freed_memory(False))
"""


def test_keep_freed_memory_stops_page_faults_of_large_tensors(tmp_path):
    """With glibc's defaults a 64 MB tensor is mapped anew and faulted in on every allocation; with
    freed memory kept, later allocations reuse the heap and fault nothing in (in a fresh process)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _FAULTS], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    default, kept, applied = r.stdout.split()
    assert float(default) > 10_000  # 16,384 pages of 4 KiB, each faulted in
    assert float(kept) < 100
    assert applied == "True"  # glibc here: the setting takes effect
