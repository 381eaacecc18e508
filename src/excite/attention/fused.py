"""The full-size steps of an attention gate, computed with fewer passes or faster kernels than the plain operators.

A gate's own arithmetic is small; in a training step its cost is the full-size passes of its pools
and its rescale, forward and backward. PyTorch's CPU kernels and autograd formulas for four of them
take more passes, or a slower kernel, than the same result written another way (forward and backward
at 128x16x32x32 on this project's CPU, ``benchmarks/train_throughput.py`` for whole steps):

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
* **a convolution from 2 channels to 1** (CBAM's and triplet attention's 7x7 spatial gate): a thin
  loop in PyTorch's CPU kernel, 12.8 ms forward and backward at 128x2x32x32. :func:`spatial_conv`
  computes it on 4x4 pixel blocks folded into channels (:func:`few_channel_conv`, 4.2 ms; 1.5 against
  5.0 ms forward alone), in training and in eager inference alike.

The pools and the product differ from the plain operators only in eager training (autograd
recording); under ``torch.compile`` they are the plain operators, which Inductor fuses itself. The
spatial convolution is folded wherever that is faster, compiled or not. The inference rewrite's
``torch.fx`` trace and ONNX export (``torch.jit``) see ``mean``, ``amax``, ``mul`` and the convolution
module. Outputs and gradients equal the plain operators' up to rounding.
Double backward through :func:`amax_pool` is not supported (its backward formula is not recorded).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mean_pool", "amax_pool", "channel_scale", "spatial_conv", "few_channel_conv", "eager", "recording",
           "plain_operators"]

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


def _plain_wanted() -> bool:
    """Inside :func:`plain_operators`, or under ``torch.jit`` tracing or scripting (ONNX export)."""
    return getattr(_local, "plain", False) or torch.jit.is_tracing() or torch.jit.is_scripting()


def eager(*tensors) -> bool:
    """Whether ``tensors`` are real tensors run eagerly: no tracer, scripting or compiler watching
    (they get the plain operators) and not inside :func:`plain_operators`."""
    if _plain_wanted() or torch.compiler.is_compiling():
        return False
    return all(type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter) for t in tensors)


def recording(*tensors) -> bool:
    """Whether eager autograd records an operation on ``tensors`` (:func:`eager`, grad enabled, one of
    them requiring grad)."""
    return torch.is_grad_enabled() and eager(*tensors) and any(t.requires_grad for t in tensors)


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


_FOLD = 4  # pixels per side of the blocks folded into channels


@functools.cache
def _folded_index(cin: int, cout: int, k: int) -> torch.Tensor:
    """Where each tap of the folded kernel comes from: an index into the flattened (cout, cin, k, k)
    weight followed by one zero (``cout * cin * k * k`` for the taps that fall outside the kernel).

    Output pixel ``(I*s + p, J*s + q)`` reads input pixel ``(I*s + p + u - k//2, ...)``; written as a
    block offset ``dI`` and an offset ``a`` inside the block, ``u = dI*s + a - p + k//2``. For odd
    ``k <= 2*s + 1`` the block offsets are -1, 0, 1: a 3x3 kernel with padding 1 on the folded grid.
    """
    s, pad = _FOLD, k // 2
    d = torch.arange(3)[:, None] - 1  # block offset dI (rows) ...
    a = torch.arange(s)[None, :]      # ... and offset inside the block
    p = torch.arange(s)
    u = d[None, :, :] * s + a[None] - p[:, None, None] + pad  # (p, dI, a): the tap row
    u, ok = u.permute(0, 2, 1).clamp(0, k - 1), ((u >= 0) & (u < k)).permute(0, 2, 1)  # (p, a, dI)
    # idx[o, p, q, c, a, e, dI, dJ] for the folded weight [o*s*s + p*s + q, c*s*s + a*s + e, dI, dJ]; the
    # column taps v (from q, e, dJ) follow the same table as the row taps u (from p, a, dI).
    rows, cols = (None, slice(None), None, None, slice(None), None, slice(None), None), \
        (None, None, slice(None), None, None, slice(None), None, slice(None))
    o, c = torch.arange(cout), torch.arange(cin)
    flat = ((o[:, None, None, None, None, None, None, None] * cin + c[None, None, None, :, None, None, None, None]) * k
            + u[rows]) * k + u[cols]
    valid = ok[rows] & ok[cols]
    idx = torch.where(valid, flat, cout * cin * k * k)
    return idx.reshape(cout * s * s, cin * s * s, 3, 3)


def few_channel_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` for a convolution between few channels (CBAM's
    and triplet attention's 2 -> 1 channel 7x7), computed on 4x4 pixel blocks folded into channels.

    PyTorch's CPU convolution runs 2 -> 1 channels as a thin loop (12.8 ms forward and backward for
    128x2x32x32 in channels-last, the faster layout, on this project's CPU); folded, the same result is a
    dense 32 -> 16 channel 3x3 convolution on a grid 4x smaller (2.3 ms), whose kernel is the 7x7 one
    scattered by a fixed index (zeros where a tap falls outside it). Any H, W: the grid is padded with
    zeros to a multiple of 4, which the convolution's own zero padding would have read.
    """
    b, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    s = _FOLD
    hp, wp = -h % s, -w % s
    q = F.pixel_unshuffle(F.pad(x, (0, wp, 0, hp)) if hp or wp else x, s)
    taps = torch.cat([weight.reshape(-1), weight.new_zeros(1)])
    # Under torch.compile the index is traced from its definition (constant-folded), not from the cache.
    index = (_folded_index.__wrapped__ if torch.compiler.is_compiling() else _folded_index)(cin, cout, k)
    y = F.pixel_shuffle(F.conv2d(q, taps[index], padding=1), s)
    if hp or wp:
        y = y[:, :, :h, :w]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _foldable(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and k <= 2 * _FOLD + 1 and conv.stride == (1, 1)
            and conv.padding == (k // 2, k // 2) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def spatial_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a spatial gate's convolution between few channels, by the fastest of three
    ways measured on this project's CPU (2 -> 1 channels, 7x7):

    * :func:`few_channel_conv` in training from 4096 output pixels a batch on (32x8x8: even with the
      others; 128x8x8: 0.6 against 1.0 ms forward and backward) and in inference from 28x28 on (16x28x28:
      0.23 against 0.37 ms; at 14x14 and below it is slower), for a convolution it computes (stride 1,
      "same" padding, odd kernel up to 9, no groups or dilation);
    * otherwise the module in channels-last in training (forward and backward 3-4x faster than NCHW)
      and in NCHW in inference (10-25% faster forward than channels-last).

    Tracers (``torch.fx``, ``torch.jit``) see the module on a channels-last input: the inference
    rewrite folds the BN that follows into it, ONNX export writes one Conv. ``torch.compile`` gets the
    folded form where it is faster, as eager code does."""
    if _plain_wanted() or not isinstance(x, torch.Tensor) or x.dim() != 4:  # a torch.fx Proxy is no Tensor
        return conv(x.contiguous(memory_format=torch.channels_last))
    b, _, h, w = x.shape
    training = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    if _foldable(conv) and (b * h * w >= 4096 if training else h * w >= 28 * 28):
        return few_channel_conv(x, conv.weight, conv.bias)
    return conv(x.contiguous(memory_format=torch.channels_last) if training else x)
