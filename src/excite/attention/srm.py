"""Style-based Recalibration Module (Lee et al., SRM, ICCV 2019; reference code
hyunjaelee410/style-based-recalibration-module).

Style pooling (per-channel mean and standard deviation), style integration (a channel-wise fully
connected layer: two weights per channel, no interaction between channels), BN, sigmoid, scale.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention


@register_attention("srm")
class SRM(ChannelAttention):
    """SRM: 2C weights of the channel-wise FC plus 2C of its BN (4C per module).

    The reference code keeps the CFC as a ``(C, 2)`` parameter ``cfc`` initialised to zero and a
    ``BatchNorm2d``; the same layout here. The standard deviation is the unbiased one of the code
    (``torch.std``); a 1x1 map (one value) gives NaN there, so the variance is clamped at 0 on top.
    """

    paper = "Lee et al., SRM: A Style-based Recalibration Module for Convolutional Neural Networks, ICCV 2019"
    kind = "channel"
    dim_reduction = False
    interaction = "none"
    params_formula = "4C"

    def __init__(self, channels: int):
        super().__init__()
        self.cfc = nn.Parameter(torch.empty(channels, 2))
        self.bn = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: CFC weights 0, BN scale 1 and shift 0 (the gate starts at sigmoid(0) = 0.5)."""
        nn.init.zeros_(self.cfc)
        self.bn.reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        mean = flat.mean(-1)
        n = flat.shape[-1]
        # Unbiased std as torch.std, written out so that one value (n = 1) gives 0 instead of NaN.
        var = (flat - mean.unsqueeze(-1)).pow(2).sum(-1) / max(n - 1, 1)
        z = mean * self.cfc[:, 0] + var.sqrt() * self.cfc[:, 1]
        return torch.sigmoid(self.bn(z.reshape(b, c, 1, 1)))
