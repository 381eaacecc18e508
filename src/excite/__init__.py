"""excite: channel attention (SE, ECA, CBAM, ...) for every classic CNN backbone, one argument apart.

>>> import excite
>>> model = excite.create_model("resnet50", attention="eca")
"""

from .errors import ExciteError
from .registry import create_attention, create_model, list_attention, list_models
from .deploy.optimize import optimize_for_inference
from .checkpoint import load_checkpoint  # noqa: E402  (issue 6)
from .plug import AttachReport, attach  # noqa: E402  (issue 6)
from .train import evaluate, train  # noqa: E402  (issue 4)
from .profile import Profile, profile  # noqa: E402  (issue 3)

__version__ = "0.1.0"

__all__ = ["ExciteError", "create_attention", "create_model", "list_attention", "list_models", "__version__"]
