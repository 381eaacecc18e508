"""Bottleneck Attention Module (Park et al., BAM, BMVC 2018; reference code Jongchan/attention-module).

Channel branch: global average pool, MLP C -> C/r (+ BN, ReLU) -> C; spatial branch: 1x1 conv
C -> C/r, two 3x3 convs with dilation 4, 1x1 conv C/r -> 1 (BN + ReLU after each but the last). The two
maps are broadcast to C x H x W, summed, and the output is ``x * (1 + sigmoid(M_c + M_s))``.
The paper puts one BAM at each bottleneck of the network (between stages: after ResNet's layer1, 2, 3).
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.errors import check_range
from excite.core.registry import register_attention
from excite.attention.layers import reduced


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, hidden: int, num_layers: int):
        super().__init__()
        widths = [channels] + [hidden] * num_layers + [channels]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 2):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.BatchNorm1d(widths[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.gate_c = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_c(x.mean((2, 3)))[:, :, None, None]


class _SpatialGate(nn.Module):
    def __init__(self, channels: int, hidden: int, num_convs: int, dilation: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(num_convs):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(hidden),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.gate_s = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_s(x)


@register_attention("bam")
class BAM(nn.Module):
    """BAM: ``x * (1 + sigmoid(channel(x) + spatial(x)))``.

    Args:
        channels: C.
        reduction: r of both branches (16).
        dilation: of the spatial 3x3 convs (4).
        num_convs: dilated convs in the spatial branch (2); ``num_layers``: hidden layers of the MLP (1).
    """

    paper = "Park et al., BAM: Bottleneck Attention Module, BMVC 2018"
    kind = "channel+spatial"
    dim_reduction = True
    interaction = "global"
    params_formula = "3C^2/r + 18(C/r)^2 + C + 13C/r + 1"

    def __init__(self, channels: int, reduction: float = 16, *, dilation: int = 4, num_convs: int = 2,
                 num_layers: int = 1):
        super().__init__()
        hidden = reduced("reduction", channels, reduction)
        check_range("dilation", dilation, low=1, integer=True)
        check_range("num_convs", num_convs, low=0, integer=True)
        check_range("num_layers", num_layers, low=1, integer=True)
        self.channel_att = _ChannelGate(channels, hidden, num_layers)
        self.spatial_att = _SpatialGate(channels, hidden, num_convs, dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference code's init: He normal (fan_out) for convs, BN 1 / 0, default Linear init
        (its ResNet init loop covers the BAM modules too)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + torch.sigmoid(self.channel_att(x) + self.spatial_att(x)))
