"""The training engine: ``train(config)`` and ``evaluate(model, data)``; the CLI only calls these.

Exact resume: the data order of epoch ``e`` and the augmentation of batch ``i`` come from generators
seeded by ``(seed, e)`` and ``(seed, e, i)``, and the learning rate is a pure function of the step, so
a checkpoint only needs model, optimizer, EMA, the torch RNG state and the step to continue bit-exactly.
Streamed image folders follow the same plan: item ``j``'s random crop is seeded by ``(seed, e, j)``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import is_attention
from excite.data import ImageFolderDataset, TensorData, augment, load_dataset, normalize
from excite.core.errors import ExciteError, check_choice, check_range, unknown_name
from excite.files.folderlock import remove_created, settle_aside
from excite.files.modelfile import check_resume_state, load_state, save_model
from excite.core.combinations import check_combinations


@dataclass
class TrainConfig:
    """Every training option with its default (one place, one comment each)."""

    model: str = "resnet20"           # model reference: a name, a model file (initial weights), file.py:Class ...
    attention: str | None = None      # None: the architecture as published; "none": no attention anywhere
    attention_kwargs: dict = field(default_factory=dict)  # settings of every attention module
    model_options: dict = field(default_factory=dict)     # the builder's options (variant, preact ...)
    dataset: str = "digits"
    data: str | None = None           # archive or folder for cifar*/imagefolder
    download: bool = False            # cifar*: download the official archive into ``data`` (default ./data)
    image_size: int = 224             # imagefolder: train crop / eval center-crop size
    workers: int = 4                  # imagefolder: DataLoader decode processes per training process
    subset: int = 0                   # use N evenly spaced images of each split (0: all); smoke tests
    out: str | None = None            # output folder (checkpoints, logs, config); None: nothing written
    recipe: str | None = None         # named preset applied before explicit overrides
    epochs: int = 8
    batch_size: int = 64              # global batch (split across processes under torchrun)
    optimizer: str = "sgd"            # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_norm_bias: bool = True   # no weight decay on norm weights and biases (1-D parameters)
    schedule: str = "cosine"          # cosine | step | constant
    milestones: tuple = (0.5, 0.75)   # step schedule: fractions of training where lr drops 10x
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 0.0            # max grad norm; 0 = off
    ema_decay: float = 0.0            # EMA of weights; 0 = off
    bf16: bool = False                # bf16 autocast (CPU and CUDA)
    channels_last: bool = False
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                  # torch intra-op threads; 0 = the cores free now (auto_threads)
    resume: bool = False              # continue from <out>/last.safetensors
    overwrite: bool = False           # start a new run in a folder that holds one (its files are replaced)
    checkpoint_every: int = 0         # also checkpoint every N steps (a kill loses at most N); 0 = epoch ends only
    stop_after_steps: int = 0         # stop (with a checkpoint) after this many steps in total; 0 = off
    skip_bad_images: bool = False
    progress: bool = True
    tensorboard: bool = False         # also write scalars to <out>/tensorboard (needs the tensorboard package)
    pretrained: str | None = None     # public weights of a registered model ("torchvision", "eca-official", "default")
    freeze_backbone_epochs: int = 0   # train only attention modules and the classifier for the first N epochs
    freeze_bn_last: int = 0           # freeze BN statistics and affine parameters for the last N epochs (SENet)
    scale_lr: bool = False            # linear scaling rule: the lr used is lr * batch_size / 256 (scaled_lr)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    def validate(self) -> "TrainConfig":
        """Check every option's type and range (one place for the CLI, ``--config`` and study TOMLs)."""
        for f in dataclasses.fields(self):
            rule = _RULES.get(f.name)
            if rule is not None:
                rule(f.name, getattr(self, f.name))
        from excite.data import DATASETS, registered_datasets

        check_choice("dataset", self.dataset, [*DATASETS, *registered_datasets()])
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("schedule", self.schedule, ("cosine", "step", "constant"))
        if self.recipe is not None:
            from excite.training.recipes import RECIPES

            check_choice("recipe", self.recipe, RECIPES)
        if not isinstance(self.milestones, (list, tuple)) or not all(
                _is_number(m) and 0 < m < 1 for m in self.milestones):
            raise ExciteError(f"milestones={self.milestones!r}: expected fractions of the run in (0, 1), e.g. [0.5, 0.75]")
        self.milestones = tuple(self.milestones)
        check_device(self.device)
        check_combinations(self)
        return self


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(low=None, high=None):
    return lambda name, v: check_range(name, v, low=low, high=high, integer=True)


