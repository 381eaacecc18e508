"""Triplet attention (Misra et al., WACV 2021; reference code landskape-ai/triplet-attention).

Three branches, each a CBAM-style spatial gate (Z-pool = [max, mean] over the first axis, 7x7 conv
2 -> 1 without bias, BN, sigmoid) applied to a rotated view of the tensor: (C, W) planes pooled over H,
(H, C) planes pooled over W, and (H, W) planes pooled over C. The outputs are averaged: cross-dimension
interaction at 3 x (2 k^2 + 2) parameters, whatever C.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.attention.fused import amax_pool, mean_pool, spatial_conv
from excite.core.errors import check_range
from excite.core.registry import register_attention


class _BasicConv(nn.Module):
    """conv (no bias) + BN, the reference code's ``BasicConv`` without ReLU (keys ``conv``, ``bn``)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(spatial_conv(x, self.conv))


class _AttentionGate(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = _BasicConv(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([amax_pool(x, 1), mean_pool(x, 1)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


@register_attention("triplet")
class TripletAttention(nn.Module):
    """Triplet attention; ``no_spatial=True`` drops the (H, W) branch (the paper's ablation)."""

    paper = "Misra et al., Rotate to Attend: Convolutional Triplet Attention Module, WACV 2021"
    kind = "channel+spatial"
    dim_reduction = False
    interaction = "cross-dimension (local)"
    params_formula = "3 (2k^2 + 2), k = 7"

    def __init__(self, channels: int, *, kernel_size: int = 7, no_spatial: bool = False):
        super().__init__()
        check_range("kernel_size", kernel_size, low=1, odd=True)
        self.no_spatial = no_spatial
        self.cw = _AttentionGate(kernel_size)
        self.hc = _AttentionGate(kernel_size)
        self.hw = None if no_spatial else _AttentionGate(kernel_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference ResNet's init, whose loop covers these convs too: He normal (fan_out), BN 1 / 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # (H, C, W) view: pooled over H
        x2 = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # (W, H, C) view: pooled over W
        if self.hw is None:
            return 0.5 * (x1 + x2)
        return (self.hw(x) + x1 + x2) * (1 / 3)
