"""Shuffle attention, SA-Net (Zhang & Yang, ICASSP 2021; reference code wofmanaf/SA-Net).

The channels are split into G groups, each group into two halves: a channel branch (global average
pool, per-channel scale and shift, sigmoid) and a spatial branch (GroupNorm, per-channel scale and shift,
sigmoid); the halves are concatenated and the channels shuffled (2 groups) so the halves mix.
Parameters: 6 per channel of a half-group, 3C/G in all.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.layers import fit_groups


@register_attention("sa")
class ShuffleAttention(nn.Module):
    """SA with G groups (64 in the paper; narrow layers use the largest G with 2G dividing C)."""

    paper = "Zhang & Yang, SA-Net: Shuffle Attention for Deep Convolutional Neural Networks, ICASSP 2021"
    kind = "channel+spatial"
    dim_reduction = False
    interaction = "none (shuffle mixes)"
    params_formula = "3C/G (G = 64)"

    def __init__(self, channels: int, groups: int | None = None):
        super().__init__()
        self.groups = fit_groups("groups", channels, groups, 64, per_group=2)
        half = channels // (2 * self.groups)
        self.cweight = nn.Parameter(torch.empty(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.empty(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.empty(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.empty(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: scales 0, shifts 1, GroupNorm 1 / 0."""
        nn.init.zeros_(self.cweight)
        nn.init.ones_(self.cbias)
        nn.init.zeros_(self.sweight)
        nn.init.ones_(self.sbias)
        self.gn.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        x0, x1 = x.chunk(2, dim=1)
        xn = x0 * torch.sigmoid(self.cweight * x0.mean((2, 3), keepdim=True) + self.cbias)
        xs = x1 * torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
        out = torch.cat([xn, xs], dim=1).reshape(b, c, h, w)
        # Channel shuffle with 2 groups: (B, 2, C/2, H, W) -> (B, C/2, 2, H, W).
        return out.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
