"""The demo study: CIFAR-style ResNet-20 without attention and with SE, ECA and CBAM on the embedded
digits data, several seeds each; params, MACs, training img/s and test top-1 as mean +- std.

Sized for about 10 minutes on 2 CPU cores (``DEMO_EPOCHS`` x 12 runs); ``epochs`` makes it shorter.
"""

from __future__ import annotations

import csv
import platform
import statistics
import time
from pathlib import Path

import torch

from ..errors import ExciteError

DEMO_ATTENTIONS = ("none", "se", "eca", "cbam")
DEMO_SEEDS = (0, 1, 2)
# 12 runs of 1,347 training images; ~8 s an epoch-run on this 2-core machine, so ~10 min in all
# (4 epochs took 6 min 48 s and left the attention models short of the plain one: too few steps).
DEMO_EPOCHS = 6
# A quarter-epoch warmup: the recipe's full epoch would spend a short run's budget warming up.
DEMO_WARMUP_EPOCHS = 0.25


def _complexity(attention: str) -> tuple[int, int | None]:
    """Parameters and MACs (3x32x32 input) of ResNet-20 with ``attention``; MACs None without a profiler."""
    from ..factory import create_model

    model = create_model("resnet20", attention=attention, num_classes=10)
    params = sum(p.numel() for p in model.parameters())
    try:
        from .. import profile  # the project's MAC counter (optional here: the demo runs without it)

        return params, int(profile(model, input_size=(3, 32, 32)).macs)
    except (ImportError, AttributeError):
        return params, None


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def demo(out: str | Path = "excite-demo", *, epochs: int = DEMO_EPOCHS, seeds=DEMO_SEEDS,
         attentions=DEMO_ATTENTIONS, batch_size: int = 64, progress: bool = True, echo=print) -> list[dict]:
    """Run the study, write ``runs.csv``, ``summary.csv`` and ``summary.png`` to ``out``; return the summary rows."""
    from ..errors import check_range
    from .engine import make_config, train

    out = Path(out)
    check_range("epochs", epochs, low=1, high=10_000, integer=True)
    if not seeds:
        raise ExciteError("seeds: expected at least one seed")
    if out.exists() and not out.is_dir():
        raise ExciteError(f"output folder {out} is not writable: it exists and is a file")
    runs, summary = [], []
    t_start = time.perf_counter()
    echo(f"excite demo: resnet20 x {{{', '.join(attentions)}}} on digits, {len(seeds)} seeds, {epochs} epochs, "
         f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for att in attentions:
        params, macs = _complexity(att)
        tops, speeds = [], []
        for seed in seeds:
            cfg = make_config({"model": "resnet20", "attention": att, "dataset": "digits", "epochs": epochs,
                               "seed": seed, "batch_size": batch_size, "progress": progress,
                               "warmup_epochs": DEMO_WARMUP_EPOCHS}, recipe="digits-short")
            r = train(cfg)
            tops.append(r["top1"])
            speeds.append(r["img_per_s"])
            runs.append({"attention": att, "seed": seed, "epochs": epochs, "top1": r["top1"], "top5": r["top5"],
                         "img_per_s": r["img_per_s"]})
            echo(f"  {att:<5} seed {seed}: top-1 {r['top1']:.2f}%  {r['img_per_s']:.0f} img/s")
        m, s = _mean_std(tops)
        sm, ss = _mean_std(speeds)
        summary.append({"attention": att, "params": params, "macs": macs, "runs": len(seeds), "top1_mean": m,
                        "top1_std": s, "img_per_s_mean": sm, "img_per_s_std": ss})
    wall = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)  # only now: a demo that fails leaves no folder behind
    _write_csv(out / "runs.csv", runs)
    _write_csv(out / "summary.csv", summary)
    _plot(out / "summary.png", summary, epochs, len(seeds))
    echo("")
    echo(f"{'attention':<10} {'params':>9} {'MACs':>12} {'train img/s':>13} {'top-1 (%)':>15}")
    for r in summary:
        macs = f"{r['macs']:,}" if r["macs"] is not None else "n/a"
        echo(f"{r['attention']:<10} {r['params']:>9,} {macs:>12} {r['img_per_s_mean']:>7.0f} +- {r['img_per_s_std']:<3.0f}"
             f" {r['top1_mean']:>6.2f} +- {r['top1_std']:.2f}")
    echo(f"\n{len(runs)} runs in {wall:.0f} s; results in {out}/ (runs.csv, summary.csv, summary.png)")
    return summary


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise ExciteError("demo produced no runs")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, summary: list[dict], epochs: int, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    names = [r["attention"] for r in summary]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.bar(names, [r["top1_mean"] for r in summary], yerr=[r["top1_std"] for r in summary], capsize=4, color="#4c72b0")
    lo = min(r["top1_mean"] - r["top1_std"] for r in summary)
    a1.set_ylim(max(0, lo - 5), 100)
    a1.set_ylabel("test top-1 (%)")
    a1.set_title(f"ResNet-20 on digits, {epochs} epochs, mean +- std of {n}")
    a2.bar(names, [r["img_per_s_mean"] for r in summary], yerr=[r["img_per_s_std"] for r in summary], capsize=4, color="#dd8452")
    a2.set_ylabel("training img/s")
    a2.set_title(f"CPU, torch {torch.__version__}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
