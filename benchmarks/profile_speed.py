"""Time to profile a model (meta tensors, no arithmetic) against one real forward pass of it.

    python benchmarks/profile_speed.py                      # the default set of models
    python benchmarks/profile_speed.py --models resnet152 efficientnet_b7 --repeats 5

For each model at its own resolution, batch 1: the median over ``--repeats`` of ``excite.profile``
(the model built on the CPU, weights left where they are) and of one eager ``model(x)`` in
inference mode on this CPU. Prints a table and writes benchmarks/results/profile-speed-<date>.json
with the machine and torch version.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import excite
from excite.deploy.bench import save_results

DEFAULT = ["resnet18", "resnet50", "resnet152", "resnext50_32x4d", "resnet56", "mobilenet_v2",
           "efficientnet_b0", "efficientnet_b4", "efficientnet_b7"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, attention: str | None, repeats: int) -> dict:
    model = excite.create_model(name, attention=attention).eval()
    size = tuple(model.default_input_size)
    x = torch.randn(1, *size)
    excite.profile(model, size)  # warm-up: first-call dispatch caches
    t_profile = _median_time(lambda: excite.profile(model, size), repeats)
    with torch.inference_mode():
        model(x)
        t_forward = _median_time(lambda: model(x), repeats)
    return dict(model=name, attention=attention or "default", input=list(size), profile_s=round(t_profile, 4),
                forward_s=round(t_forward, 4), profile_over_forward=round(t_profile / t_forward, 3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = []
    print(f"{'model':<18} {'input':>11} {'profile s':>10} {'forward s':>10} {'ratio':>7}")
    for name in a.models:
        r = measure(name, a.attention, a.repeats)
        rows.append(r)
        print(f"{r['model']:<18} {'x'.join(map(str, r['input'])):>11} {r['profile_s']:>10.3f} {r['forward_s']:>10.3f} "
              f"{r['profile_over_forward']:>7.2f}")
    out = save_results(dict(repeats=a.repeats, rows=rows), "profile-speed", a.out,
                       results_dir=Path(__file__).parent / "results")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
