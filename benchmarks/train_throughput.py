"""Training throughput (img/s) per model x attention on this machine: the ECA paper's training-FPS column.

    python benchmarks/train_throughput.py                                   # resnet20 and resnet56, 4 attentions
    python benchmarks/train_throughput.py --models resnet50 --input-size 224 --batch-size 16 --runs 5

One full SGD step (forward, loss, backward, update) per timed round on a 32x32 batch; the attention
variants of a model are interleaved (none se eca cbam none se ...) in one process so that their ratios
survive a noisy machine; medians and quartiles over ``--runs`` rounds. Prints a table and writes
benchmarks/results/train-throughput-<date>.json with the machine and torch version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import excite
from excite.deploy.bench import bench_variants, save_results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--attention", nargs="+", default=["none", "se", "eca", "cbam"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    for name in a.models:
        torch.manual_seed(0)
        variants = [(att, excite.create_model(name, attention=att, num_classes=10)) for att in a.attention]
        r = bench_variants(variants, batch_size=a.batch_size, input_size=a.input_size, mode="train", runs=a.runs,
                           model_name=name, measure_peak=False)
        print(r.table(), "\n")
        results.append(r.to_dict())
    out = save_results(dict(runs=a.runs, batch_size=a.batch_size, input_size=a.input_size, results=results),
                       "train-throughput", a.out, results_dir=Path(__file__).parent / "results")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
