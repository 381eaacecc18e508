"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

torchvision's module names, so ``attention=None`` gives its ``state_dict`` key for key (3,504,872
parameters). Attention goes after the projection BN, before the residual addition, appended as the
last element of the block's ``conv`` Sequential: the layout of the official ECA-MobileNetV2 release.
"""

from __future__ import annotations

from torch import nn

from excite.attention import make_attention
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet, init_torchvision


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never going more than 10% down (TF reference code)."""
    min_value = min_value or divisor
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def eca_official_k_size(channels: int) -> int:
    """The kernel rule of the official ECA-MobileNetV2 (k = 1 below 96 channels, else 3): 31 parameters."""
    return 1 if channels < 96 else 3


class ConvBNReLU6(nn.Sequential):
    """Conv -> BN -> ReLU6 (torchvision's Conv2dNormActivation layout: keys .0, .1)."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1 (ratio t) -> depthwise 3x3 -> linear 1x1 projection (+ attention), residual when shapes allow."""

    def __init__(self, cin, cout, stride, expand_ratio, attn=None):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = [ConvBNReLU6(cin, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(cout),
        ]
        if attn is not None:
            layers.append(attn)
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class FeaturesClassifierNet(ClassifierNet):
    """The torchvision layout shared by MobileNetV2 and EfficientNet: ``features`` (a Sequential), global
    average pooling, ``classifier = Sequential(Dropout, Linear)``; subclasses set ``num_features``."""

    head_path = "classifier"
    classifier_path = "classifier.1"

    def forward_features(self, x):
        return self.features(x)


class MobileNetV2(FeaturesClassifierNet):
    """MobileNetV2 with a width multiplier and any attention module."""

    # MobileNetV2 paper Table 2: expansion t, output channels c, repeats n, first stride s.
    SETTINGS = [
        # t, c, n, s
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, *, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=1.0,
                 round_nearest=8, dropout=0.2):
        super().__init__()
        check_range("width_mult", width_mult, low=1e-3)
        check_range("dropout", dropout, low=0, high=1)
        cin = make_divisible(32 * width_mult, round_nearest)
        self.num_features = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(in_chans, cin, stride=2)]
        for stage, (t, c, n, s) in enumerate(self.SETTINGS):
            cout = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                attn = make_attention(attention, cout, attention_kwargs, stage=stage, num_stages=len(self.SETTINGS))
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, attn))
                cin = cout
        features.append(ConvBNReLU6(cin, self.num_features, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        if not num_classes:
            self.classifier[1] = nn.Identity()
        init_torchvision(self)




@register_model(family="mobilenetv2", paper="Sandler et al., MobileNetV2, CVPR 2018")
def mobilenet_v2(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=1.0,
                 round_nearest=8, dropout=0.2):
    """MobileNetV2 (torchvision layout). ``width_mult`` scales every layer's channels (paper section 6.1)."""
    return MobileNetV2(attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                       in_chans=in_chans, width_mult=width_mult, round_nearest=round_nearest, dropout=dropout)
