"""Training: engine (``train``, ``evaluate``), checkpoints, recipes, multi-process, the demo study."""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TrainConfig": ".engine",
    "evaluate": ".engine",
    "make_config": ".engine",
    "train": ".engine",
    "RECIPES": ".recipes",
    "get_recipe": ".recipes",
})
