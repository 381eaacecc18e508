"""Training: engine (``train``, ``evaluate``), checkpoints, recipes, multi-process, the demo study."""

from .engine import TrainConfig, evaluate, make_config, train
from .recipes import RECIPES, get_recipe

__all__ = ["RECIPES", "TrainConfig", "evaluate", "get_recipe", "make_config", "train"]
