"""Coordinate attention (Hou et al., CVPR 2021; reference code houqb/CoordAttention).

Pool along W and along H separately (two direction-aware 1D descriptors), concatenate, a shared 1x1
conv C -> mip with BN and h-swish, split, one 1x1 conv per direction back to C, sigmoid: the output is
``x * a_h * a_w``. ``mip = max(8, C // reduction)``, reduction 32, convs with bias, as the reference code.
timm's ``CoordAttn`` is the same graph with other widths and no biases; ``rd_channels`` and ``bias``
reproduce it and its keys (``conv1``, ``bn1``, ``conv_h``, ``conv_w``) are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.core.errors import check_range
from excite.core.registry import register_attention


@register_attention("coord")
class CoordAttention(nn.Module):
    """Coordinate attention: 3 C mip + 3 mip + 2 C parameters (with biases)."""

    paper = "Hou et al., Coordinate Attention for Efficient Mobile Network Design, CVPR 2021"
    kind = "channel+spatial"
    dim_reduction = True
    interaction = "global"
    params_formula = "3C mip + 3 mip + 2C (mip = max(8, C/32))"

    def __init__(self, channels: int, reduction: float = 32, *, min_channels: int = 8, rd_channels: int | None = None,
                 bias: bool = True):
        super().__init__()
        if rd_channels is None:
            check_range("reduction", reduction, low=1)  # mip's floor of 8 keeps narrow layers usable
            rd_channels = max(min_channels, int(channels // reduction))
        check_range("rd_channels", rd_channels, low=1, integer=True)
        self.conv1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(rd_channels)
        self.conv_h = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init and BN 1 / 0 (the reference code sets none of its own)."""
        for m in (self.conv1, self.bn1, self.conv_h, self.conv_w):
            m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_h = x.mean(3, keepdim=True)  # (B, C, H, 1): pooled along W
        x_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): pooled along H
        y = F.hardswish(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))
        return x * a_w * a_h
