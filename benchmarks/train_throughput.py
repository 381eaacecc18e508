"""Training throughput (img/s) per model x attention on this machine, on the in-memory digits data.

    python benchmarks/train_throughput.py --models resnet20 --attention none se eca cbam --steps 20 \
        --out benchmarks/results/train_throughput.jsonl

Prints one JSON line per pair with the machine, torch version and thread count (and appends it to
``--out``); times the optimizer steps after ``--warmup`` untimed steps (pad-crop-flip augmentation and
normalisation included). Run it on an idle machine: the numbers are only as quiet as the CPU is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import excite
from excite.data import augment, load_digits, normalize


def measure(model_name: str, attention: str, *, batch_size: int, steps: int, warmup: int) -> float:
    """Training images per second for ``steps`` SGD steps of ``model_name`` with ``attention``."""
    train, _ = load_digits()
    model = excite.create_model(model_name, attention=attention, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(train), (batch_size,), generator=g)
        x = normalize(augment(train.images[idx], g, flip=False), train.mean, train.std)
        loss = F.cross_entropy(model(x), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--attention", nargs="+", default=["none", "se", "eca", "cbam"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for m in a.models:
        for att in a.attention:
            ips = measure(m, att, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup)
            line = json.dumps({"model": m, "attention": att, "img_per_s": round(ips, 1), "batch_size": a.batch_size,
                               "steps": a.steps, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                               "torch": torch.__version__, "machine": platform.machine(),
                               "processor": platform.processor(),
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
            print(line, flush=True)
            if a.out is not None:
                a.out.parent.mkdir(parents=True, exist_ok=True)
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
