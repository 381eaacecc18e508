"""ResNeSt: split-attention networks (Zhang et al., CVPRW 2022; reference code zhanghang1989/ResNeSt).

Split attention (the paper's Sec. 3): the 3x3 convolution of the bottleneck produces R = radix
feature-map groups (a grouped conv, cardinality x radix groups) + BN + ReLU; their sum is pooled, a
1x1 conv (+ BN + ReLU) reduces it, a 1x1 conv expands it to R x C, and a softmax over the R splits
(a sigmoid for R = 1) weighs them. ResNeSt-50 also has the "ResNet-D" tricks of its Sec. 5.1: a deep
stem (three 3x3 convs, 32-32-64), average-pool downsampling in the shortcut, and the stride moved to
an average pool after the split-attention conv ("avd"). Key layout of the reference code and timm
(``conv2.conv``, ``conv2.bn0``, ``conv2.fc1``, ``conv2.bn1``, ``conv2.fc2``), so their weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import make_attention
from excite.attention.layers import make_divisible
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.resnet import ResidualAttention, ResNet, conv1x1, conv3x3

__all__ = ["SplitAttn", "ResNeStBottleneck", "ResNeSt"]


class SplitAttn(nn.Module):
    """Split-attention conv: ``in_channels`` -> ``out_channels`` with ``radix`` splits and ``groups`` cardinal groups."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, groups: int = 1, radix: int = 2,
                 rd_ratio: float = 0.25, rd_divisor: int = 8):
        super().__init__()
        check_range("radix", radix, low=1, integer=True)
        self.radix, self.groups = radix, groups
        mid = out_channels * radix
        # Reference code: inter_channels = max(in_channels * radix // reduction_factor(4), 32).
        attn = make_divisible(in_channels * radix * rd_ratio, rd_divisor, min_value=32)
        self.conv = nn.Conv2d(in_channels, mid, 3, stride, 1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn, mid, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        splits = x.reshape(b, self.radix, rc // self.radix, h, w) if self.radix > 1 else x.unsqueeze(1)
        gap = splits.sum(1).mean((2, 3), keepdim=True)
        a = self.fc2(self.act1(self.bn1(self.fc1(gap))))  # (B, R*C, 1, 1)
        if self.radix > 1:
            # r-softmax: across the splits, within each cardinal group (reference code's rSoftMax).
            a = F.softmax(a.view(b, self.groups, self.radix, -1).transpose(1, 2), dim=1)
            a = a.reshape(b, self.radix, rc // self.radix, 1, 1)
        else:
            a = torch.sigmoid(a).unsqueeze(1)
        return (splits * a).sum(1)


class ResNeStBottleneck(ResidualAttention, nn.Module):
    """1x1 -> split-attention 3x3 (stride moved to an average pool after it: "avd") -> 1x1."""

    expansion = 4
    radix = 2

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64, attn=None,
                 attn_position="standard", **_):
        super().__init__()
        self.attn_position = attn_position
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SplitAttn(width, width, 1, groups=groups, radix=self.radix)
        self.avd_last = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.bn1(self.conv1(self.attn_in(x)))))
        if self.avd_last is not None:
            out = self.avd_last(out)
        out = self.bn3(self.conv3(out))
        return self.attn_out(self.relu(self.attend_add(out, identity)))


class ResNeSt(ResNet):
    """ResNet with a deep stem and average-pool shortcuts around :class:`ResNeStBottleneck` blocks."""

    def __init__(self, block, layers, *, stem_width: int = 32, in_chans: int = 3, **kwargs):
        super().__init__(block, layers, in_chans=in_chans, **kwargs)
        s = stem_width
        self.conv1 = nn.Sequential(
            conv3x3(in_chans, s, 2), nn.BatchNorm2d(s), nn.ReLU(inplace=True),
            conv3x3(s, s), nn.BatchNorm2d(s), nn.ReLU(inplace=True), conv3x3(s, 64))
        for m in self.conv1.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1, stage=0):
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            # ResNet-D shortcut: average pool (ceil mode, as the reference code), then a stride-1 1x1 conv.
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            downsample = nn.Sequential(pool, conv1x1(self.inplanes, out), nn.BatchNorm2d(out))
        layers = []
        on = self.attention_stages is None or stage + 1 in self.attention_stages
        for i in range(blocks):
            attn = make_attention(self.attention, out, self.attention_kwargs, stage=stage, num_stages=4) if on else None
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                                attn=attn, **self.block_kwargs))
            self.inplanes = out
        return nn.Sequential(*layers)


@register_model(family="resnest", paper="Zhang et al., ResNeSt: Split-Attention Networks, CVPRW 2022")
def resnest50(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
              attention_stages=None) -> ResNeSt:
    """ResNeSt-50 (radix 2, cardinality 1, width 64, deep stem 32): 27,483,240 parameters, the reference
    code's resnest50 and timm's resnest50d."""
    return ResNeSt(ResNeStBottleneck, (3, 4, 6, 3), **locals())
