"""excite: channel attention (SE, ECA, CBAM, ...) for every classic CNN backbone, one argument apart.

>>> import excite
>>> model = excite.create_model("resnet50", attention="eca")
"""

from .errors import ExciteError
from .registry import create_attention, create_model, list_attention, list_models

__version__ = "0.1.0"

__all__ = ["ExciteError", "create_attention", "create_model", "list_attention", "list_models", "__version__"]
