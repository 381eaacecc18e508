"""excite.attach on the block patterns of timm / torchvision that it used to miss.

One minimal module per cause, as small as the reproduction in the issue, plus timm- and torchvision-style
look-alikes (same module structure and names; timm and torchvision are not importable here). Every case is
checked for: the number and place of insertions (hand-listed from the block code and the papers' rule:
SENet Fig. 3 / ECA-Net Fig. 2, after the branch's last layer, before the addition), outputs bit-identical
with ``init="identity"``, a training step reaching every new parameter, and every original key kept.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import excite
from excite.core.errors import ExciteError
from excite.plug.attach import attach


def _x(c=3, size=16, n=2):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(0))


def _randomise_bn(model):
    """Non-trivial BN statistics and affine parameters, so that a wrong insertion changes the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def check_attach(build, afters, *, where="residual", attention="eca", size=16, in_ch=3, **kw):
    """Attach with identity init and check the four properties the issue asks for; returns the report."""
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        _randomise_bn(model)
    x = _x(in_ch, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y0 = model(x)
    report = attach(model, attention, where=where, init="identity", input_size=(in_ch, size, size),
                    profile=False, **kw)
    # 1. the right number of modules, at the right places
    assert [i.after for i in report.insertions] == afters, report.table()
    # 2. every original key kept, with its value
    after = model.state_dict()
    assert all(k in after and torch.equal(after[k], v) for k, v in before.items())
    new = set(after) - set(before)
    assert len([k for k in new if k.endswith("_scale")]) == len(afters)
    # 3. exactly the original function at step 0
    with torch.no_grad():
        assert torch.equal(model(x), y0)
    # 4. a training step: gradients reach every new parameter, and the blend scalars move
    model.train()
    new_params = {n: p for n, p in model.named_parameters() if n in new}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        assert all(p.grad is not None for p in new_params.values())
        opt.step()
    assert any(p.grad.abs().sum() > 0 for n, p in new_params.items() if not n.endswith("_scale"))
    assert all(p.item() != 0 for n, p in new_params.items() if n.endswith("_scale"))
    return report


class Net(nn.Module):
    """stem -> blocks -> pool -> fc, the frame of every minimal reproduction."""

    def __init__(self, blocks, c=8, in_ch=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(self.blocks[-1].out_channels if hasattr(self.blocks[-1], "out_channels") else c, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


# --- cause 1: norm layers that subclass nn.BatchNorm2d / nn.GroupNorm and call F.batch_norm themselves ------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the activation lives inside the norm, which calls F.batch_norm itself."""

    def __init__(self, c, apply_act=True):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True) if apply_act else nn.Identity()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class GroupNormAct(nn.GroupNorm):
    def __init__(self, c, apply_act=True):
        super().__init__(2, c)
        self.act = nn.ReLU() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class NormActBlock(nn.Module):
    def __init__(self, c, norm=BatchNormAct2d):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = norm(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = norm(c, apply_act=False)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.bn2(self.conv2(self.bn1(self.conv1(x)))))


def test_cause1_norm_subclass_with_functional_forward():
    report = check_attach(lambda: Net([NormActBlock(8), NormActBlock(8, GroupNormAct)]),
                          ["blocks.0.bn2", "blocks.1.bn2"])
    assert report.tracer == "fx"


# --- cause 2: a branch that already ends in a gate, x + se(bn(conv(x))) -----------------------------------


class SEModule(nn.Module):
    """timm's SEModule: conv_reduce / conv_expand, x * sigmoid(...)."""

    def __init__(self, c, rd=4):
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        s = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class GatedBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.se = SEModule(c)

    def forward(self, x):
        return F.relu(x + self.se(self.bn(self.conv(x))))


def test_cause2_branch_ending_in_a_gate_gets_the_module_before_it():
    check_attach(lambda: Net([GatedBlock(8), GatedBlock(8)]), ["blocks.0.bn", "blocks.1.bn"])


# --- cause 3: layer scale, x + gamma * bn(conv(x)) -------------------------------------------------------


class LayerScaleBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn = nn.BatchNorm2d(c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-1))

    def forward(self, x):
        return x + self.gamma.view(1, -1, 1, 1) * self.bn(self.conv(x))


def test_cause3_layer_scale_gets_the_module_before_it():
    check_attach(lambda: Net([LayerScaleBlock(8), LayerScaleBlock(8)]), ["blocks.0.bn", "blocks.1.bn"])


# --- cause 4: a branch ending in a concatenation and a slice (GhostNet) ------------------------------------


class GhostModule(nn.Module):
    def __init__(self, cin, oup, relu=True):
        super().__init__()
        self.oup = oup
        init = math.ceil(oup / 2)
        act = [nn.ReLU(inplace=True)] if relu else []
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), *act)
        self.cheap_operation = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False),
                                             nn.BatchNorm2d(init), *act)

    def forward(self, x):
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, : self.oup, :, :]


