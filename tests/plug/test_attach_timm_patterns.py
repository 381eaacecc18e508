"""excite.attach on the residual patterns of timm networks that once got fewer modules than they have
residual additions: look-alikes with the same block structure (timm is not importable here), each checked
as the other look-alikes are (places, identity start, keys kept, gradients) and by both tracers."""

from __future__ import annotations

import torch
from torch import nn

import importlib

import pytest

from test_attach_coverage import Net, check_attach


class ConvNormAct(nn.Sequential):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.SiLU()


class LinearBottleneck(nn.Module):
    """ReXNet (timm ``rexnet.py``): the shortcut is added to the first ``in_chs`` channels of the branch
    only, ``cat([x[:, :in_chs] + shortcut, x[:, in_chs:]])``; the rest of the channels pass through."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.use_shortcut = stride == 1 and cin <= cout
        self.in_channels, self.out_channels = cin, cout
        self.conv_exp = ConvNormAct(cin, cin * 6)
        self.conv_dw = ConvNormAct(cin * 6, cin * 6, 3, stride, groups=cin * 6, act=False)
        self.act_dw = nn.ReLU6()
        self.conv_pwl = ConvNormAct(cin * 6, cout, act=False)

    def forward(self, x):
        shortcut = x
        x = self.conv_pwl(self.act_dw(self.conv_dw(self.conv_exp(x))))
        if self.use_shortcut:
            x = torch.cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]], dim=1)
        return x


class LegacySEModule(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Conv2d(c, c // r, 1), nn.ReLU(inplace=True), nn.Conv2d(c // r, c, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SEResNetBlock(nn.Module):
    """timm's legacy SE-ResNet basic block (``senet.py``): one ``self.relu`` called three times, the SE
    module after the second ReLU, then the addition."""

    def __init__(self, cin, c, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = LegacySEModule(c)
        self.out_channels = c
        self.downsample = None if stride == 1 and cin == c else nn.Sequential(
            nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out = self.se_module(out) + shortcut
        return self.relu(out)


class CspBottleneck(nn.Module):
    """timm ``cspnet.py`` ``BottleneckBlock`` (CSPResNet; ``DarkBlock`` is the same with two convs)."""

    def __init__(self, c, mid):
        super().__init__()
        self.conv1, self.conv2 = ConvNormAct(c, mid), ConvNormAct(mid, mid, 3)
        self.conv3 = ConvNormAct(mid, c, act=False)
        self.attn, self.drop_path, self.act3 = nn.Identity(), nn.Identity(), nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x
        x = self.attn(self.conv3(self.conv2(self.conv1(x))))
        return self.act3(self.drop_path(x) + shortcut)


class CrossStage(nn.Module):
    """A CSPNet stage (timm ``CrossStage``): the expanded map is split in two, the blocks run on one half
    (the first block's input, and its shortcut, is a slice made by the stage), and the halves are
    concatenated again."""

    def __init__(self, cin, cout, depth=2):
        super().__init__()
        self.conv_down, self.conv_exp = ConvNormAct(cin, cout, 3, 2), ConvNormAct(cout, cout)
        self.blocks = nn.Sequential(*[CspBottleneck(cout // 2, cout // 4) for _ in range(depth)])
        self.conv_transition_b = ConvNormAct(cout // 2, cout // 2)
        self.conv_transition = ConvNormAct(cout, cout)
        self.out_channels = cout

    def forward(self, x):
        xs, xb = self.conv_exp(self.conv_down(x)).split(self.out_channels // 2, dim=1)
        xb = self.conv_transition_b(self.blocks(xb)).contiguous()
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class Mixed(nn.Module):
    """Inception-ResNet-v2's ``Mixed_5b``: parallel branches concatenated (what the first block reads)."""

    def __init__(self, cin, c):
        super().__init__()
        self.branch0 = ConvNormAct(cin, c)
        self.branch1 = nn.Sequential(ConvNormAct(cin, c), ConvNormAct(c, c, 3))
        self.out_channels = 2 * c

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x)], 1)


class Block35(nn.Module):
    """Inception-ResNet-v2's ``Block35``: concatenated branches, a 1x1 conv, a scale, plus the input."""

    def __init__(self, c, scale=0.17):
        super().__init__()
        self.scale = scale
        self.branch0 = ConvNormAct(c, 4)
        self.branch1 = nn.Sequential(ConvNormAct(c, 4), ConvNormAct(4, 4, 3))
        self.conv2d = nn.Conv2d(8, c, 1)
        self.relu = nn.ReLU()
        self.out_channels = c

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.relu(out * self.scale + x)


