"""The registry of models and attention modules: one table that the library and the command line read.

The table is an index (``core/index.json``) of every built-in model (name -> ``module:builder``, family,
default input size, what ``attention=None`` builds, parameter count, paper) and attention module (name ->
``module:class``, one line of description). Looking a name up reads the index only, without importing
torch; building it imports the family's module on demand. Nothing is registered as a side effect of
importing something else, so a fresh process sees the same registry as a long test run.

``register_model`` / ``register_attention`` mark the built-in builders (the index is generated from the
marks: ``python -m excite.models.index``, and a test keeps the two equal) and register a user's own
plug-ins, which are looked up before the index.

A model builder is a keyword-only function ``fn(*, attention, attention_kwargs, num_classes, in_chans,
**options) -> nn.Module``; an attention module is a class (or factory) ``cls(channels, **kwargs)`` whose
output has the input's shape. Attention is an *argument* of every model, never part of its name.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from excite.core.errors import ExciteError, unknown_name

INDEX = "index.json"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. ``fn`` imports the family's module on first use."""

    name: str
    target: str  # "module:builder"
    family: str
    default_input_size: tuple[int, int, int]
    default_attention: str | None = None  # what ``attention=None`` builds (EfficientNet: its own SE)
    paper: str = ""
    params: int | None = None  # with the default options and classes, from the index
    extra: dict = field(default_factory=dict)
    builder: Callable | None = field(default=None, compare=False, repr=False)  # a user's plug-in

    @property
    def fn(self) -> Callable:
        return self.builder if self.builder is not None else _load(self.target)

    def build(self, *, attention=None, attention_kwargs: dict | None = None, num_classes: int | None = None,
              in_chans: int = 3, **options):
        """Call the builder with the registry's contract (``num_classes=None``: the builder's default).
        :func:`excite.create_model` adds checks, weights and wrappers on top of this."""
        fn = self.fn
        if num_classes is None:
            num_classes = inspect.signature(fn).parameters["num_classes"].default
        return fn(attention=attention, attention_kwargs=dict(attention_kwargs or {}), num_classes=num_classes,
                  in_chans=in_chans, **options)

    def as_index(self) -> dict:
        return {"target": self.target, "family": self.family, "input_size": list(self.default_input_size),
                "default_attention": self.default_attention, "paper": self.paper, "params": self.params,
                **({"extra": self.extra} if self.extra else {})}


@dataclass(frozen=True)
class AttentionEntry:
    """One registered attention module. ``cls`` imports its module on first use."""

    name: str
    target: str
    doc: str = ""
    builder: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def cls(self) -> Callable:
        return self.builder if self.builder is not None else _load(self.target)


# Marks left by the decorators (built-in and user code alike) and the user's plug-ins. The index holds
# the built-in ones; a decorator whose target the index already names adds nothing.
_DECLARED_MODELS: dict[str, ModelEntry] = {}
_DECLARED_ATTENTION: dict[str, AttentionEntry] = {}
_USER_MODELS: dict[str, ModelEntry] = {}
_USER_ATTENTION: dict[str, AttentionEntry] = {}


def _target(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def register_model(*, family: str, input_size=(3, 224, 224), default_attention=None, paper: str = "", name=None,
                   **extra):
    """Decorator marking a model builder (registered under its function name, or ``name``)."""

    def wrap(fn):
        key = name or fn.__name__
        entry = ModelEntry(key, _target(fn), family, tuple(input_size), default_attention, paper, None, extra,
                           builder=fn)
        _DECLARED_MODELS[key] = entry
        indexed = index()["models"].get(key)
        if indexed is None or indexed["target"] != entry.target:
            if key in _USER_MODELS and _USER_MODELS[key].builder is not fn:
                raise ExciteError(f"model {key!r} registered twice")
            _USER_MODELS[key] = entry
        return fn

    return wrap


def register_attention(name: str):
    """Decorator marking an attention class or factory ``cls(channels, **kwargs)`` as ``name``.

    Instances carry ``excite_attention = name`` (a class attribute), which is how
    :func:`excite.attention.find_attention` recognises them in any model.
    """

    def wrap(cls):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        entry = AttentionEntry(name, _target(cls), doc, builder=cls)
        _DECLARED_ATTENTION[name] = entry
        indexed = index()["attention"].get(name)
        if indexed is None or indexed["target"] != entry.target:
            if name in _USER_ATTENTION and _USER_ATTENTION[name].builder is not cls:
                raise ExciteError(f"attention {name!r} registered twice")
            _USER_ATTENTION[name] = entry
        if isinstance(cls, type):
            cls.excite_attention = name
        return cls

    return wrap


@lru_cache(maxsize=1)
def index() -> dict:
    """The built-in index (``{"models": {...}, "attention": {...}}``), read once, without torch."""
    return json.loads(resources.files("excite.core").joinpath(INDEX).read_text())


def _models() -> dict[str, ModelEntry]:
    built_in = {n: ModelEntry(n, e["target"], e["family"], tuple(e["input_size"]), e.get("default_attention"),
                              e.get("paper", ""), e.get("params"), e.get("extra", {}))
                for n, e in index()["models"].items()}
    return {**built_in, **_USER_MODELS}


def _attention() -> dict[str, AttentionEntry]:
    built_in = {n: AttentionEntry(n, e["target"], e.get("doc", "")) for n, e in index()["attention"].items()}
    return {**built_in, **_USER_ATTENTION}


def _load(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"resnet*"``), sorted naturally."""
    return sorted((n for n in _models() if fnmatch.fnmatchcase(n, pattern)), key=natural_key)


def list_attention() -> list[str]:
    """Registered attention names (``"none"`` is the explicit no-attention choice)."""
    return sorted(_attention())


def model_entry(name: str) -> ModelEntry:
    """The entry of a registered model; an unknown name is one line with the close ones."""
    models = _models()
    if not isinstance(name, str) or name not in models:
        raise unknown_name("model", name, models)
    return models[name]


def attention_entry(name: str) -> AttentionEntry:
    attention = _attention()
    if not isinstance(name, str) or name not in attention:
        raise unknown_name("attention", name, attention)
    return attention[name]


def attention_class(name: str) -> Callable:
    """The class (or factory) registered as ``name``; imports its module."""
    return attention_entry(name).cls


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


def natural_key(name: str):
    """Sort key that orders ``resnet20`` before ``resnet110``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
