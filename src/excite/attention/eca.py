"""Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020).

Global average pool, then a 1D convolution of size k across the channel axis (local cross-channel
interaction, no dimensionality reduction, no bias, zero padding), sigmoid, scale. k adapts to C.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """psi(C) = |log2(C)/gamma + b/gamma|_odd, computed exactly as the paper's reference code does:
    ``t = int(abs((log2(C) + b) / gamma)); k = t if t % 2 else t + 1``."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def _resolve_k(channels: int, k_size, gamma: float, b: float) -> int:
    check_range("channels", channels, low=1, integer=True)  # log2(0) would be a "math domain error"
    if k_size == "adaptive":
        check_range("gamma", gamma, low=1e-6)
        check_range("b", b)
        return eca_kernel_size(channels, gamma, b)
    if isinstance(k_size, str):
        raise ExciteError(f"k_size={k_size!r} is not valid; expected 'adaptive' or an odd integer >= 1")
    return check_range("k_size", k_size, low=1, odd=True)


@register_attention("eca")
class ECA(ChannelAttention):
    """ECA: one shared k-tap kernel slides across the C pooled values (k parameters).

    Args:
        channels: C.
        k_size: ``"adaptive"`` (psi(C) with ``gamma``, ``b``) or an odd integer.
    """

    paper = "Wang et al., ECA-Net: Efficient Channel Attention for Deep CNNs, CVPR 2020"
    kind = "channel"
    dim_reduction = False
    interaction = "local"
    params_formula = "k"

    def __init__(self, channels: int, k_size: int | str = "adaptive", *, gamma: float = 2, b: float = 1):
        super().__init__()
        k = _resolve_k(channels, k_size, gamma, b)
        self.k_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)  # key `conv.weight` as the official code

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        s = y.flatten(1).unsqueeze(1)  # (B, 1, C): channels as the 1D sequence
        # (self.training, not the weight's requires_grad: under the inference rewrite's torch.fx trace the
        # weight is a proxy, which no Python condition may read.)
        if self.training and torch.is_grad_enabled() and not torch.jit.is_tracing():
            # Training: the k taps as an unfold and a product, whose forward and backward together
            # take a third to a half of Conv1d's on these (B, 1, C) sequences on this project's CPU;
            # not under a tracer (the ONNX exporter cannot take unfold with a free batch dimension).
            pad = self.conv.padding[0]
            s = (F.pad(s, (pad, pad)).unfold(2, self.k_size, 1) * self.conv.weight).sum(-1)
        else:
            s = self.conv(s)
        return torch.sigmoid(s.squeeze(1))[:, :, None, None]


@register_attention("eca_ns")
class ECANS(ChannelAttention):
    """ECA-NS: every channel has its own k-tap kernel over its neighbours (no weight sharing, k x C parameters)."""

    paper = "Wang et al., ECA-Net, CVPR 2020, Table 2 (ECA-NS)"
    kind = "channel"
    dim_reduction = False
    interaction = "local"
    params_formula = "k C"

    def __init__(self, channels: int, k_size: int | str = "adaptive", *, gamma: float = 2, b: float = 1):
        super().__init__()
        k = _resolve_k(channels, k_size, gamma, b)
        self.k_size = k
        self.weight = nn.Parameter(torch.empty(channels, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the same default as Conv1d(1, 1, k)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        s = y.flatten(1)  # (B, C)
        pad = (self.k_size - 1) // 2
        padded, c = F.pad(s, (pad, pad)), s.shape[1]
        # Tap j of every channel's own kernel meets the neighbour j - pad: k shifted slices (not unfold, which
        # the ONNX exporter cannot take with a free batch dimension).
        s = sum(padded[:, j:j + c] * self.weight[:, j] for j in range(self.k_size))
        return torch.sigmoid(s)[:, :, None, None]