class GhostStrided(nn.Module):
    """timm's ``GhostBottleneck`` with a stride: a depthwise conv between the ghost modules, and a
    depthwise + pointwise shortcut (two weight layers, no activation), added in place."""

    def __init__(self, cin, mid, cout, stride=2):
        super().__init__()
        from test_attach_coverage import GhostModule

        self.ghost1 = GhostModule(cin, mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn_dw = nn.BatchNorm2d(mid)
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                      nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out_channels = cout

    def forward(self, x):
        shortcut = x
        x = self.ghost2(self.bn_dw(self.conv_dw(self.ghost1(x))))
        x += self.shortcut(shortcut)
        return x


class BnActConv(nn.Module):
    def __init__(self, cin, cout, k=1):
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)

    def forward(self, x):
        return self.conv(self.act(self.bn(x)))


class DualPathBlock(nn.Module):
    """timm ``dpn.py``: blocks pass ``(residual, dense)`` pairs; the first block of a stage projects the
    input with a pre-activated conv (``bn -> relu -> conv``) and slices it into both paths."""

    def __init__(self, cin, r, c, inc, proj):
        super().__init__()
        self.c = c
        self.c1x1_w_s1 = BnActConv(cin, c + 2 * inc) if proj else None
        self.c1x1_a, self.c3x3_b, self.c1x1_c = BnActConv(cin, r), BnActConv(r, r, 3), BnActConv(r, c + inc)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.c1x1_w_s1 is None:
            x_s1, x_s2 = x[0], x[1]
        else:
            x_s = self.c1x1_w_s1(x_in)
            x_s1, x_s2 = x_s[:, :self.c], x_s[:, self.c:]
        x_in = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return x_s1 + x_in[:, :self.c], torch.cat([x_s2, x_in[:, self.c:]], dim=1)


class CatPaths(nn.Module):
    out_channels = 28

    def forward(self, x):
        return torch.cat(x, 1)


# name -> (build, expected places); benchmarks/attach_coverage.py reads this table too
PATTERNS = {
    "cspresnet": (lambda: Net([CrossStage(8, 16), CrossStage(16, 16)]),
                  [f"blocks.{s}.blocks.{b}.conv3.bn" for s in range(2) for b in range(2)]),
    "inception_resnet_v2": (lambda: Net([Mixed(8, 8), Block35(16), Block35(16)]),
                            ["blocks.1.conv2d", "blocks.2.conv2d"]),
    # the identity blocks only: the first block's shortcut is a slice of a pre-activated conv (see the docs)
    "dpn": (lambda: Net([DualPathBlock(8, 4, 8, 4, True), DualPathBlock(20, 4, 8, 4, False),
                         DualPathBlock(24, 4, 8, 4, False), CatPaths()]),
            ["blocks.1.c1x1_c.conv", "blocks.2.c1x1_c.conv"]),
    "ghostnet_strided": (lambda: Net([GhostStrided(8, 16, 12), GhostStrided(12, 24, 16)]),
                         ["blocks.0.ghost2", "blocks.1.ghost2"]),
    "rexnet": (lambda: Net([LinearBottleneck(8, 8), LinearBottleneck(8, 12)], c=8),
               ["blocks.0.conv_pwl.bn", "blocks.1.conv_pwl.bn"]),
    "legacy_seresnet": (lambda: Net([SEResNetBlock(8, 8), SEResNetBlock(8, 8)]),
                        ["blocks.0.se_module:input", "blocks.1.se_module:input"]),
}


@pytest.mark.parametrize("net", sorted(PATTERNS))
@pytest.mark.parametrize("attention", ["eca", "se"])
def test_timm_residual_patterns_get_one_module_per_addition(net, attention):
    build, afters = PATTERNS[net]
    check_attach(build, afters, attention=attention, **({"reduction": 2} if attention == "se" else {}))


@pytest.mark.parametrize("net", sorted(PATTERNS))
def test_dispatch_tracer_reads_the_patterns_as_fx_does(net, monkeypatch):
    from excite.plug.attach import attach

    build, _ = PATTERNS[net]
    fx = attach(build(), "eca", input_size=(3, 16, 16), profile=False)

    def fail(model):
        raise RuntimeError("fx switched off")

    monkeypatch.setattr(importlib.import_module("excite.plug.graph"), "_fx_graph", fail)
    dispatch = attach(build(), "eca", input_size=(3, 16, 16), profile=False)
    assert dispatch.tracer == "dispatch (meta)"
    assert [vars(i) for i in dispatch.insertions] == [vars(i) for i in fx.insertions]


def test_res2net_slices_made_inside_the_block_are_still_not_shortcuts():
    """A slice counts as a shortcut only when the block reads it from outside (CSPNet), not when the block
    makes it itself (Res2Net's ``sp + spx[i]``): the hierarchical additions still get nothing."""
    from test_attach_coverage import TIMM

    build, afters = TIMM["res2net"]
    check_attach(build, afters)