class GhostBottleneck(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.ghost1 = GhostModule(c, mid)
        self.ghost2 = GhostModule(mid, c, relu=False)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


def test_cause4_branch_ending_in_a_concatenation_gets_it_after_the_concatenation():
    report = check_attach(lambda: Net([GhostBottleneck(7, 12), GhostBottleneck(7, 10)], c=7),
                          ["blocks.0.ghost2", "blocks.1.ghost2"])
    assert [i.channels for i in report.insertions] == [7, 7]  # the sliced width, not the concatenation's 8


class InlineGhost(nn.Module):
    """The concatenation and slice written in the block's own forward: no module returns the branch's end."""

    def __init__(self, c):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(c, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2))
        h = c // 2
        self.cheap = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h))

    def forward(self, x):
        p = self.primary(x)
        return x + torch.cat([p, self.cheap(p)], 1)[:, : x.shape[1]]


def test_junction_without_a_hookable_end_is_reported_not_hidden():
    report = attach(Net([InlineGhost(8), GatedBlock(8)]), "eca", input_size=(3, 16, 16), profile=False)
    assert [i.after for i in report.insertions] == ["blocks.1.bn"]
    assert "1 residual junction(s) found where no hook can apply a module (in blocks.0)" in report.table()


class ReshapeBlock(nn.Module):
    """A view whose arguments come from the input's shape: fx records the sizes as nodes; they are not data."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.bn(self.conv(x)).flatten(2)
        return x + y.view(x.size(0), x.shape[1], x.shape[2], -1)


def test_views_with_shape_arguments_are_stepped_over():
    check_attach(lambda: Net([ReshapeBlock(8), ReshapeBlock(8)]), ["blocks.0.bn", "blocks.1.bn"])


# --- cause 5: a conv subclass calling F.conv2d, no norm after it (NF-Nets' ScaledStdConv2d) ------------------


class ScaledStdConv2d(nn.Conv2d):
    """Weight standardisation in the forward (Brock et al. 2021), as timm writes it."""

    def __init__(self, cin, cout, k, gamma=1.0, eps=1e-6):
        super().__init__(cin, cout, k, padding=k // 2)
        self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=self.eps)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class NFBlock(nn.Module):
    def __init__(self, c, alpha=0.2, beta=1.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.act1 = nn.GELU()
        self.conv1 = ScaledStdConv2d(c, c, 3)
        self.act2 = nn.GELU()
        self.conv2 = ScaledStdConv2d(c, c, 3)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        out = self.conv2(self.act2(self.conv1(self.act1(x) * self.beta)))
        return x + out * self.skipinit_gain * self.alpha


def test_cause5_conv_subclass_without_norm():
    check_attach(lambda: Net([NFBlock(8), NFBlock(8)]), ["blocks.0.conv2", "blocks.1.conv2"])


# --- cause 6: shape arithmetic in the forward (timm's TF "SAME" padding) ------------------------------------


def pad_same(x, k, s):
    ih, iw = x.shape[-2:]
    pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: a conv subclass, so it is one opaque layer and fx never sees its arithmetic."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__(cin, cout, k, stride, 0, bias=False)

    def forward(self, x):
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), self.weight, self.bias, self.stride)


class PadSame(nn.Module):
    """The same arithmetic in a module of its own (timm's MaxPool2dSame is one): fx fails on it."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        return pad_same(x, self.k, self.s)


class SameBlock(nn.Module):
    def __init__(self, c, own_module=False):
        super().__init__()
        if own_module:
            self.pad = PadSame(3, 1)
            self.conv1 = nn.Conv2d(c, c, 3, bias=False)
        else:
            self.pad = nn.Identity()
            self.conv1 = Conv2dSame(c, c, 3)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(self.pad(x)))))))


