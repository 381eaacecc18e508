"""Spatial Group-wise Enhance (Li et al., SGE, 2019; reference code implus/PytorchInsight).

The channels are split into G groups (semantic sub-features); in each group, every position's
similarity to the group's pooled vector (a dot product over the group's channels) is normalised over
positions, scaled and shifted by one learned pair per group, and gates the group's features. 2G parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.layers import fit_groups


@register_attention("sge")
class SpatialGroupEnhance(nn.Module):
    """SGE with G groups (64 in the paper; layers too narrow for 64 use the largest count that divides C)."""

    paper = "Li et al., Spatial Group-wise Enhance: Improving Semantic Feature Learning in CNNs, arXiv 2019"
    kind = "spatial (grouped)"
    dim_reduction = False
    interaction = "within groups"
    params_formula = "2G (G = 64)"

    def __init__(self, channels: int, groups: int | None = None):
        super().__init__()
        self.groups = fit_groups("groups", channels, groups, 64)
        self.weight = nn.Parameter(torch.empty(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(1, self.groups, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: weight 0, bias 1."""
        nn.init.zeros_(self.weight)
        nn.init.ones_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = x.reshape(b * self.groups, c // self.groups, h, w)
        t = (g * g.mean((2, 3), keepdim=True)).sum(1).reshape(b * self.groups, h * w)
        t = t - t.mean(1, keepdim=True)
        n = max(h * w - 1, 1)  # torch.std's unbiased estimate as the code (NaN-free for a 1x1 map)
        t = t / ((t.pow(2).sum(1, keepdim=True) / n).sqrt() + 1e-5)
        t = t.reshape(b, self.groups, h, w) * self.weight + self.bias
        return (g * torch.sigmoid(t.reshape(b * self.groups, 1, h, w))).reshape(b, c, h, w)
