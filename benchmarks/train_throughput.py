"""Training throughput (img/s) per model x attention on this machine, on the in-memory digits data.

    python benchmarks/train_throughput.py --models resnet20 --attention none se eca cbam --steps 20

Prints one JSON line per pair with the machine, torch version and thread count; times the optimizer
steps after ``--warmup`` untimed steps (pad-crop-flip augmentation and normalisation included).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

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
    a = p.parse_args()
    for m in a.models:
        for att in a.attention:
            ips = measure(m, att, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup)
            print(json.dumps({"model": m, "attention": att, "img_per_s": round(ips, 1), "batch_size": a.batch_size,
                              "steps": a.steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "machine": platform.machine(), "processor": platform.processor()}), flush=True)


if __name__ == "__main__":
    main()