@pytest.mark.parametrize("own_module,tracer", [(False, "fx"), (True, "dispatch (meta)")])
def test_cause6_shape_arithmetic(own_module, tracer):
    report = check_attach(lambda: Net([SameBlock(8, own_module), SameBlock(8, own_module)]),
                          ["blocks.0.bn2", "blocks.1.bn2"])
    assert report.tracer == tracer


# --- cause 7: parallel branches with no identity (RepVGG) -------------------------------------------------


class RepVGGBlock(nn.Module):
    """Training-time RepVGG block (Ding et al. 2021): relu(k3(x) + k1(x) + bn(x)); no identity at stride 2."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = nn.Sequential()
        self.rbr_dense.add_module("conv", nn.Conv2d(cin, cout, 3, stride, 1, bias=False))
        self.rbr_dense.add_module("bn", nn.BatchNorm2d(cout))
        self.rbr_1x1 = nn.Sequential()
        self.rbr_1x1.add_module("conv", nn.Conv2d(cin, cout, 1, stride, 0, bias=False))
        self.rbr_1x1.add_module("bn", nn.BatchNorm2d(cout))
        self.out_channels = cout

    def forward(self, inputs):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)


def test_cause7_parallel_branches_get_the_module_after_their_sum():
    report = check_attach(lambda: Net([RepVGGBlock(8, 16, 2), RepVGGBlock(16, 16)]),
                          ["blocks.0.nonlinearity:input", "blocks.1.nonlinearity:input"])
    assert [i.name for i in report.insertions] == ["blocks.0.attn", "blocks.1.attn"]
    assert [i.channels for i in report.insertions] == [16, 16]


# --- cause 8: additions that are not the block's residual ---------------------------------------------------


class Bottle2neck(nn.Module):
    """Res2Net (Gao et al. 2019): hierarchical `sp + spx[i]` inside the block, one residual around it."""

    def __init__(self, c, width=4, scale=4):
        super().__init__()
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(c, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            spo.append(sp)
        spo.append(spx[-1])
        out = self.bn3(self.conv3(torch.cat(spo, 1)))
        out += shortcut
        return self.relu(out)


def test_cause8_res2net_hierarchical_additions_are_not_residuals():
    # two blocks, one residual each: 2 modules (the issue measured 6)
    check_attach(lambda: Net([Bottle2neck(8), Bottle2neck(8)]), ["blocks.0.bn3", "blocks.1.bn3"])


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class HRModule(nn.Module):
    """HRNet's exchange unit (Sun et al. 2019): two resolutions, each a residual block, then fused by sums."""

    def __init__(self, c=8):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.branches = nn.ModuleList([BasicBlock(c), BasicBlock(2 * c)])
        self.fuse_up = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c),
                                     nn.Upsample(scale_factor=2.0, mode="nearest"))
        self.fuse_down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c))
        self.relu = nn.ReLU()
        self.out_channels = 3 * c

    def forward(self, x):
        hi, lo = self.branches[0](x), self.branches[1](self.down(x))
        y_hi = self.relu(hi + self.fuse_up(lo))
        y_lo = self.relu(self.fuse_down(hi) + lo)
        return torch.cat([y_hi, F.interpolate(y_lo, scale_factor=2.0)], 1)


def test_cause8_hrnet_fusion_is_not_a_residual():
    check_attach(lambda: Net([HRModule()]), ["blocks.0.branches.0.bn2", "blocks.0.branches.1.bn2"])


# --- cause 9: a failure half-way leaves the model as it was -----------------------------------------------


