"""Registries of model builders and attention modules, and the public create/list functions.

A model builder is a keyword-only function ``fn(*, attention, attention_kwargs, num_classes, in_chans,
**kwargs) -> nn.Module``; an attention module is a class (or factory) ``cls(channels, **kwargs)`` whose
output has the input's shape. Attention is an *argument* of every model, never part of its name.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .errors import ExciteError, unknown_name


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    family: str
    default_input_size: tuple[int, int, int]
    default_attention: str | None = None  # what ``attention=None`` builds (EfficientNet: its own SE)
    paper: str = ""
    extra: dict = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}
_ATTENTION: dict[str, Callable[..., nn.Module]] = {}


def register_model(*, family: str, input_size=(3, 224, 224), default_attention=None, paper: str = "", **extra):
    """Decorator registering a model builder under its function name."""

    def wrap(fn):
        name = fn.__name__
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(name, fn, family, tuple(input_size), default_attention, paper, extra)
        return fn

    return wrap


def register_attention(name: str):
    """Decorator registering an attention class or factory ``cls(channels, **kwargs)`` under ``name``."""

    def wrap(cls):
        if name in _ATTENTION:
            raise RuntimeError(f"attention {name!r} registered twice")
        _ATTENTION[name] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    # Importing the packages runs their @register decorators.
    from . import attention, models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"resnet*"``), sorted naturally."""
    _ensure_loaded()
    names = [n for n in _MODELS if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def list_attention() -> list[str]:
    """Registered attention names (``"none"`` is the explicit no-attention choice)."""
    _ensure_loaded()
    return sorted(_ATTENTION)


def model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    return _MODELS[name]


def attention_class(name: str) -> Callable[..., nn.Module]:
    _ensure_loaded()
    if name not in _ATTENTION:
        raise unknown_name("attention", name, _ATTENTION)
    return _ATTENTION[name]


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an instance of a registered attention class."""
    _ensure_loaded()
    return isinstance(module, tuple(c for c in _ATTENTION.values() if isinstance(c, type)))


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module ``name`` for a feature map with ``channels`` channels."""
    cls = attention_class(name)
    _check_kwargs(cls, kwargs, f"attention {name!r}")
    return cls(channels, **kwargs)


def create_model(
    name: str,
    *,
    attention: str | Callable[..., nn.Module] | None = None,
    attention_kwargs: dict | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    checkpoint: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered backbone with any attention module.

    Args:
        name: a name from :func:`list_models`.
        attention: a name from :func:`list_attention`, a class/factory ``cls(channels, **kw)``, or
            ``None`` for the architecture's own default (no attention for ResNets and MobileNetV2, SE
            for EfficientNet). ``"none"`` removes attention everywhere, EfficientNet's SE included.
        attention_kwargs: keyword arguments for every attention module. A list value with one entry
            per stage gives each stage its own setting (``{"k_size": [3, 5, 5, 7]}``).
        num_classes: classifier outputs; ``None`` gives the model's dataset default (1000 for ImageNet
            models, 10 for the CIFAR ResNets). 0 removes the classifier (features only).
        in_chans: input channels.
        checkpoint: optional path of weights to load (see :func:`excite.load_checkpoint`).
        **kwargs: architecture options of the builder (``variant="v1"``, ``width_mult=0.75`` ...).
    """
    entry = model_entry(name)
    from .errors import check_range

    if num_classes is None:
        num_classes = inspect.signature(entry.fn).parameters["num_classes"].default
    check_range("num_classes", num_classes, low=0)
    check_range("in_chans", in_chans, low=1)
    if isinstance(attention, str):
        attention_class(attention)  # validate early, with suggestions
    if attention_kwargs is not None and not isinstance(attention_kwargs, dict):
        raise ExciteError(f"attention_kwargs must be a dict, got {type(attention_kwargs).__name__}")
    _check_kwargs(entry.fn, kwargs, f"model {name!r}")
    model = entry.fn(
        attention=attention, attention_kwargs=dict(attention_kwargs or {}), num_classes=num_classes,
        in_chans=in_chans, **kwargs,
    )
    model.default_input_size = entry.default_input_size
    # Provenance kept on the model, written beside saved checkpoints.
    model.excite_cfg = dict(
        name=name, attention=attention if isinstance(attention, str) or attention is None else repr(attention),
        attention_kwargs=dict(attention_kwargs or {}), num_classes=num_classes, in_chans=in_chans, **kwargs,
    )
    if checkpoint is not None:
        from .keymap import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


def _check_kwargs(fn, kwargs: dict, what: str) -> None:
    """Reject keyword arguments ``fn`` does not take, naming the valid ones."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in valid:
            shown = [v for v in valid if v not in ("channels", "attention", "attention_kwargs", "num_classes", "in_chans")]
            raise ExciteError(f"{what} takes no argument {key!r}; valid: {', '.join(shown) or 'none'}")


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
