"""When prepacked convolution weights pay: one convolution, plain ``nn.Conv2d`` against the packed call.

    python benchmarks/prepack_threshold.py

For the convolutions that decide the rule in :mod:`excite.models.prepack` (SE and CBAM gate
convolutions, ResNet-20 and ResNet-50 layers, batch 1 and larger), both calls in inference mode on
channels-last inputs, interleaved, with the method of ``excite.deploy.timing``; the packed call is
forced (the size rule bypassed) so that both are measured everywhere. Prints a table and writes
benchmarks/results/prepack-threshold-<date>.json with the machine and torch version.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

from excite.deploy.bench import save_results
from excite.deploy.machine import machine_label
from excite.deploy.timing import MIN_REPS, time_rotated
from excite.models.prepack import PrepackedConv2d, _MIN_WEIGHT_BYTES

HERE = os.path.dirname(os.path.abspath(__file__))
# (label, in, out, kernel, stride, input shape)
CASES = [("SE fc1, ResNet-50 layer1, batch 1", 256, 16, 1, 1, (1, 256, 1, 1)),
         ("SE fc1, ResNet-50 layer4, batch 16", 2048, 128, 1, 1, (16, 2048, 1, 1)),
         ("CBAM spatial 7x7, 56px, batch 1", 2, 1, 7, 1, (1, 2, 56, 56)),
         ("CBAM spatial 7x7, 56px, batch 16", 2, 1, 7, 1, (16, 2, 56, 56)),
         ("ResNet-20 16 channels, 32px, batch 1", 16, 16, 3, 1, (1, 16, 32, 32)),
         ("ResNet-20 16 channels, 32px, batch 128", 16, 16, 3, 1, (128, 16, 32, 32)),
         ("ResNet-20 64 channels, 8px, batch 1", 64, 64, 3, 1, (1, 64, 8, 8)),
         ("ResNet-50 layer1 1x1 64->256, batch 1", 64, 256, 1, 1, (1, 64, 56, 56)),
         ("ResNet-50 layer1 3x3 64, batch 1", 64, 64, 3, 1, (1, 64, 56, 56)),
         ("ResNet-50 layer2 1x1 512->128, batch 1", 512, 128, 1, 1, (1, 512, 28, 28)),
         ("ResNet-50 layer2 3x3 128, batch 1", 128, 128, 3, 1, (1, 128, 28, 28)),
         ("ResNet-50 layer2 3x3 128, batch 16", 128, 128, 3, 1, (16, 128, 28, 28)),
         ("ResNet-50 layer3 1x1 256->1024, batch 1", 256, 1024, 1, 1, (1, 256, 14, 14)),
         ("ResNet-50 layer3 1x1 256->1024, batch 16", 256, 1024, 1, 1, (16, 256, 14, 14)),
         ("ResNet-50 layer4 3x3 512, batch 1", 512, 512, 3, 1, (1, 512, 7, 7)),
         ("ResNet-50 layer4 1x1 512->2048, batch 1", 512, 2048, 1, 1, (1, 512, 7, 7))]


class _Forced(PrepackedConv2d):
    def _worth_it(self, shape) -> bool:
        return True


def measure(reps: int) -> list[dict]:
    rows = []
    for label, cin, cout, k, s, shape in CASES:
        plain = nn.Conv2d(cin, cout, k, s, padding=k // 2).eval().to(memory_format=torch.channels_last)
        packed = _Forced(cin, cout, k, s, padding=k // 2).eval()
        packed.load_state_dict(plain.state_dict())
        packed = packed.to(memory_format=torch.channels_last)
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = time_rotated({"plain": lambda: plain(x), "packed": lambda: packed(x)}, reps=reps, warmup=3)
        rule = PrepackedConv2d._worth_it(packed, shape)
        rows.append(dict(case=label, weight_bytes=plain.weight.numel() * 4, plain=t["plain"], packed=t["packed"],
                         ratio=t["packed"]["median_s"] / t["plain"]["median_s"], rule_packs=rule))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = measure(max(a.reps, MIN_REPS))
    print(f"{'case':<42} {'plain us':>9} {'packed us':>10} {'packed/plain':>13} {'rule':>7}")
    for r in rows:
        print(f"{r['case']:<42} {1e6 * r['plain']['median_s']:>9.1f} {1e6 * r['packed']['median_s']:>10.1f} "
              f"{r['ratio']:>13.2f} {'packed' if r['rule_packs'] else 'plain':>7}")
    out = save_results(dict(label=machine_label(), threads=torch.get_num_threads(), rows=rows,
                            rule=dict(min_weight_bytes=_MIN_WEIGHT_BYTES)),
                       "prepack-threshold", a.out, results_dir=os.path.join(HERE, "results"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
