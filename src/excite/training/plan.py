"""The batch plan: which images each step sees, the learning rate of each step, and how many steps a
time budget allows.

Exact resume rests on three pure functions: the data order of epoch ``e`` comes from a generator
seeded by ``(seed, e)``, the augmentation of batch ``i`` from ``(seed, e, i)``, and the learning rate
from the step and the planned number of steps. A checkpoint therefore needs only the model, the
optimizer, the EMA, the torch RNG state, the step and the plan to continue bit-exactly. Streamed
image folders follow the same plan: item ``j``'s random crop is seeded by ``(seed, e, j)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from excite.data import TensorData, augment
from excite.training.config import TrainConfig, generator, seed_of

MAX_WARMUP_FRACTION = 0.1  # of all steps; Goyal et al. 2017 warm up 5 of 90 epochs (~6%)


def epoch_batches(data, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index tensors of the global batches of ``epoch`` (a seeded permutation, last partial batch dropped)."""
    perm = torch.randperm(len(data), generator=generator(seed, epoch))
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(len(data) // batch_size)]


def tensor_batches(data: TensorData, cfg: TrainConfig, epoch: int, i0: int, steps: int, rank: int, world: int):
    """Yield ``(i, uint8 images, labels)`` for batches ``i0..steps-1`` of ``epoch``, this rank's slice.

    The whole global batch is augmented at once on uint8 tensors (no per-image Python), then sliced:
    the same images and offsets as one process with the same global batch (DistributedSampler-like).
    """
    batches = epoch_batches(data, cfg.batch_size, cfg.seed, epoch)
    for i in range(i0, steps):
        idx = batches[i]
        x = augment(data.images[idx], generator(cfg.seed, epoch, i), flip=data.flip)[rank::world]
        yield i, x, data.labels[idx][rank::world]


def stream_batches(data, cfg: TrainConfig, epoch: int, i0: int, steps: int, rank: int, world: int, skipped: list):
    """Streaming image folders: the same global-batch permutation and rank slices, decoded by workers.

    Not a DistributedSampler: a batch sampler starting at batch ``i0`` makes mid-epoch resume exact,
    and per-item seeds ``(seed, epoch, index)`` make crops independent of worker and rank counts.
    ``skipped[0]`` counts unreadable images replaced (``skip_bad_images``).
    """
    batches = epoch_batches(data, cfg.batch_size, cfg.seed, epoch)
    plan = [[(j, epoch) for j in batches[i][rank::world].tolist()] for i in range(i0, steps)]
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=plan, num_workers=cfg.workers, pin_memory=cfg.device.startswith("cuda"),
        generator=torch.Generator().manual_seed(seed_of(cfg.seed, epoch)))  # leaves the global RNG alone
    for i, (x, y, bad) in zip(range(i0, steps), loader):
        if (y < 0).any():
            data.raise_bad(int(bad[y < 0][0]))
        skipped[0] += int(bad.sum())
        yield i, x, y


def scaled_lr(lr: float, batch_size: int, base_batch: int = 256) -> float:
    """The linear scaling rule: ``lr`` is the rate for a batch of ``base_batch``; a batch k times larger
    takes a k times larger rate (Goyal et al. 2017, sec. 2.1; SENet sec. 6: "a larger batch allows a
    larger learning rate", lr 0.6 for batch 1024)."""
    return lr * batch_size / base_batch


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total: int | None = None) -> float:
    """Learning rate at optimizer ``step`` (0-based) of a run of ``total`` steps (default: all epochs).

    Linear warm-up, then cosine, step, constant or one-cycle. One-cycle is the triangle of the fast
    CIFAR recipes (Smith 2018; airbench): linear up to the peak, linear down to exactly 0 at the last
    step. A pure function of the step (not a stateful ``torch.optim.lr_scheduler``): resume needs no
    scheduler state, and a time budget can move ``total`` while the run goes.
    """
    peak = scaled_lr(cfg.lr, cfg.batch_size) if cfg.scale_lr else cfg.lr
    total = total or cfg.epochs * steps_per_epoch
    if cfg.warmup_fraction:
        warm = int(cfg.warmup_fraction * total)
    else:
        # Warm-up never takes more than MAX_WARMUP_FRACTION of the run: a 1-epoch smoke run with the
        # default 1-epoch warm-up would otherwise end at the peak rate, never annealed (10% top-1).
        warm = min(int(cfg.warmup_epochs * steps_per_epoch), int(MAX_WARMUP_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.schedule == "onecycle":
        return peak * max(0, total - 1 - step) / max(1, total - 1 - warm) if total - 1 > warm else peak
    t = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return peak * 0.1 ** sum(step >= m * total for m in cfg.milestones)
    return peak


class Budget:
    """Plans the run's number of steps so that it ends within ``time_budget`` minutes of wall time.

    The plan is re-made before every step from the measured step rate of this process (the load of a
    shared machine changes) and the time the final evaluation will take; the learning-rate schedule is
    laid over the planned steps, so it reaches its end when the time does. Without a budget the plan
    is every epoch's steps. Called before step ``step``; the plan never ends before that step nor goes
    past ``epochs``.
    """

    MIN_TIMED_STEPS = 5  # steps measured before the first plan (the first ones include warm-up costs)
    # The run's end after its last step (the final evaluation, the checkpoint writes) is estimated, and an
    # estimate that falls short breaks the budget: runs of the fast recipe ended 6-10 s late with a third of
    # a training image per evaluation image. Half, plus 1% of the budget kept back, costs 1-2% of the steps.
    EVAL_COST = 0.5     # an evaluation image against a training image (forward only, but unbatched work)
    RESERVE = 0.01      # share of the budget kept for the run's end

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, eval_images: int):
        self.seconds = cfg.time_budget * 60 * (1 - self.RESERVE)
        self.cap = cfg.epochs * steps_per_epoch
        self.eval_steps = eval_images * (2 if cfg.tta_flip else 1) * self.EVAL_COST / cfg.batch_size

    @property
    def active(self) -> bool:
        return self.seconds > 0

    def plan(self, step: int, elapsed: float, steps_timed: int, seconds_timed: float, planned: int) -> int:
        """The total number of steps to run, given ``elapsed`` wall seconds and the rate measured so far."""
        if not self.active:
            return self.cap
        if steps_timed < self.MIN_TIMED_STEPS or seconds_timed <= 0:
            return planned
        rate = steps_timed / seconds_timed  # steps per second
        left = (self.seconds - elapsed) * rate - self.eval_steps
        return int(min(self.cap, max(step + 1, step + math.floor(left))))


@dataclasses.dataclass
class Progress:
    """Where a run stands: what a checkpoint records beside the tensors, and what resume restores."""

    step: int = 0
    planned: int = 0          # total steps of the run (the time budget's plan, else every epoch's)
    best: float = -1.0        # best evaluated top-1 so far
    elapsed: float = 0.0      # wall seconds spent on the run, over every process that ran it
    history: list = dataclasses.field(default_factory=list)  # one log row per evaluated epoch end


def subset(data, n: int):
    """``n`` evenly spaced items of ``data`` (all of it if ``n >= len(data)``), in memory or streaming."""
    if n >= len(data):
        return data
    idx = [i * len(data) // n for i in range(n)]  # spread over the folder's class-sorted order
    if isinstance(data, TensorData):
        return dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx])
    out = copy.copy(data)
    out.samples = [data.samples[i] for i in idx]
    return out
