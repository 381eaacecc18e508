"""Residual Attention Network (Wang et al., Residual Attention Network for Image Classification, CVPR 2017).

The network stacks *Attention Modules* between pre-activation bottleneck residual units. A module
has two branches over the same input (paper Sec. 3, Fig. 2):

* the trunk branch ``T(x)``: ``t = 2`` residual units;
* the soft mask branch ``M(x)``: a bottom-up top-down hourglass. Max-pooling and one residual unit
  per level go down to the smallest map (two units at the bottom), bilinear interpolation and one
  unit per level come back up, with a skip unit adding each down level to the up path; two 1x1
  convolutions (each after BN-ReLU) and a sigmoid give a mask in (0, 1) for every channel and pixel.

Attention residual learning (paper Eq. 3): ``H(x) = (1 + M(x)) * T(x)``, so a mask near zero keeps
the trunk's features instead of erasing them; a module starts and ends with one residual unit
(``p = 1``), the first one shared by both branches.

The layer layout follows the authors' released Caffe definitions (``Attention-56-deploy.prototxt``
and ``Attention-92-deploy.prototxt``, github.com/fwang91/residual-attention-network): stages of 1/1/1
(Attention-56) or 1/2/3 (Attention-92) modules at 56/28/14 pixels whose masks go down 3/2/1 times,
max-pooling 3x3/2 with Caffe's ceil rounding, no convolution biases, a BN-ReLU before every unit.
Counted that way Attention-56 has 31,810,728 parameters and 6.27 GMACs (paper Table 4: 31.9M,
6.2 GFLOPs) and Attention-92 52,466,344 and 10.53 GMACs (paper: 51.3M, 10.4 GFLOPs; see
``excite paper-table residual-attention`` for the gap).

Channel attention (``attention="se"`` ...) goes into every residual unit, on the residual branch
after its last convolution and before the addition, stored as ``unit.attn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import init_attention, inside_attention, make_attention
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet

__all__ = ["ResidualAttentionNet", "AttentionModule", "PreActBottleneck", "SoftMaskBranch"]

_PAPER = "Wang et al., Residual Attention Network for Image Classification, CVPR 2017"


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al. 2016b): BN-ReLU, 1x1 (width/4), BN-ReLU, 3x3 (stride),
    BN-ReLU, 1x1 (width). The projection shortcut (1x1, strided) reads the pre-activated input, as in the
    released prototxt where both branches start from the same ``/bn`` blob; otherwise the shortcut is
    the identity on the raw input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, attn: nn.Module | None = None):
        super().__init__()
        mid = planes // 4
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.shortcut = nn.Conv2d(inplanes, planes, 1, stride, bias=False) if stride != 1 or inplanes != planes else None

    def forward(self, x):
        a = self.relu(self.bn0(x))
        identity = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn1(out)))
        out = self.conv3(self.relu(self.bn2(out)))
        if self.attn is not None:
            out = self.attn(out)
        return out + identity


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Caffe's Interp layer (from DeepLab) maps corner to corner: align_corners=True.
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class SoftMaskBranch(nn.Module):
    """Bottom-up top-down mask with ``depth`` max-pooling steps (paper Fig. 2 and Sec. 3.3).

    Down path: level ``i`` pools and runs one unit (two at the bottom level). Up path: interpolate to
    the level above, add that level's skip unit, run one unit; the last interpolation returns to the
    input size. Head: BN-ReLU-1x1-BN-ReLU-1x1-sigmoid (prototxt ``linear_1``, ``linear_2``; no biases).
    """

    def __init__(self, channels: int, depth: int, unit):
        super().__init__()
        check_range("depth", depth, low=1)
        # ceil_mode: Caffe rounds pooled sizes up (56 -> 28 -> 14 -> 7; 32 -> 16 -> 8 -> 4).
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.down = nn.ModuleList(
            nn.Sequential(*(unit() for _ in range(2 if i == depth - 1 else 1))) for i in range(depth))
        self.skip = nn.ModuleList(unit() for _ in range(depth - 1))
        self.up = nn.ModuleList(unit() for _ in range(depth - 1))
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        levels = []
        out = x
        for down in self.down:
            out = down(self.pool(out))
            levels.append(out)
        # Top-down: from the bottom level back up, each level adding its skip connection.
        for i in range(len(self.up) - 1, -1, -1):
            out = _upsample(out, levels[i]) + self.skip[i](levels[i])
            out = self.up[i](out)
        return self.head(_upsample(out, x))


class AttentionModule(nn.Module):
    """One Attention Module (paper Fig. 2; p = 1, t = 2, r = 1): a first unit, then the trunk (two
    units) and the soft mask (``depth`` levels) on its output, ``(1 + M) * T``, and a last unit."""

    def __init__(self, channels: int, depth: int, unit):
        super().__init__()
        self.first = unit()
        self.trunk = nn.Sequential(unit(), unit())
        self.mask = SoftMaskBranch(channels, depth, unit)
        self.last = unit()

    def forward(self, x):
        x = self.first(x)
        trunk = self.trunk(x)
        mask = self.mask(x)
        return self.last((1 + mask) * trunk)  # attention residual learning, paper Eq. 3


class ResidualAttentionNet(ClassifierNet):
    """Residual Attention Network: stem, then per stage a transition unit and ``modules[s]`` Attention
    Modules with mask depth ``depths[s]``, then ``tail`` plain units at ``widths[-1]``, BN-ReLU, global
    average pooling and a linear classifier.

    Args:
        modules: Attention Modules per stage (Attention-56: 1, 1, 1; Attention-92: 1, 2, 3).
        widths: unit output channels: one per attention stage plus the tail's.
        depths: soft mask down-sampling steps per stage.
        stem: ``"imagenet"`` (7x7/2 conv, BN-ReLU, 3x3/2 max-pool) or ``"cifar"`` (3x3 conv).
        stem_width: channels of the stem convolution.
        tail: plain units after the last attention stage (the first one strided).
    """

    def __init__(self, modules=(1, 1, 1), *, widths=(256, 512, 1024, 2048), depths=(3, 2, 1), stem="imagenet",
                 stem_width=64, tail=3, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3):
        super().__init__()
        if len(widths) != len(modules) + (1 if tail else 0) or len(depths) != len(modules):
            raise ValueError("widths needs one entry per stage (+1 for the tail) and depths one per stage")
        num_stages = len(widths)

        def unit_factory(stage):
            return lambda cin, cout, stride=1: PreActBottleneck(
                cin, cout, stride, attn=make_attention(attention, cout, attention_kwargs, stage=stage,
                                                       num_stages=num_stages))

        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True))
        else:
            self.stem = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        stages, cin = [], stem_width
        for s, (n, width, depth) in enumerate(zip(modules, widths, depths)):
            make = unit_factory(s)
            blocks = [make(cin, width, 1 if s == 0 else 2)]  # prototxt pre_res_1 keeps the size, later ones halve it
            blocks += [AttentionModule(width, depth, lambda make=make, w=width: make(w, w)) for _ in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        if tail:
            make = unit_factory(len(modules))
            stages.append(nn.Sequential(make(cin, widths[-1], 2), *(make(widths[-1], widths[-1]) for _ in range(tail - 1))))
            cin = widths[-1]
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        skip = inside_attention(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in skip:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        init_attention(self)

    def forward_features(self, x):
        return self.relu(self.bn(self.stages(self.stem(x))))


@register_model(family="residual-attention", paper=_PAPER)
def residual_attention56(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3) -> ResidualAttentionNet:
    """Attention-56 (paper Table 2): one Attention Module per stage; 31.8M parameters, 6.27 GMACs."""
    return ResidualAttentionNet((1, 1, 1), attention=attention, attention_kwargs=attention_kwargs,
                                num_classes=num_classes, in_chans=in_chans)


@register_model(family="residual-attention", paper=_PAPER)
def residual_attention92(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3) -> ResidualAttentionNet:
    """Attention-92 (paper Table 2): 1, 2 and 3 Attention Modules per stage; 52.5M parameters, 10.5 GMACs."""
    return ResidualAttentionNet((1, 2, 3), attention=attention, attention_kwargs=attention_kwargs,
                                num_classes=num_classes, in_chans=in_chans)


@register_model(family="residual-attention", input_size=(3, 32, 32), paper=_PAPER)
def residual_attention92_cifar(*, attention=None, attention_kwargs=None, num_classes=10,
                               in_chans=3) -> ResidualAttentionNet:
    """Attention-92 for 32x32 inputs (paper Table 6 lists 1.9M parameters but no layer table).

    Our reconstruction: the released ImageNet layout on CIFAR's three stages, at a quarter of its
    width (the widths of the pre-activation ResNet-164 the paper compares with): a 3x3 stem of 16,
    unit widths 64/128/256 at 32/16/8 pixels, masks down to 4x4, no tail. 2.24M parameters.
    """
    return ResidualAttentionNet((1, 2, 3), widths=(64, 128, 256), depths=(3, 2, 1), stem="cifar", stem_width=16,
                                tail=0, attention=attention, attention_kwargs=attention_kwargs,
                                num_classes=num_classes, in_chans=in_chans)
