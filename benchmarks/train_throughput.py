"""Training throughput (img/s) per model x attention: the ECA paper's training-FPS column, and the fused gate's effect.

    python benchmarks/train_throughput.py                    # resnet20 and resnet56 at batch 32 and 128
    python benchmarks/train_throughput.py --models resnet20 --batch-sizes 32 --reps 9

One full SGD step (forward, loss, backward, update) per timed call on a 32x32 batch. Variants of one
model and batch: no attention, SE, ECA and CBAM as built (their pools and rescales through
``excite.attention.fused``, whose backward passes read each tensor once), the same models with
PyTorch's own operators and backward formulas ("plain ops", inside
``excite.attention.fused.plain_operators()``: what the functions save), and the plain and ECA models
in channels-last; with ``--compile`` also every model's step through ``torch.compile`` (what ``excite
train --compile`` runs), its compile paid and recorded before the timing. Method (``excite.deploy.timing``):
the same warm-up for every variant, >= 9 repetitions in rotated order, medians and quartiles, and a
target "not measured: too noisy" when a timing's IQR exceeds 10% of its median. Writes
benchmarks/results/train-throughput-<date>.json with the machine and torch version.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import excite
from excite.attention.fused import plain_operators
from excite.deploy.bench import _step_fn, save_results
from excite.deploy.machine import machine_label
from excite.deploy.timing import MIN_REPS, compare, time_rotated

GOALS = {"se": 1.05, "eca": 1.05, "cbam": 1.25}  # step time over the plain model's


def _model(name: str, attention: str, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)  # every model seeded alike
    m = excite.create_model(name, attention=None if attention == "none" else attention, num_classes=10)
    if channels_last:
        m.to(memory_format=torch.channels_last)
    return m


def _with_plain_operators(step):
    def run():
        with plain_operators():
            step()
    return run


def _compiled(step) -> tuple:
    """A compiled step and the seconds its first call (the compile) took: paid before the timing."""
    t = time.perf_counter()
    step()
    return step, time.perf_counter() - t


def _steps(name: str, attentions: list[str], x: torch.Tensor, channels_last: bool, compiled: bool) -> tuple[dict, dict]:
    """``label -> step`` for every variant, and ``label -> compile seconds`` for the compiled ones."""
    steps, build = {}, {}
    if compiled:  # this batch's models only: earlier ones would fill dynamo's recompile limit (8 per function)
        torch._dynamo.reset()
    for a in attentions:
        steps[a] = _step_fn(_model(name, a), x, "train", "fp32")
        if a != "none":
            steps[f"{a} plain ops"] = _with_plain_operators(_step_fn(_model(name, a), x, "train", "fp32"))
        if compiled:
            step = _step_fn(_model(name, a), x, "train", "fp32", compile=True)
            steps[f"{a} compiled"], build[f"{a} compiled"] = _compiled(step)
        if channels_last and a in ("none", "eca"):
            xc = x.to(memory_format=torch.channels_last)
            steps[f"{a} channels-last"] = _step_fn(_model(name, a, channels_last=True), xc, "train", "fp32")
    return steps, build


def measure(name: str, batch: int, size: int, attentions: list[str], reps: int, channels_last: bool,
            compiled: bool = False) -> dict:
    """Timings and targets of one model at one batch size."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    steps, build = _steps(name, attentions, x, channels_last, compiled)
    t = time_rotated(steps, reps=reps, warmup=2)
    for k, r in t.items():
        r["img_per_s"] = batch / r["median_s"]
        if k in build:
            r["compile_s"] = build[k]
    targets = []
    for a, goal in GOALS.items():
        if a in t:
            targets.append(compare(f"{name} train step {a} / none, batch {batch}", t[a], t["none"], goal,
                                   higher_is_better=False))
        if f"{a} plain ops" in t:
            targets.append(compare(f"{name} train step {a} / {a} with plain ops, batch {batch} (the fused functions' effect)",
                                   t[a], t[f"{a} plain ops"], 1.0, higher_is_better=False))
        if f"{a} compiled" in t:
            targets.append(compare(f"{name} train step {a} / none, both compiled, batch {batch}", t[f"{a} compiled"],
                                   t["none compiled"], goal, higher_is_better=False))
    if "eca channels-last" in t:
        targets.append(compare(f"{name} train step eca / none, both channels-last, batch {batch}",
                               t["eca channels-last"], t["none channels-last"], GOALS["eca"], higher_is_better=False))
    return dict(model=name, batch=batch, input_size=size, timings=t, targets=targets)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--attention", nargs="+", default=["none", "se", "eca", "cbam"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=MIN_REPS, help=f"timed rounds (at least {MIN_REPS})")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="also every model's step through torch.compile (--compile of "
                   "excite train; 20-40 s of compile per model, paid before the timing)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: excite's default, the free cores)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    from excite.deploy.threads import auto_threads

    torch.set_num_threads(a.threads or auto_threads())
    attns = ["none"] + [x for x in a.attention if x != "none"]
    res = dict(reps=max(a.reps, MIN_REPS), threads=torch.get_num_threads(), input_size=a.input_size,
               loadavg=[os.getloadavg()], results=[], targets=[],
               label=machine_label())
    rdir = Path(__file__).parent / "results"
    for name in a.models:
        for b in a.batch_sizes:
            r = measure(name, b, a.input_size, attns, res["reps"], not a.no_channels_last, a.compile)
            res["results"].append(r)
            res["targets"] += r["targets"]
            res["loadavg"].append(os.getloadavg())
            out = save_results(res, "train-throughput", a.out, results_dir=rdir)
            for label, t in r["timings"].items():
                print(f"{name} b{b} {label:<24} {t['img_per_s']:9.1f} img/s  IQR/median {100 * t['iqr_rel']:5.1f}%")
    for t in res["targets"]:
        print(f"{t['verdict']:>28}  {t['target']}: {t['ratio']} (goal {t['goal']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