def _snapshot(model):
    return ([(n, type(m).__name__) for n, m in model.named_modules()], list(model.state_dict()),
            [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _same(a, b):
    return a[:3] == b[:3] and all(torch.equal(a[3][k], b[3][k]) for k in a[3])


class Wide(nn.Module):
    """Two residual branches: 32 channels (SE with r=16 fits) then 14 (it does not: 14 // 16 = 0)."""

    def __init__(self):
        super().__init__()
        self.a = GatedBlock(32)
        self.proj = nn.Conv2d(32, 14, 1)
        self.b = NormActBlock(14)

    def forward(self, x):
        return self.b(self.proj(self.a(x)))


def test_cause9_failure_leaves_the_model_unchanged():
    model = Wide()
    before = _snapshot(model)
    with pytest.raises(ExciteError, match=r"b\.bn2 \(14 channels\).*reduction"):
        attach(model, "se", reduction=16, input_size=(32, 8, 8))
    assert _same(_snapshot(model), before)
    report = attach(model, "se", reduction=4, input_size=(32, 8, 8), profile=False)  # still usable
    assert [i.after for i in report.insertions] == ["a.bn", "b.bn2"]


def test_failure_while_inserting_undoes_every_change(monkeypatch):
    """An error after the first insertion (here injected) undoes attributes, parameters and hooks."""
    mod = importlib.import_module("excite.plug.attach")

    real, calls = mod._insert, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_insert", flaky)
    for build in (lambda: Net([GatedBlock(8), GatedBlock(8)]),
                  lambda: excite.create_model("resnet20", attention="none")):
        model = build()
        before = _snapshot(model)
        calls.clear()
        with pytest.raises(RuntimeError, match="injected"):
            attach(model, "eca", init="identity", input_size=(3, 16, 16), profile=False)
        assert len(calls) == 2 and _same(_snapshot(model), before)


def test_replace_failure_restores_the_old_attention(monkeypatch):
    mod = importlib.import_module("excite.plug.attach")

    real, calls = mod._insert, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_insert", flaky)
    model = Net([GatedBlock(8), GatedBlock(8)])
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="injected"):
        attach(model, "eca", replace=True, init="identity", input_size=(3, 16, 16), profile=False)
    assert _same(_snapshot(model), before)
    assert all(type(b.se) is SEModule for b in model.blocks)


# --- one profiling pass --------------------------------------------------------------------------------------


def test_report_profiles_the_network_once(monkeypatch):
    mod = importlib.import_module("excite.plug.attach")

    real, seen = mod._profile, []

    def counting(model, *args, **kwargs):
        seen.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(mod, "_profile", counting)
    model = Net([GatedBlock(8) for _ in range(6)])
    ref = excite.profile(model, input_size=(3, 16, 16))
    report = attach(model, "se", reduction=2, init="identity", input_size=(3, 16, 16))
    assert seen.count("Net") == 1 and len(report) == 6
    assert (report.macs_before, report.memory_before) == (ref.macs, ref.memory)
    after = real(model, input_size=(3, 16, 16))
    assert report.macs_added == after.macs - ref.macs and report.memory_added == after.memory - ref.memory
    # SE MACs per module: 2 * C * (C // r) on the pooled vector (Hu et al. 2018), the blend has none
    assert [i.macs for i in report.insertions] == [2 * 8 * 4] * 6


# --- replace=True: swap the attention a network already has ---------------------------------------------


def test_replace_timm_style_se_with_eca_keeps_every_other_key():
    torch.manual_seed(0)
    model = Net([GatedBlock(8), GatedBlock(8)])
    before = model.state_dict()
    report = attach(model, "eca", replace=True, k_size=3, input_size=(3, 16, 16), profile=False)
    assert [(i.name, i.after, i.channels) for i in report.insertions] == [
        ("blocks.0.se", "replaces SEModule", 8), ("blocks.1.se", "replaces SEModule", 8)]
    after = model.state_dict()
    kept = {k for k in before if ".se." not in k}
    assert kept <= set(after) and all(torch.equal(after[k], before[k]) for k in kept)
    assert set(after) - kept == {"blocks.0.se.conv.weight", "blocks.1.se.conv.weight"}
    assert all(type(b.se).__name__ == "ECA" for b in model.blocks)
    assert "replace=True" in report.table()
    model(_x())  # and it runs


def test_replace_report_totals_are_net_changes():
    model = Net([GatedBlock(8), GatedBlock(8)])
    old = excite.profile(model, input_size=(3, 16, 16))
    report = attach(model, "eca", replace=True, k_size=3, input_size=(3, 16, 16))
    new = excite.profile(model, input_size=(3, 16, 16))
    # SEModule(8, rd=4): 8*4+4 + 4*8+8 = 76 params; ECA k=3: 3 params, 3*8 MACs (Wang et al. 2020, Sec. 3.3)
    assert [(i.params, i.macs) for i in report.insertions] == [(3, 24), (3, 24)]
    assert report.params_added == new.params - old.params == 2 * (3 - 76)
    assert (report.macs_before, report.macs_added) == (old.macs, new.macs - old.macs)
    assert report.memory_added == new.memory - old.memory
    assert "replaced 2 modules (SEModule, 152 params)" in report.table() and "-" in report.table().splitlines()[-2]


def test_replace_project_efficientnet_se_with_eca():
    """excite's own EfficientNet: SE in every MBConv becomes ECA at the same key (features.i.j.block.k)."""
    torch.manual_seed(0)
    model = excite.create_model("efficientnet_b0", num_classes=10)
    se_channels = [m.fc1.in_channels for m in model.modules() if type(m).__name__ == "SqueezeExcite"]
    n_se = len(se_channels)
    before = model.state_dict()
    report = attach(model, "eca", replace=True, input_size=(3, 32, 32), profile=False)
    assert len(report) == n_se == 16
    built = excite.create_model("efficientnet_b0", attention="eca", num_classes=10)
    assert list(model.state_dict()) == list(built.state_dict())  # the keys of EfficientNet built with ECA
    assert [i.channels for i in report.insertions] == se_channels
    kept = [k for k in before if k in model.state_dict()]
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in kept)
    assert len(kept) == len(before) - 4 * n_se  # fc1/fc2 weight and bias of every SE, nothing else