def _float(low=None, high=None, *, below: float | None = None):
    def rule(name, v):
        if below is not None and not (_is_number(v) and v == v and low <= v < below):  # half-open: say so
            raise ExciteError(f"{name}={v!r} is out of range; expected a number in [{low}, {below})")
        check_range(name, v, low=low, high=high)
    return rule


def _bool(name, v):
    if not isinstance(v, bool):
        raise ExciteError(f"{name}={v!r}: expected true or false")


def _str(name, v):
    if not isinstance(v, str) or not v:
        raise ExciteError(f"{name}={v!r}: expected a non-empty string")


def _opt_str(name, v):
    if v is not None:
        _str(name, v)


def _dict(name, v):
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ExciteError(f"{name}={v!r}: expected a table/dict of settings, e.g. {{\"k_size\": 3}}")


def _threads(name, v):
    # More threads than cores only adds contention (and torch segfaults on absurd counts).
    check_range(name, v, low=0, high=os.cpu_count() or 1, integer=True)


_RULES = {
    "model": _str, "attention": _opt_str, "attention_kwargs": _dict, "model_options": _dict,
    "data": _opt_str, "out": _opt_str, "download": _bool, "image_size": _int(8, 4096), "workers": _int(0, 256),
    "subset": _int(0), "epochs": _int(1, 100_000), "batch_size": _int(1, 1 << 20), "lr": _float(1e-12, 100),
    "momentum": _float(0, below=1), "nesterov": _bool, "weight_decay": _float(0, 1), "no_decay_norm_bias": _bool,
    "warmup_epochs": _float(0, 100_000), "label_smoothing": _float(0, below=1), "grad_clip": _float(0),
    "ema_decay": _float(0, below=1), "bf16": _bool, "channels_last": _bool, "seed": _int(0, 2**63 - 1),
    "threads": _threads, "resume": _bool, "stop_after_steps": _int(0), "skip_bad_images": _bool,
    "progress": _bool, "tensorboard": _bool, "pretrained": _opt_str, "freeze_backbone_epochs": _int(0, 100_000),
    "freeze_bn_last": _int(0, 100_000), "scale_lr": _bool,
    "overwrite": _bool, "checkpoint_every": _int(0),
}


