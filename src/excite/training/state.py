"""State capture and restore: what a checkpoint holds beside the weights, so that ``--resume``
continues bit-identically (after Ctrl-C, a kill -9 with ``checkpoint_every``, or a full disk)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from excite.core.errors import ExciteError
from excite.factory import load_tensors
from excite.files.modelfile import check_resume_state, load_state, save_model
from excite.training.plan import Progress


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA decay after ``updates`` averaging steps: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm's ModelEmaV3:
    without it a short run's EMA is mostly its random initial weights (measured here: decay 0.99 over
    78 steps gave 54% where the raw weights were far better).
    """
    return min(decay, (1 + updates) / (10 + updates))


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s parameters and buffers, or None (``decay`` 0).

    torch's own ``AveragedModel`` and EMA update (``get_ema_multi_avg_fn``: one fused ``lerp`` per
    dtype and device), at the decay :func:`ema_decay_at` gives for the update count. Buffers are
    averaged too (``use_buffers``): the BatchNorm statistics then belong to the averaged weights, so
    the EMA model is evaluated as it is, without a BN re-estimation pass.
    """
    if decay <= 0:
        return None

    def update(ema_params, params, n_averaged):
        get_ema_multi_avg_fn(ema_decay_at(decay, int(n_averaged)))(ema_params, params, n_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def capture(progress: Progress, optimizer: torch.optim.Optimizer, ema: AveragedModel | None) -> dict:
    """The training state a checkpoint stores beside the model's weights (tensors anywhere inside)."""
    st = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "step": progress.step,
          "best": progress.best, "history": progress.history, "planned": progress.planned,
          "elapsed": progress.elapsed}
    if ema is not None:
        # The averaged model's own keys are the model's (``excite eval --ema`` loads them as weights).
        st["ema"] = ema.module.state_dict()
        st["ema_updates"] = ema.n_averaged.detach().clone()
    return st


def save_checkpoint(path, model: nn.Module, *, spec, config: dict, progress: Progress,
                    optimizer: torch.optim.Optimizer, ema: AveragedModel | None) -> None:
    """Write a resumable model file: weights, config, last metrics and :func:`capture`'s state."""
    metrics = progress.history[-1] if progress.history else None
    save_model(model, path, spec=spec, training=config, metrics=metrics, train_state=capture(progress, optimizer, ema))


def restore(path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None) -> Progress:
    """Load a checkpoint written by :func:`save_checkpoint` into the objects; return its progress."""
    if not path.is_file():
        raise ExciteError(f"--resume: {path.parent} holds no last.safetensors to continue from; "
                          "run without --resume to start")
    st = check_resume_state(load_state(path), path)
    load_tensors(model, st["model"], str(path))
    optimizer.load_state_dict(st["optimizer"])
    if ema is not None and "ema" in st:
        load_tensors(ema.module, st["ema"], f"{path} (EMA)")
        # Checkpoints written before the EMA was torch's own have no count: any count > 0 averages on.
        ema.n_averaged.fill_(int(st["ema_updates"]) if "ema_updates" in st else 1)
    torch.set_rng_state(st["rng"])
    return Progress(step=st["step"], planned=st.get("planned", 0), best=st["best"], elapsed=st.get("elapsed", 0.0),
                    history=st["history"])