def test_replace_with_nothing_to_replace_is_one_line():
    with pytest.raises(ExciteError, match="no attention module"):
        attach(Net([BasicBlock(8)]), "eca", replace=True, input_size=(3, 16, 16))


def test_replace_with_identity_init_equals_the_network_without_its_attention():
    torch.manual_seed(0)
    model = Net([GatedBlock(8), GatedBlock(8)]).eval()
    plain = Net([GatedBlock(8), GatedBlock(8)]).eval()
    plain.load_state_dict(model.state_dict())
    for b in plain.blocks:
        b.se = nn.Identity()
    attach(model, "eca", replace=True, init="identity", input_size=(3, 16, 16), profile=False)
    with torch.no_grad():
        assert torch.equal(model(_x()), plain(_x()))


# --- where="block": networks without residual additions -----------------------------------------------------


def vgg():
    """torchvision VGG layout: features = convs and ReLUs with max pools between stages."""
    cfg = [8, "M", 16, 16, "M", 16, 16, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(16, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 5))

    def forward(x):
        return model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))

    model.forward = forward
    return model


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        m = vgg()
        self.features, self.avgpool, self.classifier = m.features, m.avgpool, m.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):
    """torchvision _DenseLayer: BN-ReLU-1x1-BN-ReLU-3x3 on the concatenation of every earlier output."""

    def __init__(self, cin, growth=4):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs):
        x = torch.cat(inputs, 1) if isinstance(inputs, list) else inputs
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n, cin, growth=4):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 8, 3, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(8))
        self.features.add_module("denseblock1", DenseBlock(2, 8))
        self.features.add_module("transition1", nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1),
                                                              nn.AvgPool2d(2)))
        self.features.add_module("denseblock2", DenseBlock(2, 8))
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        return self.classifier(F.relu(self.features(x)).mean((2, 3)))


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, k, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, cin, pool=4):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 4, 1)
        self.branch5x5_1 = BasicConv2d(cin, 4, 1)
        self.branch5x5_2 = BasicConv2d(4, 4, 5, padding=2)
        self.branch_pool = BasicConv2d(cin, pool, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([self.branch1x1(x), b5, bp], 1)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, 3, padding=1)
        self.Mixed_5b = InceptionA(8)
        self.Mixed_5c = InceptionA(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.Mixed_5c(self.Mixed_5b(self.Conv2d_1a_3x3(x))).mean((2, 3)))


