"""Selective Kernel Networks (Li et al., SKNet, CVPR 2019): the 3x3 convolution of each ResNet block
replaced by an SK convolution.

SK convolution (the paper's Sec. 3.1): Split, M = 2 paths (3x3 and a 5x5 written as a 3x3 with
dilation 2, as the paper's footnote), each conv + BN + ReLU; Fuse, the paths summed, global average
pooled, a 1x1 conv to d = max(C/r, L) channels + BN + ReLU; Select, one 1x1 conv per path (one conv to
M x C here) and a softmax across the paths, which weigh the paths' sum.

The layout is timm's (``conv2.paths.i``, ``conv2.attn.fc_reduce`` / ``fc_select``; the block's other
convs as ``convN.conv`` / ``convN.bn``), so timm's weights load; ``skresnet18/34/50`` split the input
channels between the paths (timm's variant, fewer parameters), ``skresnext50_32x4d`` is the paper's
SKNet-50 (ResNeXt-50 32x4d with SK, M=2, G=32, r=16, L=32). The blocks keep an ``attn`` slot, so any
``attention=`` module can be added on top.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.attention.layers import make_divisible
from excite.core.errors import ExciteError
from excite.core.registry import register_model
from excite.models.resnet import BasicBlock, ResidualAttention, ResNet

__all__ = ["ConvNormAct", "SelectiveKernelAttn", "SelectiveKernelConv", "SKBasicBlock", "SKBottleneck"]


class ConvNormAct(nn.Sequential):
    """conv (no bias) + BN (+ ReLU); keys ``conv``, ``bn`` as timm's ``ConvNormAct``.

    Padding ``((stride - 1) + dilation (k - 1)) // 2``: timm's symmetric padding, the same output size
    as torchvision's for every stride and dilation used here.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: bool = True):
        super().__init__()
        pad = ((stride - 1) + dilation * (k - 1)) // 2
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.ReLU(inplace=True)


class SelectiveKernelAttn(nn.Module):
    """Fuse and select: the (B, M, C, 1, 1) softmax weights of the M paths."""

    def __init__(self, channels: int, num_paths: int, attn_channels: int):
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(attn_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False)

    def forward(self, paths: torch.Tensor) -> torch.Tensor:
        s = paths.sum(1).mean((2, 3), keepdim=True)
        z = self.fc_select(self.act(self.bn(self.fc_reduce(s))))
        b, mc = z.shape[:2]
        return torch.softmax(z.view(b, self.num_paths, mc // self.num_paths, 1, 1), dim=1)


class SelectiveKernelConv(nn.Module):
    """SK convolution replacing a 3x3 conv + BN + ReLU (``in_channels`` -> ``out_channels``, ``stride``).

    Args:
        kernels: the paths' kernel sizes (3 and 5); with ``keep_3x3`` each is a 3x3 with dilation (k - 1) / 2.
        rd_ratio, rd_divisor: d = make_divisible(out_channels * rd_ratio, rd_divisor): timm's rounding,
            whose ``rd_divisor`` acts as the paper's floor L.
        split_input: give each path 1/M of the input channels (timm's skresnet) instead of all of them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, *,
                 kernels=(3, 5), keep_3x3: bool = True, rd_ratio: float = 1 / 16, rd_divisor: int = 8,
                 split_input: bool = True):
        super().__init__()
        if any(k < 3 or k % 2 == 0 for k in kernels):
            raise ExciteError(f"kernels={list(kernels)} is not valid; expected odd sizes >= 3")
        dilations = [(k - 1) // 2 for k in kernels] if keep_3x3 else [1] * len(kernels)
        sizes = [3] * len(kernels) if keep_3x3 else list(kernels)
        self.num_paths, self.split_input = len(kernels), split_input
        if split_input and in_channels % self.num_paths:
            raise ExciteError(f"split_input needs in_channels={in_channels} divisible by {self.num_paths} paths")
        cin = in_channels // self.num_paths if split_input else in_channels
        self.paths = nn.ModuleList(ConvNormAct(cin, out_channels, k, stride, d, min(groups, out_channels))
                                   for k, d in zip(sizes, dilations))
        self.attn = SelectiveKernelAttn(out_channels, self.num_paths, make_divisible(out_channels * rd_ratio, rd_divisor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_input:
            xs = torch.chunk(x, self.num_paths, dim=1)
            paths = torch.stack([op(xi) for op, xi in zip(self.paths, xs)], dim=1)
        else:
            paths = torch.stack([op(x) for op in self.paths], dim=1)
        return (paths * self.attn(paths)).sum(1)


class SKBasicBlock(ResidualAttention, nn.Module):
    """Basic block whose first 3x3 is an SK convolution (timm's ``SelectiveKernelBasic``)."""

    expansion = 1
    sk_kwargs: dict = {}

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn=None, attn_position="standard", **_):
        super().__init__()
        self.attn_position = attn_position
        self.conv1 = SelectiveKernelConv(inplanes, planes, stride, **self.sk_kwargs)
        self.conv2 = ConvNormAct(planes, planes, 3, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(self.attn_in(x)))
        return self.attn_out(self.relu(self.attend_add(out, identity)))


class SKBottleneck(ResidualAttention, nn.Module):
    """Bottleneck whose 3x3 is an SK convolution (timm's ``SelectiveKernelBottleneck``; SKNet Table 1)."""

    expansion = 4
    sk_kwargs: dict = {}

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64, attn=None,
                 attn_position="standard", **_):
        super().__init__()
        self.attn_position = attn_position
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = ConvNormAct(inplanes, width, 1)
        self.conv2 = SelectiveKernelConv(width, width, stride, groups, **self.sk_kwargs)
        self.conv3 = ConvNormAct(width, planes * self.expansion, 1, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(self.attn_in(x))))
        return self.attn_out(self.relu(self.attend_add(out, identity)))


