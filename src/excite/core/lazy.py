"""PEP 562 lazy exports: a package names its public objects without importing the modules that define
them, so the command line answers ``--help`` without importing torch."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``; ``exports`` maps a public name to
    the submodule (relative, ``".engine"``) that defines it."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