def channel_shuffle(x, groups):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """torchvision ShuffleNetV2 InvertedResidual (stride 1): split, branch2 on half, concat, shuffle."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch2 = nn.Sequential(nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                                     nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                     nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), 1), 2)


class Fire(nn.Module):
    def __init__(self, cin, s, e):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, s, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(s, e, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(s, e, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def conv_dw(cin, cout, stride):
    """MobileNetV1's depthwise-separable block as the common PyTorch ports write it (a Sequential)."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class MobileNetV1(nn.Module):
    def __init__(self):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(True))
        self.model = nn.Sequential(stem,
                                   conv_dw(8, 16, 1), conv_dw(16, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.model(x).mean((2, 3)))


BLOCK_NETS = {
    "vgg": (VGG, ["features.4", "features.9"]),  # the last ReLU of each stage with >= 1 conv... before its pool
    "densenet": (DenseNet, ["features.denseblock1.denselayer1", "features.denseblock1.denselayer2",
                            "features.denseblock2.denselayer1", "features.denseblock2.denselayer2"]),
    "inception": (Inception, ["Mixed_5b", "Mixed_5c"]),
    "shufflenet": (lambda: Net([ShuffleUnit(8), ShuffleUnit(8)]), ["blocks.0", "blocks.1"]),
    "squeezenet": (lambda: Net([Fire(8, 4, 4), Fire(8, 4, 4)]), ["blocks.0", "blocks.1"]),
    "mobilenet_v1": (MobileNetV1, ["model.1", "model.2"]),
}


@pytest.mark.parametrize("net", sorted(BLOCK_NETS))
def test_where_block_puts_a_module_after_each_block(net):
    build, afters = BLOCK_NETS[net]
    if net == "vgg":  # stage 1 (one conv) and stages 2, 3 (two convs): one module before each pool
        afters = ["features.1", "features.6", "features.11"]
    report = check_attach(build, afters, where="block", attention="se", reduction=2)
    assert "where='block'" in report.table()


def test_where_residual_on_a_plain_network_suggests_block():
    with pytest.raises(ExciteError, match="where='block'"):
        attach(VGG(), "eca", input_size=(3, 16, 16))


def test_untraceable_everywhere_is_one_line():
    class TwoInputs(nn.Module):  # control flow on a second input: fx fails, and one input is not enough
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, y):
            return self.conv(x) + (y if y.shape[0] > 1 else x)

    with pytest.raises(ExciteError) as e:
        attach(TwoInputs(), "eca", input_size=(3, 8, 8))
    assert "cannot trace" in str(e.value) and "\n" not in str(e.value)


# --- timm-style look-alikes --------------------------------------------------------------------------------


