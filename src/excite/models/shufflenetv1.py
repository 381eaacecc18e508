"""ShuffleNet v1 (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018): grouped 1x1 convolutions with a channel shuffle, groups g = 1, 2, 3, 4, 8, at the
scale factors 0.5x, 1.0x, 1.5x, 2.0x.

Built as the authors' released code builds it (megvii-model/ShuffleNet-Series, ``ShuffleNetV1/``, which
releases g = 3 and g = 8) and with its module names: a 3x3/2 convolution (``first_conv``), a 3x3/2 max
pool, 16 units in three stages of 4, 8, 4 (``features.N``), global average pooling, and a classifier
without bias (``classifier.0``). A unit (paper Fig. 2b/c) is a 1x1 group conv to a quarter of the
output width (dense in the very first unit, whose input is only 24 channels wide), BN, ReLU, a 3x3
depthwise conv (stride 2 in the first unit of a stage), BN, the channel shuffle (the released code
shuffles after the depthwise conv; the paper's figure before it: a depthwise conv acts per channel,
so the two orders span the same networks), a 1x1 group conv and BN; then the sum with the input and
a ReLU, or, when striding, the concatenation with a 3x3/2 average pool of the input and a ReLU of the
branch. There is no ReLU after the depthwise conv (paper section 3.2).

Widths: the paper's Table 1 output channels at 1.0x (g = 1: 144, 288, 576; 2: 200; 3: 240; 4: 272;
8: 384, doubling per stage) times the scale, rounded to a multiple of 4g so that the bottleneck
(a quarter of the width) splits into g groups. That reproduces every released configuration
(g = 3, 8) exactly and gives working networks for the others (g = 2 at 0.5x: 104 for 100). The stem
is the released code's: 12 channels at 0.5x (16 for g = 8), 24 at 1.0x and 1.5x, 48 at 2.0x.

Attention sits in every unit at the end of the convolutional branch (after its last BN), before the
addition or the concatenation, where SENet puts it in a residual unit: ``features.N.attn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import init_attention, inside_attention, make_attention
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet

__all__ = ["ShuffleNetV1", "ShuffleV1Unit", "shuffle_channels", "stage_channels", "GROUPS", "SCALES"]

STAGE_REPEATS = (4, 8, 4)  # Table 1: units in stages 2, 3, 4
# Table 1: output channels of stage 2 at 1.0x for each number of groups (stages 3, 4: 2x, 4x).
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
GROUPS = tuple(STAGE2_CHANNELS)
SCALES = (0.5, 1.0, 1.5, 2.0)
_STEM = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}  # the released code's first_conv widths


def stage_channels(groups: int, scale: float) -> tuple[int, int, int, int]:
    """``(stem, stage2, stage3, stage4)`` output channels for ``groups`` and ``scale`` (see module doc)."""
    if groups not in STAGE2_CHANNELS:
        raise ExciteError(f"groups={groups!r} is not valid; expected one of {', '.join(map(str, GROUPS))}")
    if scale not in _STEM:
        raise ExciteError(f"width_mult={scale!r} is not valid; expected one of {', '.join(map(str, SCALES))}")
    q = 4 * groups
    stages = tuple(int(STAGE2_CHANNELS[groups] * m * scale / q + 0.5) * q for m in (1, 2, 4))
    stem = _STEM[scale]
    if (stages[0] - stem) % groups:  # the first unit's branch is stage2 - stem wide, in g groups (g = 8 at 0.5x)
        stem += 4
    return (stem, *stages)


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The released code's channel shuffle: (B, n*g, H, W) as (n, g) transposed to (g, n), so output
    channel ``j*n + a`` is input channel ``a*g + j``; each group of the next group conv sees every group."""
    b, c, h, w = x.shape
    return x.reshape(b, c // groups, groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """One ShuffleNet unit (paper Fig. 2b for stride 1, Fig. 2c for stride 2), attention before the merge."""

    def __init__(self, cin: int, cout: int, *, groups: int, stride: int, first: bool = False,
                 attn: nn.Module | None = None):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4
        out = cout - cin if stride == 2 else cout  # the average-pooled input fills the rest
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False, groups=1 if first else groups), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(nn.Conv2d(mid, out, 1, bias=False, groups=groups), nn.BatchNorm2d(out))
        self.attn = attn
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(3, 2, 1)

    def forward(self, x):
        y = self.branch_main_1(x)
        if self.groups > 1:
            y = shuffle_channels(y, self.groups)
        y = self.branch_main_2(y)
        if self.attn is not None:
            y = self.attn(y)
        if self.stride == 1:
            return F.relu(x + y)
        return torch.cat((self.branch_proj(x), F.relu(y)), 1)


class ShuffleNetV1(ClassifierNet):
    """ShuffleNet v1 with ``groups`` groups at scale ``width_mult`` (0.5, 1.0, 1.5 or 2.0)."""

    head_path, classifier_path = "classifier", "classifier.0"

    def __init__(self, groups: int, width_mult: float = 1.0, *, attention=None, attention_kwargs=None,
                 num_classes=1000, in_chans=3):
        super().__init__()
        stem, *widths = stage_channels(groups, width_mult)
        self.first_conv = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                        nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, cin = [], stem
        for stage, (n, cout) in enumerate(zip(STAGE_REPEATS, widths)):
            for i in range(n):
                branch = cout - cin if i == 0 else cout
                attn = make_attention(attention, branch, attention_kwargs, stage=stage, num_stages=len(STAGE_REPEATS))
                units.append(ShuffleV1Unit(cin, cout, groups=groups, stride=2 if i == 0 else 1,
                                           first=stage == 0 and i == 0, attn=attn))
                cin = cout
        self.features = nn.Sequential(*units)
        self.num_features = cin
        self.classifier = nn.Sequential(nn.Linear(cin, num_classes, bias=False) if num_classes else nn.Identity())
        self._init_weights()

    def _init_weights(self):
        # The released code's initialisation: N(0, 0.01) for the stem and the classifier, N(0, 1 / fan-in
        # channels) for the other convolutions, BN weight 1 and bias 1e-4. Attention keeps its own.
        skip = inside_attention(self)
        for name, m in self.named_modules():
            if id(m) in skip:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.01 if name.startswith("first") else 1.0 / m.weight.shape[1])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.constant_(m.bias, 1e-4)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
        init_attention(self)

    def forward_features(self, x):
        return self.features(self.maxpool(self.first_conv(x)))

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier with ``num_classes`` outputs and, as released, no bias (0: none)."""
        check_range("num_classes", num_classes, low=0)
        self.classifier[0] = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()


_PAPER = "Zhang et al., ShuffleNet: An Extremely Efficient CNN for Mobile Devices, CVPR 2018"
# Table 2 (1.0x, 224x224): MFLOPs (mult-adds) by groups, as printed.
TABLE2_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


def _builder(groups: int):
    def build(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, width_mult=1.0) -> ShuffleNetV1:
        return ShuffleNetV1(groups, width_mult, attention=attention, attention_kwargs=attention_kwargs,
                            num_classes=num_classes, in_chans=in_chans)

    name = f"shufflenet_v1_g{groups}"
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"ShuffleNet v1 with g = {groups} (paper Table 1; {TABLE2_MFLOPS[groups]} MFLOPs at 1.0x, "
                     "Table 2); "
                     "width_mult 0.5, 1.0, 1.5 or 2.0; attention on every unit before the merge.")
    register_model(family="shufflenetv1", paper=_PAPER)(build)
    return build


for _g in GROUPS:
    globals()[f"shufflenet_v1_g{_g}"] = _builder(_g)
