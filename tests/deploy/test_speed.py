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
    for label in ("pytorch eager", "excite optimized", "excite optimized, jit",
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
from excite.models.memory import freed_memory_kept, keep_freed_memory, memory_kept

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


_MODEL_FAULTS = """
import resource, sys, torch
from torch import nn
from excite import optimize_for_inference
from excite.models.memory import freed_memory_kept

torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 8, 1))
x = torch.randn(1, 3, 384, 384)  # 64 x 384 x 384 floats: 37.7 MB, above glibc's largest mmap threshold
for keep in (False, True):  # the plain one first: a kept call leaves its freed memory in the process
    opt = optimize_for_inference(net, keep_memory=keep, channels_last=False)
    with torch.no_grad():
        for _ in range(3):
            opt(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            opt(x)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3, freed_memory_kept())
"""


def test_optimized_model_reuses_freed_memory_within_a_call(tmp_path):
    """By default an optimized model's call reuses the memory its earlier activations freed instead of
    faulting in every large activation anew (in a fresh process); glibc maps large blocks again after it."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _MODEL_FAULTS], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    (plain, after_plain), (kept, after_kept) = (line.split() for line in r.stdout.splitlines())
    assert float(plain) > 2 * 9_000  # two 37.7 MB activations of 9,216 pages each, faulted in every call
    assert float(kept) < 0.2 * float(plain)
    assert after_kept == after_plain == "False"


def test_memory_kept_during_calls_is_counted_and_restored():
    """Nested and failing calls, and a process-wide setting made during a call, leave the right state."""
    from excite.models.memory import freed_memory_kept, keep_freed_memory, memory_kept

    seen = []
    model = optimize_for_inference(excite.create_model("resnet20", num_classes=10))
    assert model.excite_memory_kept
    model.conv1.register_forward_hook(lambda m, a, o: seen.append(freed_memory_kept()))
    x = torch.randn(1, 3, 8, 8)
    assert not freed_memory_kept()
    with memory_kept():
        model(x)  # nested inside another scope: still kept after the model's call ends
        assert freed_memory_kept()
    assert seen == [True] and not freed_memory_kept()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 5, 8, 8))  # wrong channel count: the release still runs
    assert not freed_memory_kept()
    model.conv1.register_forward_hook(lambda m, a, o: keep_freed_memory(True) and None)
    try:
        model(x)
        assert freed_memory_kept()  # asked for the whole process: a call's end does not undo it
    finally:
        assert keep_freed_memory(False) and not freed_memory_kept()
    bare = optimize_for_inference(excite.create_model("resnet20", num_classes=10), keep_memory=False)
    assert not getattr(bare, "excite_memory_kept", False) and not bare._forward_pre_hooks
