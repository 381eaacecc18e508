"""Gated Channel Transformation (Yang et al., CVPR 2020; reference code z-x-yang/GCT).

Global context embedding ``s_c = alpha_c * ||x_c||_2`` (or the l1 norm), channel normalisation
``s_c * sqrt(C) / ||s||_2`` (written, as the code, as a division by the root mean square over channels),
and the gate ``1 + tanh(gamma_c * s_hat_c + beta_c)``. With the authors' init (alpha 1, gamma 0,
beta 0) the gate is exactly 1: GCT starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention

MODES = ("l2", "l1")


@register_attention("gct")
class GCT(ChannelAttention):
    """GCT: 3C parameters (alpha, gamma, beta), no dimensionality reduction.

    Args:
        channels: C.
        mode: ``"l2"`` (the paper's default embedding) or ``"l1"``.
        epsilon: added before the square roots (1e-5, the reference code).
        after_relu: with ``mode="l1"``, the input is known non-negative (skip the absolute value).

    The paper puts GCT before every convolution of the network; in a block's attention slot it gates
    the residual branch like SE. Parameters per module are the same (3C) either way.
    """

    paper = "Yang et al., Gated Channel Transformation for Visual Recognition, CVPR 2020"
    kind = "channel"
    dim_reduction = False
    interaction = "global (normalisation)"
    params_formula = "3C"

    def __init__(self, channels: int, *, mode: str = "l2", epsilon: float = 1e-5, after_relu: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ExciteError(f"mode={mode!r} is not valid; expected one of {', '.join(MODES)}")
        check_range("epsilon", epsilon, low=0)
        self.mode, self.epsilon, self.after_relu = mode, float(epsilon), after_relu
        self.alpha = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: alpha = 1, gamma = beta = 0 (the gate starts at exactly 1)."""
        nn.init.ones_(self.alpha)
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.beta)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "l2":
            emb = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).sqrt() * self.alpha
            norm = self.gamma / (emb.pow(2).mean(1, keepdim=True) + self.epsilon).sqrt()
        else:
            a = x if self.after_relu else x.abs()
            emb = a.sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (emb.abs().mean(1, keepdim=True) + self.epsilon)
        return 1.0 + torch.tanh(emb * norm + self.beta)
