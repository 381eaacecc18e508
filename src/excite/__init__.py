"""excite: channel attention (SE, ECA, CBAM, ...) for every classic CNN backbone, one argument apart.

>>> import excite
>>> model = excite.create_model("resnet50", attention="eca")

The public names are imported on first use (PEP 562), so ``import excite`` and the command line's
``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ExciteError": "excite.core.errors",
    "ModelSpec": "excite.core.spec",
    "create_model": "excite.factory",
    "build_model": "excite.factory",
    "load_model": "excite.factory",
    "resolve_model": "excite.factory",
    "create_attention": "excite.attention",
    "find_attention": "excite.attention",
    "list_models": "excite.core.registry",
    "list_attention": "excite.core.registry",
    "register_model": "excite.core.registry",
    "register_attention": "excite.core.registry",
    "save_model": "excite.files.modelfile",
    "Profile": "excite.profiling",
    "profile": "excite.profiling",
    "load_checkpoint": "excite.files.keymap",
    "list_weights": "excite.files.weights",
    "feature_info": "excite.models.features",
    "AttachReport": "excite.plug.attach",
    "attach": "excite.plug.attach",
    "evaluate": "excite.training.engine",
    "train": "excite.training.engine",
    "optimize_for_inference": "excite.models.optimize",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'excite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
