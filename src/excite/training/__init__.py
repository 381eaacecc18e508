"""Training: ``train`` (engine) from its parts (config, plan, loop, state, runfolder, callbacks), recipes,
multi-process, the demo study."""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TrainConfig": ".engine",
    "evaluate": ".engine",
    "make_config": ".engine",
    "train": ".engine",
    "TrainingInterrupted": ".loop",
    "RECIPES": ".recipes",
    "get_recipe": ".recipes",
})
