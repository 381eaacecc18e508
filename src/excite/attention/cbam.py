"""Convolutional Block Attention Module (Woo et al., CBAM, ECCV 2018).

Channel gate: average- and max-pooled descriptors through one shared MLP, summed, sigmoid.
Spatial gate: the channel-wise max and mean maps, a 7x7 convolution (+ BN as in the reference code), sigmoid.
The paper's best arrangement (its Table 3) is channel then spatial, the default here.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.base import pointwise
from excite.attention.fused import amax_pool, channel_scale, mean_pool, spatial_conv

# torch.fx keeps a wrapped function as one call only in the module that wraps it: the inference rewrite
# traces blocks through this module's forward.
torch.fx.wrap("pointwise")

ARRANGEMENTS = ("channel-spatial", "spatial-channel", "parallel", "channel", "spatial")


class ChannelGate(nn.Module):
    """Returns the (B, C, 1, 1) channel attention map (before it multiplies the input)."""

    def __init__(self, channels: int, reduction: float = 16, *, bias: bool = True, min_channels: int = 1):
        super().__init__()
        check_range("reduction", reduction, low=1, high=channels)
        hidden = max(min_channels, int(channels // reduction))
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The shared MLP runs once on both pooled maps, stacked along the batch (one call per layer
        # instead of two), as matrix products (:func:`~excite.attention.base.pointwise`).
        # (Pools and the channel product through excite.attention.fused: cheaper backward passes in training.)
        y = torch.cat([mean_pool(x, (2, 3)), amax_pool(x, (2, 3))])
        y = pointwise(self.act(pointwise(y, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)
        avg, mx = y.chunk(2)
        return torch.sigmoid(avg + mx)


class SpatialGate(nn.Module):
    """Returns the (B, 1, H, W) spatial attention map from [max, mean] over channels."""

    def __init__(self, kernel_size: int = 7, *, bn: bool = True):
        super().__init__()
        check_range("spatial_kernel", kernel_size, low=1, odd=True)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not bn)
        # BN momentum 0.01 as in the reference implementation (Jongchan/attention-module, BasicConv).
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 2 -> 1 channel convolution through spatial_conv: PyTorch's CPU kernel is a thin loop for it.
        pooled = torch.cat([amax_pool(x, 1), mean_pool(x, 1)], dim=1)
        return torch.sigmoid(self.bn(spatial_conv(pooled, self.conv)))


@register_attention("cbam")
class CBAM(nn.Module):
    """CBAM with a configurable arrangement (for the paper's arrangement ablation).

    Args:
        channels: C.
        reduction: MLP reduction of the channel gate (16).
        spatial_kernel: spatial convolution size (7).
        arrangement: ``"channel-spatial"`` (paper), ``"spatial-channel"``, ``"parallel"`` (both maps from
            the same input, applied together), ``"channel"`` or ``"spatial"`` alone.
        bias: biases in the channel MLP (reference code: yes; timm's CBAM: no).
    """

    paper = "Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018"
    kind = "channel+spatial"
    dim_reduction = True
    interaction = "global"
    params_formula = "2C^2/r + C/r + C + 2k^2 + 2"

    def __init__(
        self, channels: int, reduction: float = 16, *, spatial_kernel: int = 7,
        arrangement: str = "channel-spatial", bias: bool = True,
    ):
        super().__init__()
        if arrangement not in ARRANGEMENTS:
            raise ExciteError(f"arrangement={arrangement!r} is not valid; expected one of {', '.join(ARRANGEMENTS)}")
        self.arrangement = arrangement
        self.channel = ChannelGate(channels, reduction, bias=bias) if arrangement != "spatial" else None
        self.spatial = SpatialGate(spatial_kernel) if arrangement != "channel" else None

    def _last_multiply(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, g)`` with ``self(x) = y * g``: the last multiply is left to ``forward``, where the
        inference rewrite (``excite.models.rewrite``) finds it next to the residual addition."""
        a = self.arrangement
        if a == "channel":
            return x, self.channel(x)
        if a == "spatial":
            return x, self.spatial(x)
        if a == "parallel":
            return channel_scale(x, self.channel(x)), self.spatial(x)
        if a == "channel-spatial":
            x = channel_scale(x, self.channel(x))
            return x, self.spatial(x)
        x = x * self.spatial(x)
        return x, self.channel(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, g = self._last_multiply(x)
        return y * g
