"""The fast recipe (``--recipe fashion-mnist-fast``), measured part by part.

    python benchmarks/fast_recipe.py throughput            # img/s by batch size x channels-last, data path
    python benchmarks/fast_recipe.py ablation --subset 10000 --epochs 2   # each part off in turn
    python benchmarks/fast_recipe.py run --seed 0          # the recipe on all of Fashion-MNIST, its budget
    python benchmarks/fast_recipe.py table                 # print the committed ablation as Markdown
    python benchmarks/fast_recipe.py throughput --tiny     # seconds: the script end to end

``throughput`` times ResNet-20 training steps on 28x28 batches (Fashion-MNIST's size): every variant
warmed the same, the order rotated each round, >= 9 rounds, median and quartiles, "too noisy" when
the IQR exceeds 10% of the median. It also times the data path: the batched uint8 augmentation
against the same augmentation one image at a time in Python.

``ablation`` trains the recipe once as it is and once with each part switched off (one seed, a
training subset and few epochs: a CPU shared with other jobs cannot fit more), and records time and
test top-1 for each. Every result file names the machine, its load and the torch version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# (label, TrainConfig overrides that switch one part of the recipe off). EMA and flip TTA change no
# training step, so their rows are evaluations of the recipe's own run (raw weights; no TTA).
ABLATIONS = [
    ("recipe as it is", {}),
    ("no label smoothing", {"label_smoothing": 0.0}),
    ("cosine instead of one-cycle", {"schedule": "cosine", "warmup_fraction": 0.0, "warmup_epochs": 1.0}),
    ("channels-last off", {"channels_last": False}),
    ("batch 256", {"batch_size": 256}),
]


def machine(threads: int) -> dict:
    """The machine, its load now, and the software, for every result file."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_1_5_15min": list(os.getloadavg()),
            "threads": threads, "torch": torch.__version__, "python": platform.python_version()}


def quartiles(xs: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "too_noisy": (q3 - q1) > 0.1 * med, "n": len(xs)}