class TimmSEBottleneck(nn.Module):
    """timm ResNet Bottleneck with BatchNormAct2d norms and SE (seresnet50): causes 1 and 2 together."""

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        out = self.out_channels = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = BatchNormAct2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = BatchNormAct2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = BatchNormAct2d(out, apply_act=False)
        self.se = SEModule(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:  # ResNet-D: avg-pool then 1x1 conv in the shortcut
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride, ceil_mode=True) if stride > 1 else nn.Identity(),
                                            nn.Conv2d(cin, out, 1, bias=False), BatchNormAct2d(out, apply_act=False))
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))
        x = self.drop_path(self.se(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """timm ConvNeXtBlock (conv_mlp=False): dw 7x7, LayerNorm and MLP channels-last, layer scale gamma."""

    def __init__(self, c):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.mlp = Mlp(c, 4 * c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + shortcut


class TimmEffSE(nn.Module):
    """timm efficientnet_blocks.SqueezeExcite: conv_reduce / act1 / conv_expand / gate."""

    def __init__(self, c, rd):
        super().__init__()
        self.conv_reduce, self.act1 = nn.Conv2d(c, rd, 1), nn.SiLU(inplace=True)
        self.conv_expand, self.gate = nn.Conv2d(rd, c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class TimmInvertedResidual(nn.Module):
    """timm InvertedResidual (tf_efficientnet: Conv2dSame, BatchNormAct2d, SE in the middle, drop path)."""

    def __init__(self, c, expand=4):
        super().__init__()
        mid = c * expand
        self.conv_pw = nn.Conv2d(c, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = Conv2dSame(mid, mid, 3)
        self.conv_dw.groups = mid
        self.conv_dw.weight = nn.Parameter(torch.randn(mid, 1, 3, 3) * 0.1)
        self.bn2 = BatchNormAct2d(mid)
        self.se = TimmEffSE(mid, c // 2)
        self.conv_pwl = nn.Conv2d(mid, c, 1, bias=False)
        self.bn3 = BatchNormAct2d(c, apply_act=False)
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.bn2(F.conv2d(pad_same(self.bn1(self.conv_pw(x)), 3, 1), self.conv_dw.weight, None, 1, 0, 1,
                              self.conv_dw.groups))
        x = self.bn3(self.conv_pwl(self.se(x)))
        return self.drop_path(x) + shortcut


class TimmRepVggBlock(nn.Module):
    """timm byobnet RepVggBlock: sum of kxk and 1x1 conv-bn, drop path, += identity BN, attn, act."""

    def __init__(self, c):
        super().__init__()
        self.identity = nn.BatchNorm2d(c)
        self.conv_kxk = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.conv_1x1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.drop_path = nn.Identity()
        self.attn = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = self.identity(x)
        x = self.drop_path(self.conv_1x1(x) + self.conv_kxk(x))
        x += identity
        return self.act(self.attn(x))


TIMM = {
    "seresnet": (lambda: Net([TimmSEBottleneck(8, 4), TimmSEBottleneck(16, 4), TimmSEBottleneck(16, 8, 2)]),
                 ["blocks.0.bn3", "blocks.1.bn3", "blocks.2.bn3"]),
    "convnext": (lambda: Net([ConvNeXtBlock(8), ConvNeXtBlock(8)]), ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]),
    "tf_efficientnet": (lambda: Net([TimmInvertedResidual(8), TimmInvertedResidual(8)]),
                        ["blocks.0.bn3", "blocks.1.bn3"]),
    "repvgg": (lambda: Net([TimmRepVggBlock(8), TimmRepVggBlock(8)]),
               ["blocks.0.drop_path:input", "blocks.1.drop_path:input"]),
    "nfnet": (lambda: Net([NFBlock(8), NFBlock(8)]), ["blocks.0.conv2", "blocks.1.conv2"]),
    "res2net": (lambda: Net([Bottle2neck(8), Bottle2neck(8)]), ["blocks.0.bn3", "blocks.1.bn3"]),
    "ghostnet": (lambda: Net([GhostBottleneck(8, 16), GhostBottleneck(8, 16)]), ["blocks.0.ghost2", "blocks.1.ghost2"]),
    "hrnet": (lambda: Net([HRModule()]), ["blocks.0.branches.0.bn2", "blocks.0.branches.1.bn2"]),
}


@pytest.mark.parametrize("net", sorted(TIMM))
@pytest.mark.parametrize("attention", ["eca", "se"])
def test_timm_style_lookalikes(net, attention):
    build, afters = TIMM[net]
    kw = {"reduction": 2} if attention == "se" else {}
    check_attach(build, afters, attention=attention, **kw)


def test_convnext_channels_last_branch_sees_nchw():
    """The MLP runs channels-last; the module sees the (N, C, H, W) map and its key sits on the block."""
    model = Net([ConvNeXtBlock(8)])
    seen = []
    report = attach(model, "eca", input_size=(3, 16, 16), profile=False)
    model.blocks[0].attn.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    model(_x())
    assert report.insertions[0].name == "blocks.0.attn" and seen == [(2, 8, 16, 16)]


def test_attach_is_deterministic():
    """Same architecture and arguments, same modules at the same keys (a recorded call can be replayed)."""
    reports = [attach(TIMM["seresnet"][0](), "eca", init="identity", input_size=(3, 16, 16), profile=False)
               for _ in range(2)]
    assert [vars(i) for i in reports[0].insertions] == [vars(i) for i in reports[1].insertions]


@pytest.mark.parametrize("net", sorted(TIMM) + sorted(BLOCK_NETS))
def test_dispatch_tracer_finds_the_same_places_as_fx(net, monkeypatch):
    """The fallback tracer (aten ops on meta tensors) reads the same blocks as torch.fx."""
    graph = importlib.import_module("excite.plug.graph")
    build, _ = TIMM[net] if net in TIMM else BLOCK_NETS[net]
    where = "residual" if net in TIMM else "block"
    fx = attach(build(), "eca", where=where, input_size=(3, 16, 16), profile=False)

    def fail(model):
        raise RuntimeError("fx switched off")

    monkeypatch.setattr(graph, "_fx_graph", fail)
    dispatch = attach(build(), "eca", where=where, input_size=(3, 16, 16), profile=False)
    assert dispatch.tracer == "dispatch (meta)"  # (tf_efficientnet: fx fails on its inline padding too)
    assert [vars(i) for i in dispatch.insertions] == [vars(i) for i in fx.insertions]


# the minimal reproduction of each cause, for benchmarks/attach_coverage.py (the tests above check them)
CAUSES = {
    "1_norm_act_subclass": (lambda: Net([NormActBlock(8), NormActBlock(8, GroupNormAct)]),
                            ["blocks.0.bn2", "blocks.1.bn2"]),
    "2_gate": (lambda: Net([GatedBlock(8), GatedBlock(8)]), ["blocks.0.bn", "blocks.1.bn"]),
    "3_layer_scale": (lambda: Net([LayerScaleBlock(8), LayerScaleBlock(8)]), ["blocks.0.bn", "blocks.1.bn"]),
    "4_concat_slice": (lambda: Net([GhostBottleneck(7, 12), GhostBottleneck(7, 10)], c=7),
                       ["blocks.0.ghost2", "blocks.1.ghost2"]),
    "5_conv_subclass": (lambda: Net([NFBlock(8), NFBlock(8)]), ["blocks.0.conv2", "blocks.1.conv2"]),
    "6_same_padding_conv": (lambda: Net([SameBlock(8), SameBlock(8)]), ["blocks.0.bn2", "blocks.1.bn2"]),
    "6_same_padding_module": (lambda: Net([SameBlock(8, True), SameBlock(8, True)]), ["blocks.0.bn2", "blocks.1.bn2"]),
    "7_repvgg": (lambda: Net([RepVGGBlock(8, 16, 2), RepVGGBlock(16, 16)]),
                 ["blocks.0.nonlinearity:input", "blocks.1.nonlinearity:input"]),
    "8_res2net": (lambda: Net([Bottle2neck(8), Bottle2neck(8)]), ["blocks.0.bn3", "blocks.1.bn3"]),
    "8_hrnet": (lambda: Net([HRModule()]), ["blocks.0.branches.0.bn2", "blocks.0.branches.1.bn2"]),
}


def test_replace_project_cbam_resnet_with_eca_gives_the_eca_model():
    """excite's own modules are found too: CBAM (channel then spatial gate) in every block becomes ECA."""
    model = excite.create_model("resnet18", attention="cbam", num_classes=5).eval()
    report = attach(model, "eca", replace=True, input_size=(3, 32, 32), profile=False)
    assert [i.name for i in report.insertions] == [f"layer{s}.{b}.attn" for s in range(1, 5) for b in range(2)]
    assert {i.after for i in report.insertions} == {"replaces CBAM"}
    built = excite.create_model("resnet18", attention="eca", num_classes=5).eval()
    assert list(model.state_dict()) == list(built.state_dict())
    model.load_state_dict(built.state_dict())
    x = _x(size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), built(x))
