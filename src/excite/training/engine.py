"""The training engine: ``train(config)`` puts the parts together; the CLI and studies only call it.

The parts, one module each: ``config`` (every option and the stable seeds), ``plan`` (batches,
learning rate, time budget), ``loop`` (step, epoch, evaluation), ``state`` (checkpoint capture and
restore, the EMA), ``runfolder`` (lock, config, logs) and ``callbacks`` (progress bar, TensorBoard).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from excite.core.errors import ExciteError
from excite.data import CIFAR_ARCHIVES, IDX_DOWNLOADS, download_dataset, load_dataset
from excite.deploy.threads import auto_threads
from excite.factory import is_model_file, resolve_model
from excite.training import runfolder
from excite.training.callbacks import check_callbacks, make_callbacks
from excite.training.config import TrainConfig, check_device, make_config, seed_of  # noqa: F401 - public here too
from excite.training.distributed import setup, teardown
from excite.training.loop import (  # noqa: F401
    Trainer,
    TrainingInterrupted,
    backbone_split,
    build_optimizer,
    deferred_interrupt,
    evaluate,
    freeze_bn,
)
from excite.training.plan import MAX_WARMUP_FRACTION, Progress, epoch_batches, lr_at, scaled_lr, subset  # noqa: F401
from excite.training.runfolder import RUN_FILES  # noqa: F401
from excite.training.state import make_ema, restore, save_checkpoint


def train(config: TrainConfig | dict | None = None, *, on_epoch=None, **overrides) -> dict:
    """Train ``config.model`` with ``config.attention`` on ``config.dataset``; return final metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) trains with DistributedDataParallel (gloo on CPU, NCCL on
    CUDA); each rank takes its slice of every global batch; rank 0 logs and checkpoints.

    The output folder is locked for the run (``<out>/.lock``: a second writer is refused, naming the
    holder) and belongs to one run (see ``resume`` and ``overwrite``); a folder the run created is
    removed again if it fails before its first checkpoint. ``on_epoch(row)`` is called with each
    evaluated epoch's log row. Ctrl-C checkpoints at the step boundary and raises
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); ``resume`` then continues exactly.
    """
    if config is None or isinstance(config, dict):
        config = make_config({**(config or {}), **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg, started = config, time.perf_counter()
    rank, world = setup(cfg.device)
    try:
        check_callbacks(cfg)
        with runfolder.run_folder(cfg.out if rank == 0 else None, resume=cfg.resume and rank == 0,
                                  overwrite=cfg.overwrite) as out:
            torch.set_num_threads(cfg.threads or auto_threads())  # 0: the cores free now
            if cfg.batch_size % world:
                raise ExciteError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
            data, spe = load_data(cfg, rank, world)
            torch.manual_seed(cfg.seed)  # identical initial weights on every rank
            model = build_training_model(cfg, data[0].num_classes).to(cfg.device)
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
            opt, ema = build_optimizer(cfg, model), make_ema(model, cfg.ema_decay)
            trainer = Trainer(cfg, model, opt, ema, data, spe, rank, world)
            p = Progress(planned=trainer.budget.cap)
            if cfg.resume:
                p = restore(Path(cfg.out) / "last.safetensors", model, opt, ema)
                p.planned = p.planned or trainer.budget.cap
                if out is not None:
                    runfolder.rewrite_logs(out, p.history)
            t0 = started - p.elapsed  # the run's clock starts in its first session
            _run(trainer, p, out, t0, on_epoch)
            final = trainer.final or trainer.evaluate(final=True)
            result = {"top1": final["top1"], "top5": final["top5"], "best_top1": p.best, "step": p.step,
                      "planned_steps": p.planned, "tta": trainer.tta, "ema": trainer.eval_model() is not model,
                      "img_per_s": trainer.img_per_s, "seconds": time.perf_counter() - t0,
                      **({"compile_seconds": round(trainer.compile_s, 2)} if cfg.compile else {}),
                      "history": p.history, "skipped_images": trainer.skipped[0]}
            if out is not None:
                runfolder.write_metrics(out, result)
            return {**result, "model": trainer.eval_model() if cfg.eval_ema else model}
    finally:
        teardown()


def _run(trainer: Trainer, p: Progress, out: Path | None, t0: float, on_epoch) -> None:
    """The epochs: train, end each epoch (evaluate, checkpoint, log), checkpoint on Ctrl-C."""
    cfg, model = trainer.cfg, trainer.model
    spec, config = model.excite_spec, cfg.to_json()
    clock = lambda: time.perf_counter() - t0  # noqa: E731 - wall seconds of the run, earlier sessions included

    def save(name: str) -> None:
        if out is not None:
            p.elapsed = clock()
            save_checkpoint(out / name, model, spec=spec, config=config, progress=p, optimizer=trainer.opt,
                            ema=trainer.ema)

    def log(row: dict) -> None:
        if out is not None:
            runfolder.log(out, row)

    if out is not None:
        runfolder.write_config(out, config, spec.to_dict())
    callbacks = make_callbacks(cfg, out, trainer.rank, on_epoch, total=p.planned, initial=p.step)
    trainer.start(p.step)
    try:
        with deferred_interrupt() as trainer.interrupt:
            while p.step < p.planned:
                trainer.epoch(p, callbacks, save, clock)
                if p.step % trainer.spe == 0 or p.step >= p.planned:
                    trainer.end_epoch(p, callbacks, save, log)
                if trainer.stopped(p):
                    save("last.safetensors")
                    break
    except KeyboardInterrupt:
        save("last.safetensors")  # step boundary: --resume continues exactly from here
        raise TrainingInterrupted(f"interrupted at step {p.step}; checkpoint saved"
                                  + (f" to {out / 'last.safetensors'}, continue with --resume" if out else "")) from None
    finally:
        callbacks.close()


def check_fits(model: nn.Module, data, name: str) -> None:
    """One line when ``model`` cannot take ``data``: other input channels, or another number of classes."""
    chans = getattr(model, "default_input_size", (3,))[0]
    data_chans = data.input_shape[0] if hasattr(data, "input_shape") else 3  # image folders load RGB
    if chans != data_chans:
        raise ExciteError(f"{name} takes {chans}-channel inputs but the dataset's images have {data_chans}")
    spec = getattr(model, "excite_spec", None)
    if spec is not None and spec.num_classes is not None and spec.num_classes != data.num_classes:
        raise ExciteError(f"{name} has {spec.num_classes} classes but the dataset has {data.num_classes}")


def load_data(cfg: TrainConfig, rank: int, world: int) -> tuple[tuple, int]:
    """``((train, test), steps_per_epoch)`` for ``cfg``: downloaded if asked, subset if asked, checked."""
    data_root = _download_if_asked(cfg, rank, world) if cfg.download else cfg.data
    train_data, test_data = load_dataset(cfg.dataset, data_root, skip_bad_images=cfg.skip_bad_images,
                                         image_size=cfg.image_size, seed=cfg.seed)
    if cfg.subset:
        train_data, test_data = subset(train_data, cfg.subset), subset(test_data, cfg.subset)
    train_data.check_labels()
    steps_per_epoch = len(train_data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ExciteError(f"batch_size={cfg.batch_size} exceeds the {len(train_data)} training images")
    if cfg.freeze_bn_last > cfg.epochs:
        raise ExciteError(f"freeze_bn_last={cfg.freeze_bn_last} is out of range; expected an integer in [0, {cfg.epochs}]")
    return (train_data, test_data), steps_per_epoch


def build_training_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model ``cfg`` names, with a classifier for ``num_classes``: a reference is built fresh; a
    model file gives the initial weights (fine-tuning), and must already have ``num_classes`` outputs."""
    if is_model_file(cfg.model):
        if cfg.pretrained:
            raise ExciteError(f"--pretrained applies to a model name; {cfg.model} already holds its weights")
        if cfg.attention is not None or cfg.attention_kwargs or cfg.options:
            raise ExciteError(f"--model {cfg.model} is a model file and describes its own model; "
                              "--attention and model options apply to a model name")
        model = resolve_model(cfg.model)
        have = model.excite_spec.num_classes
        if have is not None and have != num_classes:
            raise ExciteError(f"{cfg.model} has {have} classes but dataset {cfg.dataset} has {num_classes}")
        return model
    pretrained = True if cfg.pretrained == "default" else cfg.pretrained
    model = resolve_model(cfg.model, attention=cfg.attention, attention_kwargs=cfg.attention_kwargs,
                          options=cfg.options, num_classes=num_classes, pretrained=pretrained)
    report = getattr(model, "excite_pretrained", None)
    if report is not None and cfg.progress:
        print(f"excite: {report}")
    return model


def _download_if_asked(cfg: TrainConfig, rank: int, world: int) -> str:
    """``--download``: rank 0 fetches the official files into ``cfg.data`` (default ./data); return the
    path ``load_dataset`` takes (the CIFAR archive, or the Fashion-MNIST/MNIST folder)."""
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
