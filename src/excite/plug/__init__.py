"""Plug-and-play: add attention to existing networks (:func:`attach`) and convert checkpoints."""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "AttachReport": ".attach",
    "Insertion": ".attach",
    "attach": ".attach",
})