def throughput(args) -> dict:
    """Training img/s of ResNet-20 at 28x28 per (batch size, channels-last), and the data path."""
    import torch
    import torch.nn.functional as F

    import excite
    from excite.data import augment

    torch.set_num_threads(args.threads)
    sizes = (16, 32) if args.tiny else (64, 128, 256, 512)
    variants = [(b, cl) for b in sizes for cl in (False, True)]
    models = {}
    for b, cl in variants:
        torch.manual_seed(0)
        m = excite.create_model("resnet20", num_classes=10)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        models[b, cl] = (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))

    def step(b, cl):
        m, opt = models[b, cl]
        x = torch.randn(b, 3, 28, 28)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
        return b / (time.perf_counter() - t0)

    for v in variants:  # warm every variant the same
        step(*v), step(*v)
    rounds = 9 if not args.tiny else 9
    samples = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            samples[v].append(step(*v))
    train = [{"batch_size": b, "channels_last": cl, "img_per_s": quartiles(samples[b, cl])} for b, cl in variants]
    # The data path: one batch of 256 uint8 images augmented at once versus image by image in Python.
    images = torch.randint(0, 256, (256, 3, 28, 28), dtype=torch.uint8)
    batched, per_image = [], []
    for r in range(rounds):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        augment(images, g)
        batched.append(256 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        torch.cat([augment(images[i:i + 1], g) for i in range(256)])
        per_image.append(256 / (time.perf_counter() - t0))
    return {"what": "ResNet-20 training step img/s at 28x28 (random data), and augmentation img/s",
            "train": train, "augment_img_per_s": {"batched": quartiles(batched), "per_image_python": quartiles(per_image)}}


def _evaluate_variants(r: dict, cfg, folder: Path) -> list[dict]:
    """The recipe's run evaluated without EMA (its raw weights) and without flip TTA (timed)."""
    import torch

    from excite.data import load_dataset
    from excite.files.modelfile import load_state
    from excite.training import evaluate
    from excite.training.plan import subset

    test = load_dataset(cfg.dataset)[1]
    test = subset(test, cfg.subset) if cfg.subset else test
    kw = dict(batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last)
    rows = []
    t0 = time.perf_counter()
    with_tta = evaluate(r["model"], test, tta_flip=test.flip, **kw)["top1"]
    t_tta = time.perf_counter() - t0
    t0 = time.perf_counter()
    no_tta = evaluate(r["model"], test, **kw)["top1"]
    t_plain = time.perf_counter() - t0
    raw = r["model"]
    raw.load_state_dict(load_state(folder / "last.safetensors")["model"])
    no_ema = evaluate(raw, test, tta_flip=test.flip, **kw)["top1"]
    rows.append({"variant": "no EMA (same run, raw weights)", "top1": no_ema, "seconds": r["seconds"],
                 "note": "the EMA changes no training step; its update time is inside the recipe's seconds"})
    rows.append({"variant": "no flip TTA (same run)", "top1": no_tta, "seconds": r["seconds"] - t_tta + t_plain,
                 "check_top1_with_tta": with_tta})
    torch.set_grad_enabled(True)
    return rows


def ablation(args) -> dict:
    """Train the recipe and each one-part-off variant once; time and test top-1 of each."""
    import tempfile

    from excite.training import make_config, train

    # Untimed warm-up (imports, first allocations), so that the first variant pays no more than the rest.
    train(make_config({"model": args.model, "subset": 64, "batch_size": 32, "epochs": 1, "threads": args.threads,
                       "progress": False}))
    rows = []
    chosen = [ABLATIONS[int(i)] for i in args.only.split(",")] if args.only else ABLATIONS
    chosen = chosen[:2] if args.tiny else chosen
    tiny = {"batch_size": 32} if args.tiny else {}
    for label, off in chosen:
        folder = Path(tempfile.mkdtemp(prefix="ablation-"))
        cfg = make_config({"dataset": args.dataset, "epochs": args.epochs, "subset": args.subset, "seed": args.seed,
                           "threads": args.threads, "progress": False, "time_budget": 0.0, "out": str(folder),
                           "overwrite": True, "model": args.model, **tiny, **off}, recipe="fashion-mnist-fast")
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = train(cfg)
        rows.append({"variant": label, "overrides": off, "top1": r["top1"], "seconds": time.perf_counter() - t0,
                     "img_per_s": r["img_per_s"], "steps": r["step"], "load_at_start": load})
        print(f"{label:32s} top-1 {r['top1']:6.2f}%  {rows[-1]['seconds']:7.0f} s", flush=True)
        if not off:
            for row in _evaluate_variants(r, cfg, folder):
                rows.append({**row, "load_at_start": load})
                print(f"{row['variant']:32s} top-1 {row['top1']:6.2f}%  {row['seconds']:7.0f} s", flush=True)
    return {"what": f"fast recipe with each part off: {args.model} on {args.dataset}, subset {args.subset} "
                    f"(training and test), {args.epochs} epochs, seed {args.seed}, {args.threads} thread(s)",
            "rows": rows}


def merge(out: Path, day: str) -> Path:
    """Join the ``--only`` parts of one day's ablation into one file, rows in ABLATIONS order."""
    parts = sorted(out.glob(f"fast-recipe-ablation-{day}-only*.json"))
    files = [json.loads(p.read_text()) for p in parts]
    order = [label for label, _ in ABLATIONS]
    rows = sorted((r for f in files for r in f["rows"]),
                  key=lambda r: (order.index(r["variant"]) if r["variant"] in order else 0.5, r["variant"]))
    rows.sort(key=lambda r: 0 if r["variant"] == "recipe as it is" else 1)
    merged = {**files[0], "rows": rows, "parts": [p.name for p in parts],
              "machine_at_end": files[-1]["machine_at_end"],
              "how": "the variants ran in separate processes at the same time (the 'parts' files), "
                     "so each row's seconds are under the same shared load"}
    path = out / f"fast-recipe-ablation-{day}.json"
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path


def full_run(args) -> dict:
    """The recipe as a user runs it (all of Fashion-MNIST, the recipe's time budget or ``--budget``)
    into ``<out>/fashion-mnist-fast-<date>/seed<N>/``; the model files are removed afterwards (the
    run's config, log, metrics and machine stay)."""
    from excite.training import make_config, train

    folder = Path(args.out) / f"fashion-mnist-fast-{datetime.date.today().isoformat()}" / f"seed{args.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "machine.json").write_text(json.dumps(machine(args.threads), indent=2) + "\n")
    over = {"dataset": args.dataset, "seed": args.seed, "threads": args.threads, "progress": False,
            "out": str(folder), "overwrite": True}
    if args.budget is not None:
        over["time_budget"] = args.budget
    r = train(make_config(over, recipe="fashion-mnist-fast"))
    (folder / "machine-at-end.json").write_text(json.dumps(machine(args.threads), indent=2) + "\n")
    for name in ("last.safetensors", "best.safetensors"):
        (folder / name).unlink(missing_ok=True)
    print(f"seed {args.seed}: top-1 {r['top1']:.2f}% in {r['seconds'] / 60:.1f} min, {r['step']} steps")
    return {}


def table(path: Path) -> str:
    """The ablation file as a Markdown table (time and accuracy against the recipe as it is)."""
    d = json.loads(path.read_text())
    base = d["rows"][0]
    lines = [f"{d['what']}; {d['machine']['cpu']}, {d['machine']['cores']} cores, load "
             f"{d['machine']['loadavg_1_5_15min'][0]:.1f}, torch {d['machine']['torch']}, {d['date']}", "",
             "| variant | top-1 % | vs recipe (pp) | seconds | vs recipe |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['variant']} | {r['top1']:.2f} | {r['top1'] - base['top1']:+.2f} | {r['seconds']:.0f} | "
                     f"{r['seconds'] / base['seconds']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("throughput", "ablation", "merge", "run", "table"))
    ap.add_argument("--only", help="ablation: comma-separated indices into ABLATIONS (a part file per process)")
    ap.add_argument("--day", help="merge: the date of the parts (default today)")
    ap.add_argument("--budget", type=float, default=None, help="run: minutes (default: the recipe's)")
    ap.add_argument("--tiny", action="store_true", help="seconds: the script end to end")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--file", help="table: the ablation result file (default: the newest)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.what == "table":
        files = [Path(args.file)] if args.file else sorted(out.glob("fast-recipe-ablation-*.json"))
        print(table(files[-1]))
        return 0
    if args.tiny:
        args.dataset, args.subset, args.epochs = "digits", 128, 1
    if args.what == "run":
        full_run(args)
        return 0
    if args.what == "merge":
        print(f"wrote {merge(out, args.day or datetime.date.today().isoformat())}")
        return 0
    start = machine(args.threads)
    result = throughput(args) if args.what == "throughput" else ablation(args)
    result.update(machine=start, machine_at_end=machine(args.threads), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    day = datetime.date.today().isoformat()
    only = f"-only{args.only.replace(',', '')}" if args.only else ""
    path = out / f"fast-recipe-{args.what}-{day}{only}{'-tiny' if args.tiny else ''}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if args.what == "throughput":
        for row in result["train"]:
            q = row["img_per_s"]
            print(f"batch {row['batch_size']:4d} channels-last {row['channels_last']!s:5s}  {q['median']:7.1f} img/s "
                  f"[{q['q1']:.1f}, {q['q3']:.1f}]{'  too noisy' if q['too_noisy'] else ''}")
        for k, q in result["augment_img_per_s"].items():
            print(f"augment {k:16s} {q['median']:10.0f} img/s [{q['q1']:.0f}, {q['q3']:.0f}]")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