def check_device(device) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` that this torch build can use; one line otherwise."""
    if not isinstance(device, str):
        raise ExciteError(f"device={device!r}: expected cpu, cuda or cuda:N")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (not index.isdigit() or kind == "cpu")):
        raise unknown_name("device", device, ("cpu", "cuda", "cuda:0", "mps"))
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ExciteError(f"device={device!r}: this torch build ({torch.__version__}) has no CUDA device; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ExciteError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ExciteError(f"device={device!r}: MPS is not available here; use --device cpu")


def make_config(overrides: dict | None = None, recipe: str | None = None) -> TrainConfig:
    """Build and check a ``TrainConfig`` from a recipe and overrides; a bad key or value is one line."""
    from excite.training.recipes import get_recipe

    overrides = dict(overrides or {})
    recipe = overrides.pop("recipe", recipe)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for k in overrides:
        if k not in names:
            raise unknown_name("config key", k, names)
    if recipe is not None:
        _opt_str("recipe", recipe)
    base = get_recipe(recipe) if recipe else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**base)
    cfg.recipe = recipe
    return cfg.validate()


# ---------------------------------------------------------------------------------------------------
# pieces


MAX_WARMUP_FRACTION = 0.1  # of all steps; Goyal et al. 2017 warm up 5 of 90 epochs (~6%)


def scaled_lr(lr: float, batch_size: int, base_batch: int = 256) -> float:
    """The linear scaling rule: ``lr`` is the rate for a batch of ``base_batch``; a batch k times larger
    takes a k times larger rate (Goyal et al. 2017, sec. 2.1; SENet sec. 6: "a larger batch allows a
    larger learning rate", lr 0.6 for batch 1024)."""
    return lr * batch_size / base_batch


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer ``step`` (0-based): linear warmup, then cosine, step or constant."""
    peak = scaled_lr(cfg.lr, cfg.batch_size) if cfg.scale_lr else cfg.lr
    total = cfg.epochs * steps_per_epoch
    # Warm-up never takes more than MAX_WARMUP_FRACTION of the run: a 1-epoch smoke run with the
    # default 1-epoch warm-up would otherwise end at the peak rate, never annealed (10% top-1).
    warm = min(int(cfg.warmup_epochs * steps_per_epoch), int(MAX_WARMUP_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return peak * 0.1 ** sum(step >= m * total for m in cfg.milestones)
    return peak


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


def _gen(*seeds: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_of(*seeds))


def _seed_of(*parts: int) -> int:
    # Python's tuple hash of ints is deterministic across runs (no hash randomisation for ints).
    return hash(tuple(parts)) & 0x7FFF_FFFF_FFFF_FFFF


def epoch_batches(data: TensorData, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index tensors of the global batches of ``epoch`` (a seeded permutation, last partial batch dropped)."""
    g = torch.Generator().manual_seed(_seed_of(seed, epoch))
    perm = torch.randperm(len(data), generator=g)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(len(data) // batch_size)]


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


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 256, device: str = "cpu",
             channels_last: bool = False, bf16: bool = False, workers: int = 0) -> dict:
    """Top-1, top-5, per-class accuracy (%) and the confusion matrix (rows: true, columns: predicted).

    ``data`` is an in-memory ``TensorData`` or a streaming ``ImageFolderDataset`` (decoded by
    ``workers`` DataLoader processes and, under torchrun, split across the ranks).
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
            logits = model(x).float().cpu()
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


class EMA:
    """Exponential moving average of parameters and buffers (``decay`` per step)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.state[k].copy_(v)


# ---------------------------------------------------------------------------------------------------
# the loop


# The files a training run writes in its folder (--overwrite replaces exactly these).
RUN_FILES = ("last.safetensors", "best.safetensors", "log.jsonl", "log.csv", "config.json", "metrics.json")


def _open_out(out: Path, cfg: TrainConfig):
    """Create (if needed) and lock the run folder ``out``; return ``(lock, created)``.

    A folder belongs to one run: a folder that holds a run (``last.safetensors``) is refused unless
    ``resume`` (continue it) or ``overwrite`` (replace its files). Leftovers of a run that wrote no
    checkpoint are replaced without asking: there is nothing in them to continue from. Replaced files are
    moved to ``out/.replaced`` and removed only once the new run has written a checkpoint; a run that
    fails before that puts them back (``excite.files.folderlock.settle_aside``).
    """
    from excite.files.folderlock import FolderLock, move_aside, remove_created, settle_aside

    if out.exists() and not out.is_dir():
        raise ExciteError(f"output folder {out} is not writable: it exists and is a file")
    created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if the run fails early
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out, "training run")
    except ExciteError:
        raise
    except OSError as e:
        if created:
            remove_created(created)
        raise ExciteError(f"output folder {out} is not writable: {e.strerror or e}") from None
    try:
        settle_aside(out)  # an --overwrite interrupted before its first checkpoint: the old run is back
        has_run = (out / "last.safetensors").is_file()
        if has_run and not cfg.resume and not cfg.overwrite:
            raise ExciteError(f"{out} already holds a training run (last.safetensors); continue it with --resume, "
                              f"replace it with --overwrite, or choose another --out")
        if not cfg.resume:  # kept aside until the new run has checkpointed (settle_aside)
            move_aside(out, (*RUN_FILES, "tensorboard"))
    except BaseException:
        lock.release()
        if created:
            remove_created(created)
        raise
    return lock, created


def train(config: TrainConfig | dict | None = None, *, on_epoch=None, **overrides) -> dict:
    """Train ``config.model`` with ``config.attention`` on ``config.dataset``; return final metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) trains with DistributedDataParallel (gloo on CPU, NCCL on
    CUDA); each rank takes its slice of every global batch; rank 0 logs and checkpoints.

    The output folder is locked for the run (``<out>/.lock``: a second writer is refused, naming the
    holder) and belongs to one run (see ``resume`` and ``overwrite``); a folder the run created is
    removed again if it fails before its first checkpoint. ``on_epoch(row)`` is called with each
    epoch's log row (progress for callers that show it).
    """
    if config is None or isinstance(config, dict):
        config = make_config({**(config or {}), **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config
    from excite.training.distributed import setup, teardown

    rank, world = setup(cfg.device)
    try:
        out = Path(cfg.out) if cfg.out and rank == 0 else None
        if cfg.resume and cfg.out and not (Path(cfg.out) / "last.safetensors").is_file():
            raise ExciteError(f"--resume: {cfg.out} holds no last.safetensors to continue from; "
                              "run without --resume to start a new run there")
        lock, created = _open_out(out, cfg) if out is not None else (None, [])
        try:
            return _train(cfg, rank, world, on_epoch)
        except BaseException:
            if created and not (out / "last.safetensors").exists():
                lock.release()
                remove_created(created)
            raise
        finally:
            if lock is not None:
                settle_aside(out)  # what --overwrite replaced: removed after a checkpoint, else restored
                lock.release()
    finally:
        teardown()


def build_training_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model ``cfg`` names, with a classifier for ``num_classes``: a reference is built fresh; a
    model file gives the initial weights (fine-tuning), and must already have ``num_classes`` outputs."""
    from excite.factory import is_model_file, resolve_model

    if is_model_file(cfg.model):
        if cfg.pretrained:
            raise ExciteError(f"--pretrained applies to a model name; {cfg.model} already holds its weights")
        if cfg.attention is not None or cfg.attention_kwargs or cfg.model_options:
            raise ExciteError(f"--model {cfg.model} is a model file and describes its own model; "
                              "--attention and model options apply to a model name")
        model = resolve_model(cfg.model)
        have = model.excite_spec.num_classes
        if have is not None and have != num_classes:
            raise ExciteError(f"{cfg.model} has {have} classes but dataset {cfg.dataset} has {num_classes}")
        return model
    pretrained = True if cfg.pretrained == "default" else cfg.pretrained
    model = resolve_model(cfg.model, attention=cfg.attention, attention_kwargs=cfg.attention_kwargs,
                          options=cfg.model_options, num_classes=num_classes, pretrained=pretrained)
    report = getattr(model, "excite_pretrained", None)
    if report is not None and cfg.progress:
        print(f"excite: {report}")
    return model


def backbone_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """The backbone's parameters and normalisation layers: everything but the attention modules, their
    identity-blend scales and the classifier (what ``freeze_backbone_epochs`` trains alone)."""

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    new = {id(p) for m in model.modules() if is_attention(m) or m is head for p in m.parameters()}
    skip = {id(m) for m in model.modules() if is_attention(m) or m is head for m in m.modules()}
    params = [p for n, p in model.named_parameters() if id(p) not in new and not n.endswith("_scale")]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in skip]
    return params, norms


def _train(cfg: TrainConfig, rank: int, world: int, on_epoch=None) -> dict:
    from excite.deploy.threads import auto_threads

    torch.set_num_threads(cfg.threads or auto_threads())  # 0: the cores free now (issue 17)
    out = Path(cfg.out) if cfg.out else None
    if cfg.batch_size % world:
        raise ExciteError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    if cfg.tensorboard:
        if out is None:
            raise ExciteError("--tensorboard needs --out (the folder the event files go to)")
        writer_cls = _summary_writer_cls()  # checked on every rank, so no rank waits for a failed one
    data_root = _download_if_asked(cfg, rank, world) if cfg.download else cfg.data
    train_data, test_data = load_dataset(cfg.dataset, data_root, skip_bad_images=cfg.skip_bad_images,
                                         image_size=cfg.image_size, seed=cfg.seed)
    if cfg.subset:
        train_data, test_data = subset(train_data, cfg.subset), subset(test_data, cfg.subset)
    train_data.check_labels()
    streaming = isinstance(train_data, ImageFolderDataset)
    eval_workers = cfg.workers if streaming else 0
    steps_per_epoch = len(train_data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ExciteError(f"batch_size={cfg.batch_size} exceeds the {len(train_data)} training images")

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_training_model(cfg, train_data.num_classes)
    spec = model.excite_spec
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step, best, history = 0, -1.0, []

    if cfg.resume:
        if out is None:
            raise ExciteError("--resume needs --out (the folder holding last.safetensors)")
        if not (out / "last.safetensors").is_file():
            raise ExciteError(f"--resume: {out} holds no last.safetensors to continue from; run without --resume to start")
        st = check_resume_state(load_state(out / "last.safetensors"), out / "last.safetensors")
        from excite.factory import load_tensors

        load_tensors(model, st["model"], str(out / "last.safetensors"))
        opt.load_state_dict(st["optimizer"])
        if ema is not None and "ema" in st:
            ema.state = st["ema"]
        torch.set_rng_state(st["rng"])
        step, best, history = st["step"], st["best"], st["history"]
        if rank == 0:  # the log holds exactly the checkpoint's epochs (a failed save may have left more)
            _rewrite_logs(out, history)

    # --freeze-backbone-epochs: frozen parameters get no gradient (so no update, no weight decay, no
    # momentum) and frozen BatchNorms run in eval mode (their statistics stay the pretrained ones).
    frozen, frozen_norms = backbone_split(model) if cfg.freeze_backbone_epochs else ([], [])

    def freeze(on: bool) -> None:
        for p in frozen:
            p.requires_grad_(not on)

    freeze(bool(frozen) and step // steps_per_epoch < cfg.freeze_backbone_epochs)  # before DDP sees them
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model)

    def checkpoint(name: str) -> None:
        if out is None or rank != 0:
            return
        st = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "step": step, "best": best,
              "history": history}
        if ema is not None:
            st["ema"] = ema.state
        metrics = history[-1] if history else None
        save_model(model, out / name, spec=spec, training=cfg.to_json(), metrics=metrics, train_state=st)

    if out is not None and rank == 0:
        (out / "config.json").write_text(json.dumps({**cfg.to_json(), "model_spec": spec.to_dict()}, indent=2) + "\n")
    tb = writer_cls(str(out / "tensorboard")) if cfg.tensorboard and rank == 0 else None
    skipped = [0]  # unreadable images replaced (--skip-bad-images), streaming data only

    def rank_batches(epoch: int, i0: int):
        """Yield ``(i, uint8 images, labels)``: this rank's slice of global batches ``i0..`` of ``epoch``."""
        batches = epoch_batches(train_data, cfg.batch_size, cfg.seed, epoch)
        if not streaming:
            for i in range(i0, steps_per_epoch):
                idx = batches[i]
                # Augment the whole global batch, then take this rank's slice: the same images and
                # offsets as one process with the same global batch (DistributedSampler-like sharding).
                x = augment(train_data.images[idx], _gen(cfg.seed, epoch, i), flip=train_data.flip)[rank::world]
                yield i, x, train_data.labels[idx][rank::world]
            return
        # Streaming: the same global-batch permutation and rank slices, decoded by DataLoader workers.
        # Not a DistributedSampler: a batch sampler starting at batch i0 makes mid-epoch resume exact,
        # and per-item seeds (seed, epoch, index) make crops independent of worker and rank counts.
        plan = [[(j, epoch) for j in batches[i][rank::world].tolist()] for i in range(i0, steps_per_epoch)]
        loader = torch.utils.data.DataLoader(
            train_data, batch_sampler=plan, num_workers=cfg.workers, pin_memory=cfg.device.startswith("cuda"),
            generator=torch.Generator().manual_seed(_seed_of(cfg.seed, epoch)))  # leaves the global RNG alone
        for i, (x, y, bad) in zip(range(i0, steps_per_epoch), loader):
            if (y < 0).any():
                train_data.raise_bad(int(bad[y < 0][0]))
            skipped[0] += int(bad.sum())
            yield i, x, y

    total = cfg.epochs * steps_per_epoch
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, leave=False)
    seen, t_train = 0, 0.0
    last_loss = float("nan")
    check_range("freeze_bn_last", cfg.freeze_bn_last, low=0, high=cfg.epochs, integer=True)
    try:
        while step < total:
            epoch, i0 = divmod(step, steps_per_epoch)
            ddp_model.train()
            if frozen:
                on = epoch < cfg.freeze_backbone_epochs
                if frozen[0].requires_grad == on:  # the boundary: unfreeze (DDP must see the new parameters)
                    freeze(on)
                    if world > 1:
                        ddp_model = nn.parallel.DistributedDataParallel(model)
                        ddp_model.train()
                for m in frozen_norms if on else ():
                    m.eval()
            # The last freeze_bn_last epochs train with BN frozen (recomputed per epoch: resume-safe).
            frozen_bn = freeze_bn(model) if epoch >= cfg.epochs - cfg.freeze_bn_last and cfg.freeze_bn_last else []
            t0 = time.perf_counter()
            for i, x, y in rank_batches(epoch, i0):
                x = normalize(x, train_data.mean, train_data.std).to(cfg.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(cfg.device, non_blocking=True)
                for g in opt.param_groups:
                    g["lr"] = lr_at(cfg, step, steps_per_epoch)
                with torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss = F.cross_entropy(ddp_model(x).float(), y, label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    kept = out is not None and (out / "last.safetensors").is_file()
                    raise ExciteError(f"loss is {loss.item()} at step {step} (epoch {epoch + 1}); stopped, "
                                      + (f"the last good checkpoint is kept in {out}" if kept else
                                         "before any checkpoint was written") + "; try a lower --lr or --grad-clip")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in frozen_bn:  # SGD and AdamW skip a parameter without a gradient: no decay, no momentum
                    p.grad = None
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                seen += cfg.batch_size
                last_loss = loss.item()
                if bar is not None:
                    el = t_train + time.perf_counter() - t0
                    bar.set_postfix_str(f"ep {epoch + 1}/{cfg.epochs} loss {last_loss:.3f} {seen / max(el, 1e-9):.0f} img/s")
                    bar.update(1)
                if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                    checkpoint("last.safetensors")  # mid-epoch: --resume continues exactly from this step
            t_train += time.perf_counter() - t0
            if step % steps_per_epoch == 0:  # a finished epoch: evaluate, log, checkpoint
                m = evaluate(model, test_data, device=cfg.device, channels_last=cfg.channels_last, bf16=cfg.bf16,
                             workers=eval_workers)
                row = {"epoch": step // steps_per_epoch, "step": step, "loss": last_loss,
                       "lr": opt.param_groups[0]["lr"], "top1": m["top1"], "top5": m["top5"],
                       "img_per_s": seen / max(t_train, 1e-9)}
                history.append(row)
                if tb is not None:
                    for key in ("loss", "lr", "img_per_s"):
                        tb.add_scalar(f"train/{key}", row[key], step)
                    for key in ("top1", "top5"):
                        tb.add_scalar(f"test/{key}", row[key], step)
                    tb.flush()
                improved = m["top1"] > best
                best = max(best, m["top1"])
                checkpoint("last.safetensors")
                if improved:
                    checkpoint("best.safetensors")
                # Logged after the checkpoint that holds this epoch: a failed save (a full disk) leaves no
                # log line for an epoch that --resume will run again.
                if rank == 0 and out is not None:
                    _log(out, row)
                if on_epoch is not None and rank == 0:
                    on_epoch(dict(row, epochs=cfg.epochs))
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                checkpoint("last.safetensors")
                break
    except KeyboardInterrupt:
        checkpoint("last.safetensors")  # step boundary: --resume continues exactly from here
        raise ExciteError(f"interrupted at step {step}; checkpoint saved"
                          + (f" to {out / 'last.safetensors'}, continue with --resume" if out else "")) from None
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    final = evaluate(model, test_data, device=cfg.device, channels_last=cfg.channels_last, bf16=cfg.bf16,
                     workers=eval_workers)
    result = {"top1": final["top1"], "top5": final["top5"], "best_top1": best, "step": step,
              "img_per_s": seen / max(t_train, 1e-9), "history": history, "skipped_images": skipped[0], "model": model}
    if out is not None and rank == 0:
        (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2) + "\n")
    return result


def subset(data, n: int):
    """``n`` evenly spaced items of ``data`` (all of it if ``n >= len(data)``), in memory or streaming."""
    import copy

    if n >= len(data):
        return data
    idx = [i * len(data) // n for i in range(n)]  # spread over the folder's class-sorted order
    if isinstance(data, TensorData):
        return dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx])
    out = copy.copy(data)
    out.samples = [data.samples[i] for i in idx]
    return out


def _summary_writer_cls():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error if the optional package is missing."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it; not a dependency of excite
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExciteError("--tensorboard needs the 'tensorboard' package, which is not installed: "
                          "pip install tensorboard") from None
    return SummaryWriter


def _download_if_asked(cfg: TrainConfig, rank: int, world: int) -> str:
    """``--download``: rank 0 fetches the official files into ``cfg.data`` (default ./data); return the
    path ``load_dataset`` takes (the CIFAR archive, or the Fashion-MNIST/MNIST folder)."""
    from excite.data import CIFAR_ARCHIVES, IDX_DOWNLOADS, download_dataset

    if cfg.dataset not in CIFAR_ARCHIVES and cfg.dataset not in IDX_DOWNLOADS:
        raise ExciteError(f"--download works for {', '.join([*CIFAR_ARCHIVES, *IDX_DOWNLOADS])}, "
                          f"not dataset {cfg.dataset!r}")
    folder = Path(cfg.data or "data")
    target = folder / (cfg.dataset if cfg.dataset in IDX_DOWNLOADS else CIFAR_ARCHIVES[cfg.dataset][0].rsplit("/", 1)[-1])
    err = None
    if rank == 0:
        try:
            target = download_dataset(cfg.dataset, folder, progress=cfg.progress)
        except ExciteError as e:
            err = e
    if world > 1:  # the others wait for rank 0's verified files, and learn if it failed
        failed = torch.tensor([int(err is not None)], device=cfg.device)
        torch.distributed.all_reduce(failed)
        if failed.item() and err is None:
            raise ExciteError(f"rank 0 could not download {cfg.dataset}; see its error")
    if err is not None:
        raise err
    return str(target)


def _rewrite_logs(out: Path, history: list[dict]) -> None:
    """Rewrite ``log.jsonl`` and ``log.csv`` from a checkpoint's history (on resume)."""
    from excite.files.modelfile import atomic_write_bytes

    atomic_write_bytes(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history).encode())
    if history:
        import io

        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_bytes(out / "log.csv", buf.getvalue().encode())
    else:
        (out / "log.csv").unlink(missing_ok=True)


def _log(out: Path, row: dict) -> None:
    """Append one epoch's metrics to ``log.jsonl`` and ``log.csv``."""
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    path = out / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
