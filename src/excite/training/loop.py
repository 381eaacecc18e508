"""The training loop's parts: one optimizer step, one epoch over the batch plan, and evaluation
(optionally of the weights' EMA and with flip test-time augmentation)."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import is_attention
from excite.core.errors import ExciteError
from excite.data import ImageFolderDataset, TensorData, normalize
from excite.training.config import TrainConfig
from excite.training.plan import Budget, Progress, lr_at, stream_batches, tensor_batches


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint was written (the message says where)."""


# ---------------------------------------------------------------------------------------------------
# evaluation


def _eval_batches(data, batch_size: int, workers: int):
    """``(uint8 images, labels)`` batches of a test split; a streaming split is sharded across ranks."""
    if isinstance(data, TensorData):
        for i in range(0, len(data), batch_size):
            yield data.images[i:i + batch_size], data.labels[i:i + batch_size]
        return
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    # Each rank decodes its own 1/world of the images; the counts are summed afterwards.
    shard = list(range(rank, len(data), world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, shard), batch_size=batch_size,
                                         num_workers=workers)
    for x, y, bad in loader:
        if (y < 0).any():
            data.raise_bad(int(bad[y < 0][0]))
        yield x, y


@torch.inference_mode()
def evaluate(model: nn.Module, data, *, batch_size: int = 256, device: str = "cpu", channels_last: bool = False,
             bf16: bool = False, workers: int = 0, tta_flip: bool = False) -> dict:
    """Top-1, top-5, per-class accuracy (%) and the confusion matrix (rows: true, columns: predicted).

    ``data`` is an in-memory ``TensorData`` or a streaming ``ImageFolderDataset`` (decoded by
    ``workers`` DataLoader processes and, under torchrun, split across the ranks). ``tta_flip``
    averages the logits of each image and its horizontal mirror (for data where a mirror keeps the class).
    """
    model.eval()
    k = data.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64)
    top5 = torch.zeros((), dtype=torch.int64)
    for x, y in _eval_batches(data, batch_size, workers):
        x = normalize(x, data.mean, data.std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        logits = logits.cpu()
        pred = logits.argmax(1)
        conf += torch.bincount(y * k + pred, minlength=k * k).view(k, k)
        top5 += (logits.topk(min(5, k), 1).indices == y[:, None]).any(1).sum()
    if not isinstance(data, TensorData) and torch.distributed.is_available() and torch.distributed.is_initialized():
        both = torch.cat([conf.flatten(), top5.view(1)]).to(device)
        torch.distributed.all_reduce(both)
        conf, top5 = both[:-1].cpu().view(k, k), both[-1].cpu()
    top5 = int(top5)
    n = max(1, len(data))
    per_class = (conf.diag().float() / conf.sum(1).clamp(min=1) * 100).tolist()
    return {"top1": conf.diag().sum().item() / n * 100, "top5": top5 / n * 100, "per_class": per_class,
            "confusion": conf.tolist(), "n": len(data)}


# ---------------------------------------------------------------------------------------------------
# optimizer and freezing


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_bn(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every BatchNorm of ``model``: eval mode (running statistics used and no longer updated);
    returns their affine parameters, whose gradients the caller drops so they stay fixed too.

    SENet (sec. 6 / its released training notes): "to keep training and testing consistent, freeze the
    BN parameters in the last few epochs". Gradients are dropped rather than ``requires_grad`` switched
    off, so a DistributedDataParallel wrapper built earlier keeps its set of parameters.
    """
    frozen = []
    for m in model.modules():
        if isinstance(m, _BN_TYPES):
            m.eval()
            frozen += [p for p in (m.weight, m.bias) if p is not None]
    return frozen


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW; 1-D parameters (norms, biases) without weight decay if asked."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if cfg.no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ExciteError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, sgd")


def backbone_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """The backbone's parameters and normalisation layers: everything but the attention modules, their
    identity-blend scales and the classifier (what ``freeze_backbone_epochs`` trains alone)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    new = {id(p) for m in model.modules() if is_attention(m) or m is head for p in m.parameters()}
    skip = {id(m) for m in model.modules() if is_attention(m) or m is head for m in m.modules()}
    params = [p for n, p in model.named_parameters() if id(p) not in new and not n.endswith("_scale")]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in skip]
    return params, norms


@contextmanager
def deferred_interrupt():
    """Ctrl-C during the body raises ``KeyboardInterrupt`` at the next :func:`check` (a step boundary),
    not inside a step: a step cut after its forward pass would leave BatchNorm statistics updated for
    a batch that resume runs again. A second Ctrl-C interrupts at once. Main thread only."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """One run's moving parts (model, optimizer, EMA, data, plan) and its step, epoch and evaluation."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer, ema, data: tuple, steps_per_epoch: int,
                 rank: int, world: int):
        self.cfg, self.model, self.opt, self.ema = cfg, model, optimizer, ema
        self.train_data, self.test_data = data
        self.spe, self.rank, self.world = steps_per_epoch, rank, world
        self.streaming = isinstance(self.train_data, ImageFolderDataset)
        self.budget = Budget(cfg, steps_per_epoch, len(self.test_data))
        self.skipped = [0]  # unreadable images replaced (--skip-bad-images), streaming data only
        self.seen, self.t_train, self.steps_timed = 0, 0.0, 0
        self.last_loss = float("nan")
        self.interrupt = {"set": False}
        self.final: dict | None = None  # the evaluation at the plan's end (with TTA), the run's result
        # --freeze-backbone-epochs: frozen parameters get no gradient (so no update, no weight decay, no
        # momentum) and frozen BatchNorms run in eval mode (their statistics stay the pretrained ones).
        self.frozen, self.frozen_norms = backbone_split(model) if cfg.freeze_backbone_epochs else ([], [])
        self.ddp = model
        self._compiled = (None, None)  # (the module compiled, its compiled forward)
        self.compile_s, self._compiling = 0.0, False  # seconds of steps that compiled; this step compiles

    def _forward(self) -> nn.Module:
        """What the training step calls: the (DDP-wrapped) model, or with ``compile`` its
        ``torch.compile``d form, compiled again only when DDP wraps it anew (a freeze boundary)."""
        if not self.cfg.compile:
            return self.ddp
        if self._compiled[0] is not self.ddp:
            if self._compiled[0] is None:
                # A run compiles its own model: compiled frames of earlier runs in this process (a study's)
                # would fill dynamo's per-function recompile limit (8) and leave this one running eagerly.
                torch._dynamo.reset()
            # dynamic=False: every training batch has the one shape (full batches only); kernels for it.
            self._compiled, self._compiling = (self.ddp, torch.compile(self.ddp, dynamic=False)), True
        return self._compiled[1]

    def start(self, step: int) -> None:
        """Freeze what the first epoch freezes, then wrap for DDP (which must see the trainable set)."""
        self._freeze(bool(self.frozen) and step // self.spe < self.cfg.freeze_backbone_epochs)
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)

    def _freeze(self, on: bool) -> None:
        for p in self.frozen:
            p.requires_grad_(not on)

    def _enter_epoch(self, epoch: int) -> list[nn.Parameter]:
        """Train mode, backbone freezing at its boundary, and the BN parameters this epoch freezes."""
        self.ddp.train()
        if self.frozen:
            on = epoch < self.cfg.freeze_backbone_epochs
            if self.frozen[0].requires_grad == on:  # the boundary: unfreeze (DDP must see the new parameters)
                self._freeze(on)
                if self.world > 1:
                    self.ddp = nn.parallel.DistributedDataParallel(self.model)
                    self.ddp.train()
            for m in self.frozen_norms if on else ():
                m.eval()
        # The last freeze_bn_last epochs train with BN frozen (recomputed per epoch: resume-safe).
        last = self.cfg.freeze_bn_last
        return freeze_bn(self.model) if last and epoch >= self.cfg.epochs - last else []

    def batches(self, epoch: int, i0: int):
        """This rank's ``(i, uint8 images, labels)`` for batches ``i0..`` of ``epoch``."""
        if self.streaming:
            return stream_batches(self.train_data, self.cfg, epoch, i0, self.spe, self.rank, self.world, self.skipped)
        return tensor_batches(self.train_data, self.cfg, epoch, i0, self.spe, self.rank, self.world)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, frozen_bn: list, p: Progress) -> float:
        """One optimizer step on a batch of uint8 images; returns its loss (NaN stops the run)."""
        cfg = self.cfg
        x = normalize(x, self.train_data.mean, self.train_data.std).to(cfg.device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(cfg.device, non_blocking=True)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = F.cross_entropy(self._forward()(x).float(), y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            kept = bool(cfg.out) and Path(cfg.out, "last.safetensors").is_file()
            raise ExciteError(f"loss is {loss.item()} at step {p.step} (epoch {p.step // self.spe + 1}); stopped, "
                              + ("the last good checkpoint is kept in " + cfg.out if kept else
                                 "before any checkpoint was written") + "; try a lower --lr or --grad-clip")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for q in frozen_bn:  # SGD and AdamW skip a parameter without a gradient: no decay, no momentum
            q.grad = None
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.item()

    def epoch(self, p: Progress, callbacks, save, clock) -> None:
        """Steps from ``p.step`` to the end of its epoch, the plan's end, or ``stop_after_steps``."""
        cfg = self.cfg
        epoch, i0 = divmod(p.step, self.spe)
        frozen_bn = self._enter_epoch(epoch)
        t_last = time.perf_counter()
        for _, x, y in self.batches(epoch, i0):
            if self.interrupt["set"]:
                raise KeyboardInterrupt
            # Planned before the step, so that the step the plan makes the last one gets the final lr.
            p.planned = self.budget.plan(p.step, clock(), self.steps_timed, self.t_train, p.planned)
            self.last_loss = self.step(x, y, lr_at(cfg, p.step, self.spe, p.planned), frozen_bn, p)
            p.step += 1
            now = time.perf_counter()
            if self._compiling:  # the compile is not a step's time (img/s, the budget's step rate)
                self.compile_s, self._compiling = self.compile_s + now - t_last, False
            else:
                self.t_train, self.steps_timed = self.t_train + now - t_last, self.steps_timed + 1
                self.seen += cfg.batch_size
            t_last = now
            callbacks.on_step(p.step, epoch, self.last_loss, self.img_per_s)
            if self.stopped(p) or p.step >= p.planned:
                break
            if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0 and p.step % self.spe:
                save("last.safetensors")  # mid-epoch: --resume continues exactly from this step
        callbacks.retotal(p.planned)

    def stopped(self, p: Progress) -> bool:
        """``stop_after_steps`` reached."""
        return bool(self.cfg.stop_after_steps) and p.step >= self.cfg.stop_after_steps

    @property
    def img_per_s(self) -> float:
        return self.seen / max(self.t_train, 1e-9)

    def eval_model(self) -> nn.Module:
        """The weights evaluated: the EMA's with ``eval_ema``, else the trained ones."""
        return self.ema.module if self.ema is not None and self.cfg.eval_ema else self.model

    def precise_bn(self, epoch: int) -> None:
        """Precise BN (Radosavovic et al. 2020, pycls): every BatchNorm's running statistics recomputed as the
        plain average over ``cfg.precise_bn`` training images (this epoch's augmented batches), with the
        weights as they are now, instead of the exponential average that lags behind them in a short run.

        Written here rather than with ``torch.optim.swa_utils.update_bn``, which resets every BatchNorm: the
        ones training holds in eval mode (``--freeze-bn-last``, ``--freeze-backbone-epochs``) keep their
        statistics. Under DDP the ranks' averages are averaged."""
        model, cfg = self.eval_model(), self.cfg
        frozen = {name for name, m in self.model.named_modules() if isinstance(m, _BN_TYPES) and not m.training}
        norms = [m for name, m in model.named_modules() if isinstance(m, _BN_TYPES) and m.track_running_stats
                 and name not in frozen]
        if not cfg.precise_bn or not norms:
            return
        modes, momenta = {m: m.training for m in model.modules()}, [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        for name, m in model.named_modules():
            if name in frozen:
                m.eval()
        seen, world = 0, self.world
        devices = [torch.device(cfg.device).index or 0] if cfg.device.startswith("cuda") else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # dropout here leaves training's RNG alone
            for _, x, _y in self.batches(epoch, 0):
                x = normalize(x, self.train_data.mean, self.train_data.std).to(cfg.device, non_blocking=True)
                model(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)
                seen += len(x) * world
                if seen >= cfg.precise_bn:
                    break
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            if world > 1:
                for buf in (m.running_mean, m.running_var):
                    torch.distributed.all_reduce(buf)
                    buf /= world
        for m, training in modes.items():
            m.training = training

    def evaluate(self, *, final: bool = False) -> dict:
        """Evaluate on the test split; flip TTA only at the end (``tta_flip``) and where flips are valid."""
        cfg = self.cfg
        return evaluate(self.eval_model(), self.test_data, batch_size=cfg.eval_batch_size, device=cfg.device,
                        channels_last=cfg.channels_last, bf16=cfg.bf16, workers=cfg.workers if self.streaming else 0,
                        tta_flip=final and self.tta)

    @property
    def tta(self) -> bool:
        return self.cfg.tta_flip and getattr(self.test_data, "flip", True)

    def due(self, p: Progress) -> bool:
        """Whether this epoch end (or the plan's end) is evaluated and logged."""
        epoch = -(-p.step // self.spe)
        if p.step >= p.planned or epoch >= self.cfg.epochs:
            return True
        return bool(self.cfg.eval_every) and p.step % self.spe == 0 and epoch % self.cfg.eval_every == 0

    def end_epoch(self, p: Progress, callbacks, save, log) -> None:
        """At an epoch end (or the plan's end): evaluate if due, checkpoint, log, report."""
        if not self.due(p):
            save("last.safetensors")
            return
        final = p.step >= p.planned
        self.precise_bn((p.step - 1) // self.spe)
        m = self.evaluate(final=final)
        if final:
            self.final = m
        row = {"epoch": -(-p.step // self.spe), "step": p.step, "loss": self.last_loss,
               "lr": self.opt.param_groups[0]["lr"], "top1": m["top1"], "top5": m["top5"], "img_per_s": self.img_per_s}
        p.history.append(row)
        improved = m["top1"] > p.best
        p.best = max(p.best, m["top1"])
        save("last.safetensors")
        if improved:
            save("best.safetensors")
        # Logged after the checkpoint that holds this epoch: a failed save (a full disk) leaves no
        # log line for an epoch that --resume will run again.
        log(row)
        callbacks.on_epoch(row)
