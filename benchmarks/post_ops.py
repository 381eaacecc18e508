"""What the inference rewrite's one-pass forms save: a bottleneck's end and a convolution's ReLU, fused and not.

    python benchmarks/post_ops.py                # ResNet-50's bottleneck widths, batch 1 and 16
    python benchmarks/post_ops.py --smoke        # small shapes: checks the script

For each of ResNet-50's four bottleneck widths (conv3, the 1x1 convolution to 256-2048 channels, with a
prepacked weight and a channels-last input) it times, interleaved with the method of
``excite.deploy.timing`` (rounds paired, quartiles):

* a plain block's end: conv3, then the residual addition and the ReLU as two passes (``add_``,
  ``relu_``; what the rewrite did before) against one (``_add_relu_``, :func:`excite.models.rewrite.add_relu_into`);
* an attention block's end: conv3, then ``addcmul`` into its output and ReLU (what the rewrite does)
  against the gate multiply as a oneDNN binary post-op of conv3 followed by the one-pass addition and
  ReLU (the alternative measured and left out);
* conv1 or conv2 with its ReLU: the convolution and ``relu_`` against the ReLU as the convolution's
  post-op (:func:`excite.models.rewrite.conv_relu`).

Prints a table and writes benchmarks/results/post-ops-<date>.json with the machine and torch version.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from excite.deploy.bench import save_results
from excite.deploy.machine import machine_label
from excite.deploy.timing import MIN_REPS, compare, time_rotated
from excite.models.memory import memory_kept

HERE = os.path.dirname(os.path.abspath(__file__))
P = torch.ops.mkldnn
# (stage, conv3 in -> out channels, map size): ResNet-50's bottleneck ends; conv2 is a 3x3 at the in width
WIDTHS = [("layer1", 64, 256, 56), ("layer2", 128, 512, 28), ("layer3", 256, 1024, 14), ("layer4", 512, 2048, 7)]
SMOKE = [("small", 8, 32, 8)]


def _conv(cin: int, cout: int, k: int, shape):
    """A packed convolution call ``f(x, attr="none", gate=None)`` with random weights for inputs of ``shape``."""
    w = (torch.randn(cout, cin, k, k) * 0.05).contiguous(memory_format=torch.channels_last)
    b, pad = torch.randn(cout), [k // 2] * 2
    packed = P._reorder_convolution_weight(w, pad, [1, 1], [1, 1], 1, list(shape))
    args = (pad, [1, 1], [1, 1], 1)

    def call(x, attr="none", gate=None):
        if gate is None:
            return P._convolution_pointwise(x, packed, b, *args, attr, [], "")
        return P._convolution_pointwise.binary(x, gate, packed, b, *args, "mul", None, None, [], "")
    return call


def _variants(cin: int, cout: int, size: int, batch: int) -> dict:
    """``{name: step}`` of one bottleneck width at one batch size (see the module docstring)."""
    cl = torch.channels_last
    h = torch.randn(batch, cin, size, size).contiguous(memory_format=cl)
    identity = torch.randn(batch, cout, size, size).contiguous(memory_format=cl)
    gate = torch.rand(batch, cout)[:, :, None, None]
    conv3, conv2 = _conv(cin, cout, 1, h.shape), _conv(cin, cin, 3, h.shape)
    add_relu = torch.ops.aten._add_relu_
    return {
        "plain end, two passes": lambda: conv3(h).add_(identity).relu_(),
        "plain end, one pass": lambda: add_relu(conv3(h), identity),
        "attention end, addcmul + ReLU": lambda: (lambda y: torch.addcmul(identity, y, gate, out=y).relu_())(conv3(h)),
        "attention end, gate post-op + one pass": lambda: add_relu(conv3(h, gate=gate), identity),
        "conv2 + ReLU, two passes": lambda: conv2(h).relu_(),
        "conv2 + ReLU, post-op": lambda: conv2(h, "relu"),
    }


PAIRS = [("plain end, one pass", "plain end, two passes"),
         ("attention end, gate post-op + one pass", "attention end, addcmul + ReLU"),
         ("conv2 + ReLU, post-op", "conv2 + ReLU, two passes")]


def measure(widths, batches, reps: int) -> list[dict]:
    rows = []
    for stage, cin, cout, size in widths:
        for batch in batches:
            steps = _variants(cin, cout, size, batch)
            with torch.inference_mode(), memory_kept():
                t = time_rotated(steps, reps=reps, warmup=3)
            ratios = [compare(f"{stage} batch {batch}: {a} / {b}", t[a], t[b], 1.0, higher_is_better=False)
                      for a, b in PAIRS]
            rows.append(dict(stage=stage, conv3=f"{cin}->{cout}", size=size, batch=batch, timings=t, ratios=ratios))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="small shapes: checks the script, not the machine")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    widths, batches = (SMOKE, [1, 2]) if a.smoke else (WIDTHS, [1, 16])
    rows = measure(widths, batches, max(a.reps, MIN_REPS))
    print(f"{'stage':<8} {'batch':>5}  {'fused / unfused (round quartiles), verdict':<60}")
    for r in rows:
        for c in r["ratios"]:
            print(f"{r['stage']:<8} {r['batch']:>5}  {c['target'].split(': ', 1)[1]}: {c['ratio']:.3f} "
                  f"({c['ratio_q25']:.3f}-{c['ratio_q75']:.3f}) {c['verdict']}")
    out = save_results(dict(label=machine_label(), smoke=a.smoke, threads=torch.get_num_threads(), reps=a.reps,
                            rows=rows), "post-ops-smoke" if a.smoke else "post-ops", a.out,
                       results_dir=os.path.join(HERE, "results"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
