"""MobileNetV3-Large and -Small (Howard et al., "Searching for MobileNetV3", ICCV 2019).

torchvision's module names and parameter counts (Large 5,483,032, Small 2,542,856): ``attention=None``
gives its ``state_dict`` key for key. The blocks are MobileNetV2's inverted residual with hard-swish in
the later layers and the paper's own squeeze-and-excite in the blocks its Tables 1/2 mark "SE": squeeze to
``make_divisible(C_expand / 4, 8)``, ReLU, hard-sigmoid gate, applied to the expanded channels after the
depthwise convolution (Sec. 5.3, Fig. 4). That SE is the default attention (as EfficientNet's); any other
attention replaces it in the same blocks (ECA-MobileNetV3), and ``attention="none"`` removes it.
"""

from __future__ import annotations

from torch import nn

from excite.attention import SqueezeExcite, make_attention, stage_kwargs
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import init_torchvision
from excite.models.mobilenetv2 import FeaturesClassifierNet, make_divisible

# MobileNetV3 paper Table 1 (Large) and Table 2 (Small), the bneck rows after the 3x3/16 stem:
# kernel, expansion size, output channels, SE, nonlinearity (RE = ReLU, HS = hard-swish), stride
LARGE = [
    # k, exp, out, se, nl, s
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
SMALL = [
    # k, exp, out, se, nl, s
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
# Width of the 1x1 conv after pooling (the "NBN" rows of the tables): 1280 (Large), 1024 (Small).
LAST_CHANNEL = {"large": 1280, "small": 1024}

_ACT = {"RE": nn.ReLU, "HS": nn.Hardswish}


class ConvBNAct(nn.Sequential):
    """Conv -> BN (-> activation): torchvision's Conv2dNormActivation layout (keys .0, .1).

    BN eps 0.001 and momentum 0.01 as torchvision's MobileNetV3 (the TF reference's defaults)."""

    def __init__(self, cin, cout, kernel=1, stride=1, groups=1, act: type[nn.Module] | None = nn.Hardswish):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class InvertedResidualV3(nn.Module):
    """Expand 1x1 (skipped when the expansion size equals the input) -> depthwise KxK -> attention (SE)
    -> linear 1x1 projection; residual when stride 1 and the channels match."""

    def __init__(self, cin, exp, cout, kernel, stride, act: type[nn.Module], attn: nn.Module | None):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers = [ConvBNAct(cin, exp, act=act)] if exp != cin else []
        layers.append(ConvBNAct(exp, exp, kernel, stride, groups=exp, act=act))  # depthwise
        if attn is not None:  # no empty slot: torchvision's blocks without SE have none either
            layers.append(attn)
        layers.append(ConvBNAct(exp, cout, act=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res_connect else out


def paper_se(channels: int, kwargs: dict | None = None) -> SqueezeExcite:
    """The MobileNetV3 SE on ``channels`` expanded channels: hidden ``make_divisible(C / 4, 8)``, biases,
    ReLU, hard-sigmoid gate (Sec. 5.3; torchvision's ``SqueezeExcitation(scale_activation=Hardsigmoid)``).
    ``kwargs`` may change the gate, the activation or the biases."""
    kw = dict(kwargs or {})
    kw.setdefault("gate", "hard_sigmoid")
    try:
        return SqueezeExcite(channels, rd_channels=make_divisible(channels / 4, 8), **kw)
    except TypeError as e:  # an unknown keyword: one line, not a traceback
        raise ExciteError(f"attention 'se': {e}") from None


class MobileNetV3(FeaturesClassifierNet):
    """MobileNetV3 from a table of bneck rows, with a width multiplier and any attention module.

    The head is the paper's: 1x1 conv to 6x the last block's channels, global pooling, then a 1x1 conv
    without BN (here a Linear, as torchvision) to ``last_channel``, hard-swish, dropout, classifier. So
    ``num_features`` (the classifier's input) is ``last_channel``; ``forward_features`` returns the
    pre-pooling map of ``6 x C`` channels and ``forward_head(pre_logits=True)`` the ``last_channel`` vector.
    """

    classifier_path = "classifier.3"

    def __init__(self, settings, last_channel, *, attention=None, attention_kwargs=None, num_classes=1000,
                 in_chans=3, width_mult=1.0, dropout=0.2):
        super().__init__()
        check_range("width_mult", width_mult, low=1e-3)
        check_range("dropout", dropout, low=0, high=1)
        ch = lambda c: make_divisible(c * width_mult)  # noqa: E731  torchvision's adjust_channels
        cin = ch(16)
        features: list[nn.Module] = [ConvBNAct(in_chans, cin, 3, 2)]
        # Attention options may vary per stage; a stage is a run of blocks at one resolution.
        stage_of = _stage_index(settings)
        n_stages = stage_of[-1] + 1
        for i, (k, exp, out, se, nl, s) in enumerate(settings):
            exp, out = ch(exp), ch(out)
            attn = self._attention(attention, attention_kwargs, exp, stage_of[i], n_stages) if se else None
            features.append(InvertedResidualV3(cin, exp, out, k, s, _ACT[nl], attn))
            cin = out
        features.append(ConvBNAct(cin, 6 * cin))
        self.features = nn.Sequential(*features)
        self.pooled_features = 6 * cin  # the last conv's channels, pooled before the classifier's hidden layer
        self.num_features = ch(last_channel)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, self.num_features), nn.Hardswish(inplace=True), nn.Dropout(dropout, inplace=True),
            nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity(),
        )
        init_torchvision(self)

    @staticmethod
    def _attention(attention, kwargs, channels, stage, num_stages):
        kwargs = dict(kwargs or {})
        if attention in (None, "se") and not {"reduction", "rd_channels"} & kwargs.keys():
            return paper_se(channels, stage_kwargs(kwargs, stage, num_stages, channels))
        return make_attention(attention, channels, kwargs, stage=stage, num_stages=num_stages)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.classifier[:3](x.mean((2, 3)))
        return x if pre_logits else self.classifier[3](x)


def _stage_index(settings) -> list[int]:
    """Stage number of each row: a new stage starts at every stride-2 row (after the first row)."""
    out, stage = [], 0
    for i, row in enumerate(settings):
        stage += 1 if i and row[-1] == 2 else 0
        out.append(stage)
    return out


_PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019"


@register_model(family="mobilenetv3", default_attention="se", paper=_PAPER)
def mobilenet_v3_large(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=1.0,
                       dropout=0.2):
    """MobileNetV3-Large (paper Table 1; torchvision layout, 5,483,032 parameters at 1.0x)."""
    return MobileNetV3(LARGE, LAST_CHANNEL["large"], attention=attention, attention_kwargs=attention_kwargs,
                       num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, dropout=dropout)


@register_model(family="mobilenetv3", default_attention="se", paper=_PAPER)
def mobilenet_v3_small(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=1.0,
                       dropout=0.2):
    """MobileNetV3-Small (paper Table 2; torchvision layout, 2,542,856 parameters at 1.0x)."""
    return MobileNetV3(SMALL, LAST_CHANNEL["small"], attention=attention, attention_kwargs=attention_kwargs,
                       num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, dropout=dropout)
