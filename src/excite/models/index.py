"""Generate the registry's index (``core/index.json``) from the ``register_*`` marks in the code.

Run ``python -m excite.models.index`` after adding or changing a model family or an attention module;
``tests/core/test_registry.py`` rebuilds the index and fails when the file has drifted. Parameter counts
are taken from each model built on the meta device (no memory, no initialisation).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import torch

import excite.attention
import excite.models
from excite.core import registry


def _import_all() -> None:
    """Import every module of the attention and model packages, so that every mark is seen."""
    for package in (excite.attention, excite.models):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name != __name__:
                importlib.import_module(info.name)


def build_index() -> dict:
    """The index as the code declares it (built-in marks only: user plug-ins are not written)."""
    _import_all()
    models = {}
    for name, entry in sorted(registry._DECLARED_MODELS.items()):
        if not entry.target.startswith("excite."):
            continue
        with torch.device("meta"):
            model = entry.builder(attention=None, attention_kwargs={},
                                  num_classes=_default(entry.builder, "num_classes"), in_chans=3)
        params = sum(p.numel() for p in model.parameters())
        models[name] = {**entry.as_index(), "params": params}
    attention = {name: {"target": e.target, "doc": e.doc}
                 for name, e in sorted(registry._DECLARED_ATTENTION.items()) if e.target.startswith("excite.")}
    return {"models": models, "attention": attention}


def _default(fn, param: str):
    return inspect.signature(fn).parameters[param].default


def write_index(path: Path | None = None) -> Path:
    path = path or Path(registry.__file__).with_name(registry.INDEX)
    path.write_text(json.dumps(build_index(), indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_index()}")
