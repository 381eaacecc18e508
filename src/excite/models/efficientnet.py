"""EfficientNet-B0 ... B7 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019).

torchvision's module names and parameter counts (B0 5,288,548 ... B7 66,347,960). MBConv blocks
(MobileNetV2's inverted residual with depthwise-separable convolution, SiLU/Swish and SE), compound
scaling of width, depth and resolution, stochastic depth and dropout per variant. ``attention=`` replaces
the MBConv SE with any module; ``attention="none"`` leaves an empty slot so that the keys keep their indices.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from excite.attention import SqueezeExcite, make_attention, stage_kwargs
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import init_torchvision
from excite.models.mobilenetv2 import FeaturesClassifierNet, make_divisible

# EfficientNet paper Table 1 (B0), the stages after the stem:
# expand ratio, kernel, stride, input channels, output channels, repeats
B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]

# Compound scaling as released (paper Table 2 / reference code): width, depth, resolution, dropout.
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


class ConvBNAct(nn.Sequential):
    """Conv -> BN (-> SiLU): torchvision's Conv2dNormActivation layout (keys .0, .1)."""

    def __init__(self, cin, cout, kernel=1, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class StochasticDepth(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` in training (Huang et al. 2016),
    scaling survivors by 1/(1-p) ("row" mode). Written here because torchvision.ops is not a dependency."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class MBConv(nn.Module):
    """Expand 1x1 -> depthwise KxK -> attention (SE) -> project 1x1, residual with stochastic depth."""

    def __init__(self, cin, cout, expand, kernel, stride, drop_prob, attn):
        super().__init__()
        hidden = make_divisible(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers = [ConvBNAct(cin, hidden)] if hidden != cin else []
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden),  # depthwise
            attn if attn is not None else nn.Identity(),  # keeps the projection's index without attention
            ConvBNAct(hidden, cout, act=False),  # linear projection
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob)
        self.out_channels = cout

    def forward(self, x):
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


class EfficientNet(FeaturesClassifierNet):
    """EfficientNet scaled from B0 by ``width_mult`` and ``depth_mult``."""

    def __init__(self, width_mult, depth_mult, dropout, *, attention=None, attention_kwargs=None, num_classes=1000,
                 in_chans=3, stochastic_depth_prob=0.2):
        super().__init__()
        check_range("dropout", dropout, low=0, high=1)
        check_range("stochastic_depth_prob", stochastic_depth_prob, low=0, high=1)
        ch = lambda c: make_divisible(c * width_mult)  # noqa: E731  channel rounding of the reference code
        depth = lambda n: int(math.ceil(n * depth_mult))  # noqa: E731
        stages = [(e, k, s, ch(i), ch(o), depth(n)) for e, k, s, i, o, n in B0_STAGES]
        total = sum(s[-1] for s in stages)
        features: list[nn.Module] = [ConvBNAct(in_chans, stages[0][3], 3, 2)]
        block_id = 0
        for stage, (expand, kernel, stride, cin, cout, repeats) in enumerate(stages):
            blocks = []
            for i in range(repeats):
                hidden = make_divisible(cin * expand)
                attn = self._attention(attention, attention_kwargs, hidden, cin, stage, len(stages))
                # Drop probability grows linearly with depth, up to stochastic_depth_prob (torchvision).
                p = stochastic_depth_prob * block_id / total
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1, p, attn))
                cin, block_id = cout, block_id + 1
            features.append(nn.Sequential(*blocks))
        self.num_features = 4 * stages[-1][4]
        features.append(ConvBNAct(stages[-1][4], self.num_features))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(self.num_features, num_classes))
        if not num_classes:
            self.classifier[1] = nn.Identity()
        init_torchvision(self, linear="uniform")

    @staticmethod
    def _attention(attention, kwargs, hidden, cin, stage, num_stages):
        kwargs = dict(kwargs or {})
        if attention in (None, "se") and not {"reduction", "rd_channels"} & kwargs.keys():
            # The paper's SE: squeeze to 0.25 x the block's input channels, SiLU inside.
            kwargs = stage_kwargs(kwargs, stage, num_stages, hidden)  # per-stage lists / callables
            kwargs.setdefault("act_layer", nn.SiLU)
            try:
                return SqueezeExcite(hidden, rd_channels=max(1, cin // 4), **kwargs)
            except TypeError as e:  # an unknown keyword: one line, not a traceback
                raise ExciteError(f"attention 'se': {e}") from None
        return make_attention(attention, hidden, kwargs, stage=stage, num_stages=num_stages)



def _builder(variant: str):
    width, depth, resolution, dropout = VARIANTS[variant]

    def build(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, dropout=dropout,
              stochastic_depth_prob=0.2):
        return EfficientNet(width, depth, dropout, attention=attention, attention_kwargs=attention_kwargs,
                            num_classes=num_classes, in_chans=in_chans, stochastic_depth_prob=stochastic_depth_prob)

    name = f"efficientnet_{variant}"
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"EfficientNet-{variant.upper()}: width x{width}, depth x{depth}, {resolution}px, dropout {dropout}."
    register_model(family="efficientnet", input_size=(3, resolution, resolution), default_attention="se",
                   paper="Tan & Le, EfficientNet, ICML 2019")(build)
    return build


for _v in VARIANTS:
    globals()[f"efficientnet_{_v}"] = _builder(_v)
