"""Effective squeeze-and-excitation (Lee & Park, CenterMask, CVPR 2020; VoVNetV2).

SE with one C x C layer instead of the two reduced ones (the reduction loses channel information,
the paper's Sec. 3.2) and a hard sigmoid gate. Key layout ``fc.weight`` / ``fc.bias`` as the authors'
``eSEModule`` and timm's ``EffectiveSEModule``.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention
from excite.attention.layers import hard_sigmoid


@register_attention("ese")
class EffectiveSE(ChannelAttention):
    """eSE: global average pool, one 1x1 conv C -> C with bias, hard sigmoid, scale."""

    paper = "Lee & Park, CenterMask: Real-Time Anchor-Free Instance Segmentation, CVPR 2020"
    kind = "channel"
    dim_reduction = False
    interaction = "global"
    params_formula = "C^2 + C"

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init, which the authors' code keeps."""
        self.fc.reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        return hard_sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
