"""Training configuration: ``TrainConfig`` (every option, its default and its check), ``make_config``
(recipe + overrides) and the stable seeds every random stream of a run derives from."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass, field

import torch

from excite.core.combinations import check_combinations
from excite.core.errors import ExciteError, check_choice, check_range, unknown_name
from excite.core.spec import ModelSpec
from excite.data import DATASETS, registered_datasets
from excite.training.recipes import RECIPES, get_recipe

SCHEDULES = ("cosine", "step", "constant", "onecycle")


@dataclass
class TrainConfig:
    """Every training option with its default (one place, one comment each)."""

    model: str = "resnet20"           # model reference: a name, a model file (initial weights), file.py:Class ...
    #                                   (a ModelSpec given here fills model, attention, attention_kwargs, options)
    attention: str | None = None      # None: the architecture as published; "none": no attention anywhere
    attention_kwargs: dict = field(default_factory=dict)  # settings of every attention module
    options: dict = field(default_factory=dict)           # the model builder's options (variant, preact ...)
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
    schedule: str = "cosine"          # cosine | step | constant | onecycle (linear up, linear down to 0)
    milestones: tuple = (0.5, 0.75)   # step schedule: fractions of training where lr drops 10x
    warmup_epochs: float = 1.0
    warmup_fraction: float = 0.0      # warm-up as a fraction of the run (follows --time-budget); 0: warmup_epochs
    label_smoothing: float = 0.1
    grad_clip: float = 0.0            # max grad norm; 0 = off
    ema_decay: float = 0.0            # EMA of weights and BN statistics per step; 0 = off
    eval_ema: bool = False            # evaluate (and return) the EMA weights instead of the raw ones
    tta_flip: bool = False            # test-time augmentation: average the logits of each image and its mirror
    eval_every: int = 1               # evaluate every N epochs (the last one always); 0: only at the end
    eval_batch_size: int = 256        # evaluation batch (no gradients: larger batches cost no accuracy)
    time_budget: float = 0.0          # minutes of wall time for the whole run; the schedule ends with it; 0 = off
    bf16: bool = False                # bf16 autocast (CPU and CUDA)
    channels_last: bool = False
    compile: bool = False             # the training step's forward through torch.compile (Inductor; once per run)
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
    precise_bn: int = 0               # recompute BN statistics over N training images before each evaluation; 0 = off
    scale_lr: bool = False            # linear scaling rule: the lr used is lr * batch_size / 256 (scaled_lr)

    def __post_init__(self):
        if isinstance(self.model, ModelSpec):
            self._take_spec(self.model)

    def _take_spec(self, spec: ModelSpec) -> None:
        """Unpack a spec into the flat fields (the form the CLI, config files and studies share)."""
        extra = [f for f in ("input_size", "attach", "out_indices", "attention_init") if getattr(spec, f)]
        if extra or spec.optimized:
            raise ExciteError(f"a training config takes a spec's model, attention and options; this one also sets "
                              f"{', '.join(extra or ['optimized'])} (train a model file for those)")
        for name, value in (("attention", spec.attention), ("attention_kwargs", spec.attention_kwargs),
                            ("options", spec.options)):
            mine = getattr(self, name)
            if mine and mine != value:
                raise ExciteError(f"{name} is set twice, {mine!r} in the config and {value!r} in its ModelSpec")
            setattr(self, name, dict(value) if isinstance(value, dict) else value)
        self.model = spec.arch

    @property
    def spec(self) -> ModelSpec:
        """The model this run builds, as the spec every command reads (number of classes: the data's)."""
        return ModelSpec(self.model, attention=self.attention, attention_kwargs=dict(self.attention_kwargs),
                         options=dict(self.options))

    def to_json(self) -> dict:
        """The config as JSON-ready values (what config.json and every checkpoint record)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    def validate(self) -> "TrainConfig":
        """Check every option's type and range (one place for the CLI, ``--config`` and study TOMLs)."""
        for f in dataclasses.fields(self):
            rule = _RULES.get(f.name)
            if rule is not None:
                rule(f.name, getattr(self, f.name))
        check_choice("dataset", self.dataset, [*DATASETS, *registered_datasets()])
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.recipe is not None:
            check_choice("recipe", self.recipe, RECIPES)
        if not isinstance(self.milestones, (list, tuple)) or not all(
                _is_number(m) and 0 < m < 1 for m in self.milestones):
            raise ExciteError(f"milestones={self.milestones!r}: expected fractions of the run in (0, 1), e.g. [0.5, 0.75]")
        self.milestones = tuple(self.milestones)
        check_device(self.device)
        if self.compile:
            check_compiler(self.device)
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
    "model": _str, "attention": _opt_str, "attention_kwargs": _dict, "options": _dict,
    "data": _opt_str, "out": _opt_str, "download": _bool, "image_size": _int(8, 4096), "workers": _int(0, 256),
    "subset": _int(0), "epochs": _int(1, 100_000), "batch_size": _int(1, 1 << 20), "lr": _float(1e-12, 100),
    "momentum": _float(0, below=1), "nesterov": _bool, "weight_decay": _float(0, 1), "no_decay_norm_bias": _bool,
    "warmup_epochs": _float(0, 100_000), "label_smoothing": _float(0, below=1), "grad_clip": _float(0),
    "ema_decay": _float(0, below=1), "bf16": _bool, "channels_last": _bool, "compile": _bool, "seed": _int(0, 2**63 - 1),
    "threads": _threads, "resume": _bool, "stop_after_steps": _int(0), "skip_bad_images": _bool,
    "progress": _bool, "tensorboard": _bool, "pretrained": _opt_str, "freeze_backbone_epochs": _int(0, 100_000),
    "freeze_bn_last": _int(0, 100_000), "scale_lr": _bool, "precise_bn": _int(0, 1 << 30),
    "overwrite": _bool, "checkpoint_every": _int(0), "warmup_fraction": _float(0, below=1), "eval_ema": _bool,
    "tta_flip": _bool, "eval_every": _int(0, 100_000), "eval_batch_size": _int(1, 1 << 20),
    "time_budget": _float(0, 1e6),
}


def check_compiler(device: str) -> None:
    """``compile`` on a CPU needs a C++ compiler for Inductor's kernels (``$CXX``, or g++ / clang++ on
    PATH); say so before anything runs rather than fail at the first step."""
    if device.startswith("cpu") and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise ExciteError("compile=True needs a C++ compiler on the CPU (torch.compile's Inductor builds C++ kernels): "
                          "install g++ or clang++, or set CXX; or train without --compile")


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

def seed_of(*parts: int) -> int:
    """A 63-bit seed derived from integers, the same in every process, Python version and machine.

    Python's ``hash()`` of a tuple is an implementation detail (it changed in 3.8), so the data order
    of a checkpointed run must not depend on it; BLAKE2 of the parts' decimal text does not change.
    """
    text = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by :func:`seed_of` ``(parts)``; it leaves the global RNG alone."""
    return torch.Generator().manual_seed(seed_of(*parts))
