"""Plug-and-play: add attention to existing networks (:func:`excite.attach`, defined in
:mod:`excite.plug.attach`; the package does not re-export it, since the name is its module's)."""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "AttachReport": ".attach",
    "Insertion": ".attach",
})
