"""Registries of model builders and attention modules: a leaf that imports no model code.

Model families and attention modules register themselves when their packages are imported
(:mod:`excite.models`, :mod:`excite.attention`); :mod:`excite.factory` imports both once and builds models.

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

from excite.core.errors import ExciteError, check_range, unknown_name


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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"resnet*"``), sorted naturally."""
    names = [n for n in _MODELS if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def list_attention() -> list[str]:
    """Registered attention names (``"none"`` is the explicit no-attention choice)."""
    return sorted(_ATTENTION)


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    return _MODELS[name]


def attention_class(name: str) -> Callable[..., nn.Module]:
    if name not in _ATTENTION:
        raise unknown_name("attention", name, _ATTENTION)
    return _ATTENTION[name]


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an instance of a registered attention class."""
    return isinstance(module, tuple(c for c in _ATTENTION.values() if isinstance(c, type)))


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module ``name`` for a feature map with ``channels`` channels."""
    cls = attention_class(name)
    check_range("channels", channels, low=1, integer=True)  # before the module's own checks use it
    check_kwargs(cls, kwargs, f"attention {name!r}")
    return cls(channels, **kwargs)


def check_kwargs(fn, kwargs: dict, what: str) -> None:
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
