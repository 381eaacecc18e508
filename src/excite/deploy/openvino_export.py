"""OpenVINO export (the runtime many CPU users deploy with), checked against PyTorch like the ONNX path.

OpenVINO is an optional dependency (``pip install excite[openvino]``): the model goes through the
ONNX export of :func:`excite.deploy.onnx_export.export_onnx` and OpenVINO's converter, and the saved
IR (``.xml`` + ``.bin``) is run in OpenVINO Runtime on a fresh input and compared with PyTorch.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch import nn

from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec
from excite.deploy.onnx_export import ExportReport, export_onnx
from excite.factory import resolve_model

__all__ = ["export_openvino", "register_export_openvino"]


def _openvino():
    try:
        import openvino as ov  # optional package
    except ImportError as e:
        raise ExciteError("OpenVINO is not installed; install it with `pip install excite[openvino]` (or `pip install openvino`)") from e
    return ov


def export_openvino(model: nn.Module | str | ModelSpec, path: str, *, input_size=None, batch_size: int = 1,
                    dynamic_batch: bool = False, threads: int | None = None) -> ExportReport:
    """Export an eval-mode ``model`` (a module, or any reference :func:`excite.resolve_model` takes) to
    OpenVINO IR at ``path`` (``.xml``, weights beside it in
    ``.bin``) and validate it in OpenVINO Runtime on the CPU: max absolute and relative error against
    PyTorch on a random input (of 2 images with ``dynamic_batch``, to exercise the free dimension)."""
    ov = _openvino()
    if not path.endswith(".xml"):
        raise ExciteError(f"OpenVINO output {path!r} must end in .xml (the weights go beside it in .bin)")
    if not isinstance(model, nn.Module):
        model = resolve_model(model)
    model = model.eval()
    with tempfile.TemporaryDirectory() as d:
        onnx_path = os.path.join(d, "model.onnx")
        rep = export_onnx(model, onnx_path, input_size=input_size, batch_size=batch_size, dynamic_batch=dynamic_batch)
        ov_model = ov.convert_model(onnx_path)
        ov.save_model(ov_model, path, compress_to_fp16=False)  # its fp16 default changed outputs by 3e-4 relative
    size = rep.input_shape[1:]
    n = 2 if dynamic_batch else batch_size
    x = torch.randn(n, *size)
    with torch.no_grad():
        ref = model(x).numpy()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = ov.Core().compile_model(path, "CPU", config)
    got = np.asarray(compiled(x.numpy())[0])
    abs_err = float(np.abs(got - ref).max())
    rel = abs_err / max(float(np.abs(ref).max()), 1e-12)
    return ExportReport(path, abs_err, rel, (n, *size), dynamic_batch, extra=dict(runtime="openvino", version=ov.__version__))
