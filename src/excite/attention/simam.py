"""SimAM: a parameter-free attention module (Yang et al., ICML 2021; reference code ZjjConan/SimAM).

Each neuron's weight is the inverse of its minimal energy (the paper's Eq. 5-7, from spatial
suppression in neuroscience): ``e_inv = (x - mu)^2 / (4 (sigma^2 + lambda)) + 0.5`` with the channel's
mean mu and variance sigma^2 = sum (x - mu)^2 / (HW - 1); output ``x * sigmoid(e_inv)``. No parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.errors import check_range
from excite.core.registry import register_attention


@register_attention("simam")
class SimAM(nn.Module):
    """SimAM with the paper's lambda = 1e-4 (``e_lambda``)."""

    paper = "Yang et al., SimAM: A Simple, Parameter-Free Attention Module for CNNs, ICML 2021"
    kind = "channel+spatial"
    dim_reduction = False
    interaction = "none"
    params_formula = "0"

    def __init__(self, channels: int, *, e_lambda: float = 1e-4):
        super().__init__()
        check_range("e_lambda", e_lambda, low=1e-12)
        self.e_lambda = float(e_lambda)

    def reset_parameters(self) -> None:
        """Nothing to initialise (parameter-free)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)  # HW - 1 as the code; a 1x1 map (0/0 there) gives x * sigmoid(0.5)
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        e_inv = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * torch.sigmoid(e_inv)
