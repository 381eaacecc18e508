"""The demo study: CIFAR-style ResNet-20 without attention and with SE, ECA and CBAM on the embedded
digits data, several seeds each; params, MACs, training img/s and test top-1 with the paired
comparison against the plain network, and whether each difference was separated.

The full digits training split is too easy to show anything (the plain ResNet-20 reaches 99.5%, so
every module reads "no difference"). The demo therefore trains on a harder setting: a third of the
training split (``DEMO_TRAIN_IMAGES`` = 450 evenly spaced images, 38-51 per class), tested on all 450
test images, 5 seeds.
Sized for about 10 minutes on 2 CPU cores; ``quick`` is a 1-seed smoke test on the whole split.
"""

from __future__ import annotations

import csv
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from excite.core.errors import ExciteError, check_range
from excite.data import load_digits, register_dataset, registered_datasets
from excite.factory import create_model
from excite.files.folderlock import check_writable_folder
from excite.profiling.accounting import profile
from excite.study.report import verdict
from excite.study.stats import detectable_difference, paired_difference_sd, paired_ttest, summarize
from excite.training.engine import make_config, subset, train

DEMO_ATTENTIONS = ("none", "se", "eca", "cbam")
DEMO_SEEDS = (0, 1, 2, 3, 4)
# 20 runs x 10 epochs x 450 images (+ 450 test images an epoch): about the images the earlier demo
# (12 runs x 6 epochs x 1,347 images) trained in ~10 min on this 2-core machine.
DEMO_EPOCHS = 10
DEMO_TRAIN_IMAGES = 450
DEMO_BATCH_SIZE = 32  # 14 steps an epoch on 450 images, 140 in a run
# --quick: one seed, the whole training split (1,347 images), 3 epochs: ~96% for the plain network.
DEMO_QUICK_EPOCHS = 3


