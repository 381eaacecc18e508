"""Deployment: inference-time optimization, ONNX export with int8, and the benchmark tool."""

from .optimize import fold_batchnorm, optimize_for_inference

__all__ = ["fold_batchnorm", "optimize_for_inference"]
