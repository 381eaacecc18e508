"""Convolution weights prepacked for oneDNN once, instead of on every call.

PyTorch's eager CPU convolution hands oneDNN the weight in PyTorch's plain layout, and oneDNN reorders
it into its blocked layout on every call. For ResNet-50 at batch 1 that is a copy of every weight
(100 MB) per forward pass, and it is why the late, weight-heavy convolutions (512 and 2048 channels on
7x7 maps) ran 1.6-1.8x slower than ONNX Runtime's before this module (``benchmarks/conv_gap.py``; its
committed file, measured with it, has them within about 5%).
:class:`PrepackedConv2d` reorders the weight once per input shape through PyTorch's own oneDNN
operators (``mkldnn._reorder_convolution_weight`` and ``mkldnn._convolution_pointwise``, the ones
Inductor's freezing uses) and keeps the result; everything else about the module, its parameters and
``state_dict`` included, is ``nn.Conv2d``'s.

The packed path runs only where it computes exactly what ``nn.Conv2d`` does: float32 on the CPU, no
autograd recording, no tracer, compiler or ONNX export watching (they see the plain convolution), and
the weight unchanged since it was packed (its version counter and storage are part of the cache key,
so ``load_state_dict`` or a change of memory format repacks; a weight created under
``torch.inference_mode`` has no version counter, and only a new storage repacks it).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PrepackedConv2d", "prepack_convolutions", "prepack_available"]

_MAX_SHAPES = 4  # packed copies kept per convolution; a fifth input shape starts the cache again
# The packed call costs 20-40 us more than the plain one before any arithmetic, and saves the per-call
# reorder of the weight (benchmarks/prepack_threshold.py): it pays from weights of about 512 KB (ResNet-50's
# 3x3 convolutions from 128 channels, its 1x1 convolutions to and from 1024 and more, SE's layer4 gate at
# batch 16), not for smaller ones (SE's and CBAM's gates at batch 1, every ResNet-20 convolution), which
# keep the plain call.
_MIN_WEIGHT_BYTES = 512 * 1024
# A call with a post-op (:meth:`PrepackedConv2d.fused`) also saves a pass over the output (a ReLU's read
# and write), which pays for the packed call's extra microseconds from about 64K output elements on.
_MIN_FUSED_OUTPUT = 1 << 16


def prepack_available() -> bool:
    """Whether this PyTorch build has oneDNN's prepacking operators."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_convolution_weight", "_convolution_pointwise"))


class PrepackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose inference calls use a weight reordered for oneDNN once per input shape."""

    def _packable(self, x: torch.Tensor, fused: bool = False) -> bool:
        if not (self._worth_it(x.shape) or fused and self._output_numel(x.shape) >= _MIN_FUSED_OUTPUT):
            return False  # first: it turns most small convolutions away at once
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu" or self.weight.device.type != "cpu":
            return False
        if self.weight.dtype != torch.float32 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        return not torch.onnx.is_in_onnx_export()

    def _worth_it(self, shape) -> bool:
        """A weight large enough for the packed call to pay (see ``_MIN_WEIGHT_BYTES``)."""
        return self.weight.numel() * self.weight.element_size() >= _MIN_WEIGHT_BYTES

    def _output_numel(self, shape) -> int:
        """Elements of the output for an input of ``shape`` (batch x channels x height x width)."""
        if len(shape) != 4 or isinstance(self.padding, str):
            return 0
        n = shape[0] * self.out_channels
        for size, k, s, p, d in zip(shape[2:], self.kernel_size, self.stride, self.padding, self.dilation):
            n *= max(0, (size + 2 * p - d * (k - 1) - 1) // s + 1)
        return n

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        cache = self.__dict__.setdefault("_packed_weights", {})
        w = self.weight
        try:
            version = w._version
        except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
            version = None
        key = (tuple(x.shape), version, w.data_ptr(), w.stride())
        packed = cache.get(key)
        if packed is None:
            if len(cache) >= _MAX_SHAPES:
                cache.clear()
            packed = cache[key] = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach().contiguous(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable(x):
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed(x), self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "")

    def fused(self, x: torch.Tensor, *, relu: bool = False) -> torch.Tensor | None:
        """``conv(x)``, with ReLU (``relu``) as a oneDNN post-op of the one packed call: the output is
        written once, no second pass reads it. ``None`` where the packed path does not run (see the
        module docstring); the caller then computes the same with separate operations.

        (A (B, C, 1, 1) attention gate as a binary post-op was measured too, ``benchmarks/post_ops.py``:
        up to 9% slower than the convolution followed by ``addcmul`` into its output.)"""
        if not self._packable(x, fused=True):
            return None
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed(x), self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "relu" if relu else "none", [], "")

    def __getstate__(self):  # copies and pickles carry the parameters, not the packed cache
        state = self.__dict__.copy()
        state.pop("_packed_weights", None)
        return state


def prepack_convolutions(model: nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` of ``model`` (exactly that class: subclasses keep their own
    forward) into a :class:`PrepackedConv2d`, in place. The module keeps its identity, parameters,
    hooks and ``state_dict``: only its class changes, so references to it held elsewhere (attention
    modules, hooks, a user's own variables) stay valid. Returns the number converted; 0 where
    oneDNN's prepacking is not available."""
    if not prepack_available():
        return 0
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = PrepackedConv2d
            n += 1
    return n
