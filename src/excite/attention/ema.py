"""Efficient Multi-scale Attention (Ouyang et al., EMA, ICASSP 2023; reference code
YOLOonMe/EMA-attention-module).

Channels are split into G groups. Per group, a 1x1 branch (coordinate-attention-like: pool along H and
W, a shared 1x1 conv, two sigmoid gates, GroupNorm) and a 3x3 branch; cross-spatial learning: each
branch's pooled, softmaxed channel vector weighs the other branch's map, the two products are summed
into one spatial map per group, and its sigmoid gates the group. Parameters: 10 (C/G)^2 + 4 C/G.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.layers import fit_groups


@register_attention("ema")
class EMA(nn.Module):
    """EMA with G = ``factor`` groups (32 in the paper; narrow layers use the largest G dividing C)."""

    paper = "Ouyang et al., Efficient Multi-Scale Attention Module with Cross-Spatial Learning, ICASSP 2023"
    kind = "channel+spatial"
    dim_reduction = False
    interaction = "within groups"
    params_formula = "10 (C/G)^2 + 4 C/G (G = 32)"

    def __init__(self, channels: int, factor: int | None = None):
        super().__init__()
        self.groups = fit_groups("factor", channels, factor, 32)
        cg = channels // self.groups
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, 1)
        self.conv3x3 = nn.Conv2d(cg, cg, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's defaults (the reference code sets none of its own)."""
        for m in (self.gn, self.conv1x1, self.conv3x3):
            m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        bg, cg = b * self.groups, c // self.groups
        gx = x.reshape(bg, cg, h, w)
        x_h = gx.mean(3, keepdim=True)  # (bg, cg, H, 1)
        x_w = gx.mean(2, keepdim=True).transpose(2, 3)  # (bg, cg, W, 1)
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        x_h, x_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(gx * torch.sigmoid(x_h) * torch.sigmoid(x_w.transpose(2, 3)))
        x2 = self.conv3x3(gx)
        a1 = torch.softmax(x1.mean((2, 3)).reshape(bg, 1, cg), dim=-1)
        a2 = torch.softmax(x2.mean((2, 3)).reshape(bg, 1, cg), dim=-1)
        weights = torch.bmm(a1, x2.reshape(bg, cg, h * w)) + torch.bmm(a2, x1.reshape(bg, cg, h * w))
        return (gx * torch.sigmoid(weights.reshape(bg, 1, h, w))).reshape(b, c, h, w)
