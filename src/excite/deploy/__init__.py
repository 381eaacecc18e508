"""Deployment: inference-time optimization, ONNX export with int8, and the benchmark tool."""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "fold_batchnorm": "..models.optimize",
    "optimize_for_inference": "..models.optimize",
    "keep_freed_memory": "..models.memory",
    "freed_memory_kept": "..models.memory",
})
