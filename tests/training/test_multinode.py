"""Training across nodes: ``excite train --nnodes 2`` as two "nodes" (two launchers) on the loopback
address gives the weights one process gives with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import excite

SRC = str(Path(excite.__file__).resolve().parents[1])
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}

# No BatchNorm: per-process batch statistics would differ from those of one global batch.
NET = """
import torch
from torch import nn

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(64, num_classes))
"""
# 2 steps of a global batch of 64 (each of two processes computes 32 of it).
TRAIN = ["train", "--model", "net.py:tiny", "--dataset", "digits", "--subset", "128", "--epochs", "1",
         "--batch-size", "64", "--label-smoothing", "0", "--threads", "1", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _excite(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "excite", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _weights(out: Path) -> dict:
    return load_file(str(out / "best.safetensors"))  # the final weights (one epoch: best is last)


def test_two_nodes_on_loopback_match_one_process(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_excite([*TRAIN, "--out", "two", "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(r),
                      "--rdzv-endpoint", endpoint], tmp_path) for r in (0, 1)]
    single = _excite([*TRAIN, "--out", "one"], tmp_path)
    try:
        outs = [p.communicate(timeout=300) for p in (*nodes, single)]
    finally:
        for p in (*nodes, single):
            p.kill()
    for p, (out, err) in zip((*nodes, single), outs):
        assert p.returncode == 0, err[-3000:]
    # Global rank 0 (node 0) prints and writes; node 1 trains its half of every batch silently.
    assert outs[0][0].count("top-1") == 1 and "top-1" not in outs[1][0]
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert two.keys() == one.keys()
    for k in one:  # the mean of two half-batch gradients equals the full batch's, up to float rounding
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)


def test_launch_flags_bad_input_is_one_line(tmp_path):
    cases = [(["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
             (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"], "--node-rank"),
             (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "node0"], "is not HOST:PORT"),
             (["--nproc-per-node", "0"], "--nproc-per-node")]
    for flags, match in cases:
        p = subprocess.run([sys.executable, "-m", "excite", "train", "--model", "resnet20", "--out", "o", *flags],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
        err = p.stderr
        assert p.returncode == 2 and err.startswith("excite: error: ") and len(err.splitlines()) == 1, err
        assert match in err, err
        assert not (tmp_path / "o").exists()