def _block(base, **sk_kwargs):
    """A block class with its SK settings fixed (ResNet builds blocks from a class and the stage's widths)."""
    return type(base.__name__, (base,), {"sk_kwargs": sk_kwargs, "__module__": __name__})


_SK18 = _block(SKBasicBlock, rd_ratio=1 / 8, rd_divisor=16, split_input=True)
_SK50 = _block(SKBottleneck, rd_ratio=1 / 16, rd_divisor=8, split_input=True)
_SKX50 = _block(SKBottleneck, rd_ratio=1 / 16, rd_divisor=32, split_input=False)
_PAPER = "Li et al., Selective Kernel Networks, CVPR 2019"
assert BasicBlock.expansion == _SK18.expansion  # the same stage widths as ResNet-18/34


@register_model(family="sknet", paper=_PAPER)
def skresnet18(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
               attention_position="standard", attention_stages=None) -> ResNet:
    """SK-ResNet-18 (timm's skresnet18: split input, d = C/8 rounded to 16): 11,958,056 parameters."""
    return ResNet(_SK18, (2, 2, 2, 2), **locals())


@register_model(family="sknet", paper=_PAPER)
def skresnet34(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
               attention_position="standard", attention_stages=None) -> ResNet:
    """SK-ResNet-34 (timm's skresnet34)."""
    return ResNet(_SK18, (3, 4, 6, 3), **locals())


@register_model(family="sknet", paper=_PAPER)
def skresnet50(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
               attention_position="standard", attention_stages=None) -> ResNet:
    """SK-ResNet-50 (timm's skresnet50: split input, d = C/16 rounded to 8): 25,803,160 parameters."""
    return ResNet(_SK50, (3, 4, 6, 3), **locals())


@register_model(family="sknet", paper=_PAPER)
def skresnext50_32x4d(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
                      attention_position="standard", attention_stages=None) -> ResNet:
    """SKNet-50 of the paper's Table 1: ResNeXt-50 (32x4d) with SK convs, M=2, G=32, r=16, L=32."""
    return ResNet(_SKX50, (3, 4, 6, 3), groups=32, width_per_group=4, **locals())
