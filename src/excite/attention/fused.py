"""The full-size steps of an attention gate in training, with backward passes that read each tensor once.

A gate's own arithmetic is small; in a training step its cost is the full-size passes of its pools
and its rescale, forward and backward. PyTorch's CPU autograd formulas for three of them take more
passes, or a slower kernel, than the same result written another way (fwd+bwd at 128x16x32x32 on
this project's CPU, ``benchmarks/train_throughput.py`` for whole steps):

* **mean**: its backward divides a broadcast into a new full-size tensor (900 microseconds).
  :func:`mean_pool` is ``x.sum(dim) / n`` in training: a sum's backward is an expanded view, which
  costs nothing, and autograd adds it in place to the input's other gradient (1.1-1.3 ms less per
  ECA block at that size, 15-25% less at every size measured).
* **x * g with a (B, C, 1, 1) gate**: the product's backward writes ``dout * g`` and a temporary
  ``dout * x`` that it then sums over H, W. On large activations :func:`channel_scale` runs the
  product as batch normalization in evaluation mode on the (1, B*C, H, W) view (zero mean, unit
  variance, the gate as the weight), whose backward gets ``dout * g`` and ``sum_hw(dout * x)`` in one
  read of both (0.6 against 1.2 ms); on smaller ones the plain product is faster (its forward is).
* **amax**: its backward counts the ties through boolean tensors, whose CPU kernels are 5-10x slower
  than floating-point ones (5.3 ms forward and backward). :func:`amax_pool` builds the same mask and
  count in floating point (the gradient split evenly between ties, as ``torch.amax``'s).

Each function is the plain operator whenever autograd is not recording or a tracer, scripting or
compiler is watching: the inference rewrite's ``torch.fx`` trace, ONNX export and ``torch.compile``
see ``mean``, ``amax`` and ``mul``. Outputs and gradients equal the plain operators' up to rounding.
Double backward through :func:`amax_pool` is not supported (its backward formula is not recorded).
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F

__all__ = ["mean_pool", "amax_pool", "channel_scale", "recording", "plain_operators"]

_local = threading.local()  # ``plain``: inside plain_operators() in this thread


@contextlib.contextmanager
def plain_operators():
    """Inside the block (in this thread), the functions here run PyTorch's own operators and
    backward formulas: the baseline that ``benchmarks/train_throughput.py`` times them against."""
    before = getattr(_local, "plain", False)
    _local.plain = True
    try:
        yield
    finally:
        _local.plain = before


def recording(*tensors) -> bool:
    """Whether eager autograd records an operation on ``tensors`` (real tensors, one of them
    requiring grad, no tracer, scripting or compiler)."""
    if getattr(_local, "plain", False) or not torch.is_grad_enabled():
        return False
    if not all(type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter) for t in tensors):
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return any(t.requires_grad for t in tensors)


def _dims(dim) -> tuple[int, ...]:
    return (dim,) if isinstance(dim, int) else tuple(dim)


class _AmaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = x.amax(dim, keepdim=True)
        ctx.save_for_backward(x, y)
        ctx.dim = dim
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, y = ctx.saved_tensors
        mask = torch.eq(x, y, out=torch.empty_like(x))  # 1.0 at the maxima, written as floats
        return mask.mul_(dy / mask.sum(ctx.dim, keepdim=True)), None


# Activations from this many elements on take channel_scale's batch-normalization path: measured at
# ResNet-20's widths, the path's backward wins by 0.8 ms at 2M elements (128x16x32x32) and its forward
# loses about 0.06 ms below that (128x64x8x8, 32x16x32x32: 1M elements).
LARGE = 1 << 21


def _scale_as_batch_norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    n = b * c
    y = F.batch_norm(x.view(1, n, h, w), x.new_zeros(n), x.new_ones(n), g.reshape(n), None, False, 0.0, 0.0)
    return y.view(b, c, h, w)


def mean_pool(x: torch.Tensor, dim) -> torch.Tensor:
    """``x.mean(dim, keepdim=True)``; in training, a sum and a division, whose backward allocates nothing."""
    if not recording(x):
        return x.mean(dim, keepdim=True)
    y = x.sum(dim, keepdim=True)
    return y / (x.numel() // max(1, y.numel()))


def amax_pool(x: torch.Tensor, dim) -> torch.Tensor:
    """``x.amax(dim, keepdim=True)``; in training, a backward in floating point."""
    return _AmaxPool.apply(x, _dims(dim)) if recording(x) else x.amax(dim, keepdim=True)


def channel_scale(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x * g`` for a (B, C, H, W) ``x`` and a (B, C, 1, 1) gate ``g``; in training on large
    contiguous activations, as batch normalization (a backward of one pass, see the module docstring)."""
    if (recording(x, g) and x.numel() >= LARGE and x.dim() == 4 and x.is_contiguous() and g.shape == x.shape[:2] + (1, 1)
            and x.dtype == g.dtype and x.dtype in (torch.float32, torch.float64)):
        return _scale_as_batch_norm(x, g)
    return x * g
