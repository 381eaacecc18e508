"""excite: channel attention (SE, ECA, CBAM, ...) for every classic CNN backbone, one argument apart.

>>> import excite
>>> model = excite.create_model("resnet50", attention="eca")
"""

from .errors import ExciteError
from .registry import create_attention, create_model, list_attention, list_models
from .profiling import Profile, profile  # complexity accounting
from .keymap import load_checkpoint  # other projects' checkpoints, loaded safely
from .plug import AttachReport, attach  # attention for a network you already have
from .training import evaluate, train
from .deploy.optimize import optimize_for_inference

__version__ = "0.1.0"

__all__ = [
    "ExciteError", "create_attention", "create_model", "list_attention", "list_models",
    "Profile", "profile", "load_checkpoint", "AttachReport", "attach", "evaluate", "train",
    "optimize_for_inference", "__version__",
]
