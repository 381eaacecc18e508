"""ShuffleNetV2 x0.5 / x1.0 / x1.5 / x2.0 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient
CNN Architecture Design", ECCV 2018).

torchvision's module names and parameter counts (1,366,792 / 2,278,604 / 3,503,624 / 7,393,996):
``attention=None`` gives its ``state_dict`` key for key. A unit splits its channels in two (channel
split, Fig. 3c), sends one half through 1x1 conv -> 3x3 depthwise -> 1x1 conv, concatenates it with the
untouched half, then shuffles the channels so that the halves mix in the next unit; a downsampling unit
(Fig. 3d) feeds the whole input to both branches instead.

Attention follows the paper's own SE variant (SE-ShuffleNet v2, Table 8 and the appendix figure of
its building blocks): on the convolutional branch, after its last 1x1 conv + BN + ReLU, before the
concatenation (``stageN.M.branch2.8``). So there is one attention module per unit, on ``C_out / 2``
channels: 16 modules in all (4 + 8 + 4 units), the downsampling units' left branch has none.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.attention import init_attention, make_attention
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet

# ShuffleNetV2 paper Table 5: units per stage (stages 2-4) and output channels of
# conv1, stage2, stage3, stage4, conv5 for each width multiplier.
STAGE_REPEATS = (4, 8, 4)
STAGE_OUT_CHANNELS = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, g*n, H, W) -> interleave the g groups: channel j*n + i goes to i*g + j (ShuffleNet, Fig. 1)."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


def _dw(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)


def _pw(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (basic for stride 1, downsampling for stride 2), attention on the conv branch."""

    def __init__(self, cin: int, cout: int, stride: int, attn: nn.Module | None = None):
        super().__init__()
        check_range("stride", stride, low=1, high=3)
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_dw(cin, stride), nn.BatchNorm2d(cin), _pw(cin, half), nn.BatchNorm2d(half),
                                         nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()  # the identity half (torchvision keeps an empty Sequential)
        layers = [
            _pw(cin if stride > 1 else half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            _dw(half, stride), nn.BatchNorm2d(half),  # no ReLU after the depthwise conv (Sec. 3, Fig. 3)
            _pw(half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        ]
        if attn is not None:
            layers.append(attn)  # SE-ShuffleNet v2: before the concatenation
        self.branch2 = nn.Sequential(*layers)

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ClassifierNet):
    """ShuffleNetV2 from per-stage channel widths, with any attention module."""

    def __init__(self, stages_out_channels, *, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3):
        super().__init__()
        c0, *stage_channels, last = stages_out_channels
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = c0
        for i, (n, cout) in enumerate(zip(STAGE_REPEATS, stage_channels)):
            units = [ShuffleUnit(cin if j == 0 else cout, cout, 2 if j == 0 else 1,
                                 make_attention(attention, cout // 2, attention_kwargs, stage=i,
                                                num_stages=len(STAGE_REPEATS)))
                     for j in range(n)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.num_features = last
        self.fc = nn.Linear(last, num_classes) if num_classes else nn.Identity()
        init_attention(self)  # torchvision keeps PyTorch's default initialisation for the rest

    def forward_features(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)


def _builder(width: str):
    channels = STAGE_OUT_CHANNELS[width]

    def build(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3):
        return ShuffleNetV2(channels, attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                            in_chans=in_chans)

    name = f"shufflenet_v2_{width}"
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"ShuffleNetV2 {width[1:].replace('_', '.')}x (paper Table 5; channels {channels}); attention on "
                     "each unit's conv branch before the concatenation.")
    register_model(family="shufflenetv2", paper="Ma et al., ShuffleNet V2, ECCV 2018")(build)
    return build


for _w in STAGE_OUT_CHANNELS:
    globals()[f"shufflenet_v2_{_w}"] = _builder(_w)
