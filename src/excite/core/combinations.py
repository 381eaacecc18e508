"""Options that contradict each other or would have no effect: one line each, before any file is
touched or any data read (``TrainConfig.validate`` calls :func:`check_combinations`; every command's
model reference goes through :func:`check_attention_settings`). Torch-free."""

from __future__ import annotations

import os

from excite.core.errors import ExciteError
from excite.core.registry import model_entry

# A --model that names weights rather than an architecture (fine-tuning starts from them).
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".th", ".pt", ".ckpt", ".bin")


def _names_weights(model) -> bool:
    return isinstance(model, str) and (model.lower().endswith(_WEIGHT_SUFFIXES) or os.path.isfile(model))


def check_attention_settings(model, attention, attention_kwargs, *, flag: str = "--attention-kwargs") -> None:
    """Attention settings without an attention module to apply them to are refused, except for a model
    whose published architecture has its own attention (EfficientNet's and MobileNetV3's SE), which the
    settings then configure."""
    if not attention_kwargs or attention not in (None, "none"):
        return
    if attention is None and isinstance(model, str) and not _names_weights(model) and ":" not in model:
        try:
            entry = model_entry(model)
        except ExciteError:
            return  # an unknown name is refused by name where the model is built
        if entry.default_attention is not None:
            return  # a built-in attention takes the settings
    what = "--attention none removes every attention module" if attention == "none" else "no --attention was given"
    raise ExciteError(f"{flag} {attention_kwargs} would have no effect: {what} ({model} has none of its own); "
                      "add --attention NAME")


def check_combinations(cfg) -> None:
    """Refuse the option combinations of a training config that contradict or do nothing."""
    if cfg.resume and cfg.overwrite:
        raise ExciteError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite replaces it; give one")
    if cfg.freeze_backbone_epochs and not cfg.pretrained and not _names_weights(cfg.model):
        raise ExciteError(f"--freeze-backbone-epochs {cfg.freeze_backbone_epochs} freezes pretrained weights, but "
                          f"{cfg.model} starts from random ones (only the classifier would train); add --pretrained "
                          "or start from a model file")
    if not cfg.pretrained:  # public weights with attention take its settings (files.weights.fit_attention)
        check_attention_settings(cfg.model, cfg.attention, cfg.attention_kwargs)