def _complexity(attention: str) -> tuple[int, int]:
    """Parameters and MACs (3x32x32 input) of ResNet-20 with ``attention``."""

    model = create_model("resnet20", attention=attention, num_classes=10)
    return sum(p.numel() for p in model.parameters()), int(profile(model, input_size=(3, 32, 32)).macs)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def demo(out: str | Path = "excite-demo", *, epochs: int | None = None, seeds=None, attentions=DEMO_ATTENTIONS,
         batch_size: int = DEMO_BATCH_SIZE, train_images: int | None = DEMO_TRAIN_IMAGES, quick: bool = False,
         device: str = "cpu", progress: bool = True, echo=print) -> list[dict]:
    """Run the study, write ``runs.csv``, ``summary.csv`` and ``summary.png`` to ``out``; return the summary rows.

    ``train_images``: train on that many evenly spaced images of the training split (None: all of it);
    the test split is always whole. ``quick``: 1 seed, the whole split, ``DEMO_QUICK_EPOCHS`` epochs.
    """

    if quick:
        epochs, seeds, train_images = epochs or DEMO_QUICK_EPOCHS, tuple(seeds or DEMO_SEEDS)[:1], None
    epochs, seeds = epochs or DEMO_EPOCHS, tuple(DEMO_SEEDS if seeds is None else seeds)
    out = Path(out)
    check_range("epochs", epochs, low=1, high=10_000, integer=True)
    if not seeds:
        raise ExciteError("seeds: expected at least one seed")
    check_writable_folder(out)  # before minutes of training, not after: a parent that is a file, no permission
    runs, summary = [], []
    t_start = time.perf_counter()
    setting = f"{train_images} training images" if train_images else "the whole training split"
    dataset = _register_small_digits(train_images) if train_images else "digits"
    echo(f"excite demo: resnet20 x {{{', '.join(attentions)}}} on digits ({setting}, all 450 test images), "
         f"{len(seeds)} seed(s), {epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
         f"{platform.processor() or platform.machine()}")
    tops_by = {}
    for att in attentions:
        params, macs = _complexity(att)
        tops, speeds = {}, []
        for seed in seeds:
            cfg = make_config({"model": "resnet20", "attention": att, "dataset": dataset, "epochs": epochs,
                               "seed": seed, "batch_size": batch_size, "progress": progress, "device": device},
                              recipe="digits-short")
            r = train(cfg)
            tops[seed] = r["top1"]
            speeds.append(r["img_per_s"])
            runs.append({"attention": att, "seed": seed, "epochs": epochs, "train_images": train_images or "all",
                         "top1": r["top1"], "top5": r["top5"], "img_per_s": r["img_per_s"]})
            echo(f"  {att:<5} seed {seed}: top-1 {r['top1']:.2f}%  {r['img_per_s']:.0f} img/s")
        tops_by[att] = tops
        st = summarize(tops.values())
        sm, ss = _mean_std(speeds)
        base = tops_by[attentions[0]]
        delta, p, n = paired_ttest(tops, base) if att != attentions[0] else (math.nan, math.nan, 0)
        detect = detectable_difference(paired_difference_sd(tops, base), n) if n else math.nan
        summary.append({"attention": att, "params": params, "macs": macs, "runs": len(seeds), "top1_mean": st.mean,
                        "top1_std": 0.0 if math.isnan(st.std) else st.std, "ci95_low": st.ci_low,
                        "ci95_high": st.ci_high, "delta_vs_none": delta, "p_paired": p, "detectable_80": detect,
                        "separated": verdict(delta, p, detect), "img_per_s_mean": sm, "img_per_s_std": ss})
    wall = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)  # only now: a demo that fails leaves no folder behind
    _write_csv(out / "runs.csv", runs)
    _write_csv(out / "summary.csv", summary)
    _plot(out / "summary.png", summary, epochs, len(seeds), setting,
          where=None if device == "cpu" else f"{device}, torch {torch.__version__}")
    echo("")
    echo(f"{'attention':<10} {'params':>9} {'MACs':>12} {'train img/s':>13} {'top-1 (%)':>15} {'95% CI':>16} "
         f"{'vs none (pp)':>12} {'p':>6} {'detectable':>10}  separated from none?")
    for r in summary:
        macs = f"{r['macs']:,}" if r["macs"] is not None else "n/a"
        ci = "-" if math.isnan(r["ci95_low"]) else f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"
        d = "-" if math.isnan(r["delta_vs_none"]) else f"{r['delta_vs_none']:+.2f}"
        pv = "-" if math.isnan(r["p_paired"]) else f"{r['p_paired']:.3f}"
        dd = "-" if math.isnan(r["detectable_80"]) else f"{r['detectable_80']:.2f}"
        echo(f"{r['attention']:<10} {r['params']:>9,} {macs:>12} {r['img_per_s_mean']:>7.0f} +- {r['img_per_s_std']:<3.0f}"
             f" {r['top1_mean']:>6.2f} +- {r['top1_std']:.2f} {ci:>16} {d:>12} {pv:>6} {dd:>10}  {r['separated']}")
    echo(f"\n{len(runs)} runs in {wall:.0f} s; results in {out}/ (runs.csv, summary.csv, summary.png). Intervals: "
         f"t over seeds on the logit scale; p: paired t-test over seeds; detectable: the smallest difference that "
         f"test finds with 80% power given these seeds and their spread (pp).")
    return summary


def _register_small_digits(n: int) -> str:
    """Register (once) and return the dataset name for digits with ``n`` evenly spaced training images
    and the whole test split (the engine's ``subset`` option would cut the test split too)."""

    name = f"digits-train{n}"
    if name not in registered_datasets():
        def load(root=None):
            tr, te = load_digits()
            return subset(tr, n), te

        register_dataset(name, load)
    return name


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise ExciteError("demo produced no runs")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, summary: list[dict], epochs: int, n: int, setting: str = "", where: str | None = None) -> None:
    import matplotlib  # slow import, plots only

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt  # slow import, plots only

    names = [r["attention"] for r in summary]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    err = [[0 if math.isnan(r["ci95_low"]) else r["top1_mean"] - r["ci95_low"] for r in summary],
           [0 if math.isnan(r["ci95_high"]) else r["ci95_high"] - r["top1_mean"] for r in summary]]
    a1.bar(names, [r["top1_mean"] for r in summary], yerr=err, capsize=4, color="#4c72b0")
    lo = min(r["top1_mean"] - e for r, e in zip(summary, err[0]))
    a1.set_ylim(max(0, lo - 5), 100)
    a1.set_ylabel("test top-1 accuracy (%)")
    a1.set_title(f"ResNet-20, digits ({setting}), {epochs} epochs\nmean and 95% interval over {n} seed(s)", fontsize=9)
    a2.bar(names, [r["img_per_s_mean"] for r in summary], yerr=[r["img_per_s_std"] for r in summary], capsize=4, color="#dd8452")
    a2.set_ylabel("training images/s")
    a2.set_title(where or f"CPU, torch {torch.__version__}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
