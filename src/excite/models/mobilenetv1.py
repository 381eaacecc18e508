"""MobileNet v1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017) with its width multiplier alpha (1.0, 0.75, 0.5, 0.25) and any input resolution.

The network of the paper's Table 1: a 3x3/2 convolution to 32 channels, then 13 depthwise-separable
blocks (3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU), global average pooling and one
fully connected layer. Counts at 224x224 (Table 8 / Table 7): 1.0 4.2M parameters and 569M mult-adds,
0.75 2.6M / 325M, 0.5 1.3M / 149M, 0.25 0.5M / 41M; the resolution multiplier changes only the
mult-adds (1.0 at 192 / 160 / 128: 418M / 290M / 186M).

timm's ``mobilenetv1_100`` layout and count (4,231,976): ``conv_stem``, ``bn1``,
``blocks.<stage>.<block>.{conv_dw, bn1, conv_pw, bn2}`` grouped by output resolution, ``classifier``.
The paper's Table 1 prints the last depthwise conv with stride 2; like every released implementation
(TF-slim, timm), it has stride 1 here: the map is already 7x7, and the counts above assume that.

Attention (``attention=``) sits in every block between the depthwise and the pointwise convolution,
on the block's input channels: timm's slot for SE in this block (``DepthwiseSeparableConv.se``), the
place MobileNetV3 and EfficientNet give their SE too; stored as ``blocks.S.B.attn``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from excite.attention import make_attention
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet, init_torchvision
from excite.models.mobilenetv2 import make_divisible

__all__ = ["MobileNetV1", "DepthwiseSeparable", "STAGES"]

# Table 1 after the stem, grouped by output resolution (timm's stages): (output channels, first stride, blocks)
STAGES = [
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 2, 6),
    (1024, 2, 2),
]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU -> (attention) -> 1x1 pointwise conv -> BN -> ReLU (paper Fig. 3 right)."""

    def __init__(self, cin: int, cout: int, stride: int, attn: nn.Module | None = None):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.attn = attn
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv_dw(x)))
        if self.attn is not None:
            x = self.attn(x)
        return self.relu(self.bn2(self.conv_pw(x)))


class MobileNetV1(ClassifierNet):
    """MobileNet v1 at width multiplier ``width_mult`` (alpha); channels ``make_divisible(c * alpha, 8)``
    as TF-slim and timm round them (exact for the four published alphas)."""

    head_path = classifier_path = "classifier"

    def __init__(self, width_mult: float = 1.0, *, attention=None, attention_kwargs=None, num_classes=1000,
                 in_chans=3, drop_rate=0.0):
        super().__init__()
        check_range("width_mult", width_mult, low=1e-3)
        check_range("drop_rate", drop_rate, low=0, high=1)
        ch = lambda c: make_divisible(c * width_mult)  # noqa: E731
        cin = ch(32)
        self.conv_stem = nn.Conv2d(in_chans, cin, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for stage, (cout, stride, n) in enumerate(STAGES):
            blocks = []
            for i in range(n):
                attn = make_attention(attention, cin, attention_kwargs, stage=stage, num_stages=len(STAGES))
                blocks.append(DepthwiseSeparable(cin, ch(cout), stride if i == 0 else 1, attn))
                cin = ch(cout)
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = cin
        self.drop_rate = drop_rate
        self.classifier = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        init_torchvision(self)  # He normal (fan_out) convolutions, BN as the identity, N(0, 0.01) classifier

    def forward_features(self, x):
        return self.blocks(self.relu(self.bn1(self.conv_stem(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x
        return x if pre_logits else self.classifier(x)


_PAPER = "Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications, 2017"
# Table 8 at 224x224: width multiplier -> (parameters, mult-adds), as printed.
TABLE8 = {1.0: (4.2e6, 569e6), 0.75: (2.6e6, 325e6), 0.5: (1.3e6, 149e6), 0.25: (0.5e6, 41e6)}


def _builder(name: str, alpha: float):
    def build(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=alpha,
              drop_rate=0.0) -> MobileNetV1:
        return MobileNetV1(width_mult, attention=attention, attention_kwargs=attention_kwargs,
                           num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)

    params, macs = TABLE8[alpha]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"MobileNet v1 {alpha}-224 (paper Table 8: {params / 1e6:.1f}M parameters, {macs / 1e6:.0f}M "
                     "mult-adds); attention between each block's depthwise and pointwise convolution.")
    register_model(family="mobilenetv1", paper=_PAPER)(build)
    return build


mobilenet_v1 = _builder("mobilenet_v1", 1.0)
mobilenet_v1_075 = _builder("mobilenet_v1_075", 0.75)
mobilenet_v1_050 = _builder("mobilenet_v1_050", 0.5)
mobilenet_v1_025 = _builder("mobilenet_v1_025", 0.25)
