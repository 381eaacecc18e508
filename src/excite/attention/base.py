"""What every channel gate shares: ``attn(x) = x * channel_weights(x)``.

Keeping the weights separate from the multiply lets a residual block compute ``attn(x) + identity``
as one ``torch.addcmul`` pass instead of a multiply pass and an addition pass over the activation:
``attn(x, residual)``. ``excite.optimize_for_inference`` switches blocks to that form; going through
``__call__`` keeps hooks on the module (timing, profiling) working.

Without autograd the residual form writes its result into ``x`` (the calling block's own branch
output, which nothing else holds): a fresh output tensor costs more than the arithmetic on a CPU, where
every large allocation is new memory the kernel must fault in (measured on this project's 2-core
machine: ``torch.addcmul`` into a new 51 MB tensor 27 ms, into ``x`` 3.7 ms).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Base class of the channel gates (SE and its variants, ECA, ECA-NS)."""

    fuses_residual = True  # forward(x, residual) returns self(x) + residual in one pass (see fused_residual)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) excitation in (0, 1) that scales ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        w = self.channel_weights(x)
        return x * w if residual is None else fused_residual(x, w, residual)


def records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an operation on ``tensors`` (then none may be written in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def fused_residual(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``y * gate + residual`` in one pass; written into ``y`` when no gradient is being recorded
    (grad mode off, or none of the three requires grad, as in a model frozen by
    ``optimize_for_inference``; ``y`` must then be the caller's own tensor), into a new tensor
    otherwise (and when tracing for export: ONNX has no ``out=``)."""
    if records_grad(y, gate, residual) or torch.jit.is_tracing():
        return torch.addcmul(residual, y, gate)
    return torch.addcmul(residual, y, gate, out=y)
