"""excite.attach on small look-alikes of torchvision / timm networks (same module structure and names).

References: the insertion point of SENet / CBAM / ECA-Net (residual branch, after the last norm, before the
addition), torchvision's and timm's block code structure, and the project's own models.
"""

import copy

import pytest
import torch
from torch import nn

import excite
from excite.core.errors import ExciteError
from excite.plug.attach import AttachReport, attach


def cbn(cin, cout, k=3, s=1, groups=1, act=True):
    """torchvision's Conv2dNormActivation layout: Sequential(conv, bn[, relu]) -> keys `.0.`, `.1.`."""
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


# --- torchvision ResNet / ResNeXt / Wide-ResNet ---------------------------------------------------------


class TVBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVBottleneck(nn.Module):
    def __init__(self, cin, planes, stride=1, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    def __init__(self, block="basic", layers=(1, 2), groups=1, base_width=64, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 8, []
        for i, n in enumerate(layers):
            planes, blocks = 8 * 2**i, []
            for j in range(n):
                s = 2 if i > 0 and j == 0 else 1
                if block == "basic":
                    blocks.append(TVBasicBlock(cin, planes, s))
                    cin = planes
                else:
                    blocks.append(TVBottleneck(cin, planes, s, groups, base_width))
                    cin = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- timm ResNet (drop-path after the attention, activation after the add) -----------------------------


class TimmBottleneck(nn.Module):
    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.se = None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)) \
            if stride != 1 or cin != planes * 4 else None
        self.drop_path = nn.Dropout(0.0)  # timm's DropPath: parameter-free, on the branch

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


class TimmResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(TimmBottleneck(8, 4), TimmBottleneck(16, 4))
        self.layer2 = nn.Sequential(TimmBottleneck(16, 8, 2))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x)))))
        return self.fc(self.global_pool(x).flatten(1))


# --- torchvision MobileNetV2 -------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [cbn(cin, hidden, 1)] if expand != 1 else []
        layers += [cbn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TVMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            cbn(3, 8, 3, 2), InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 6), InvertedResidual(12, 12, 1, 6),
            cbn(12, 32, 1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 5))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- torchvision EfficientNet (MBConv with its own SE and stochastic depth) -----------------------------


class SqueezeExcitation(nn.Module):
    def __init__(self, cin, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, cin, 1)
        self.activation = nn.SiLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(s) * x


class StochasticDepth(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MBConv(nn.Module):
    def __init__(self, cin, cout, stride, expand, p=0.1):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = cin * expand
        layers = [cbn(cin, hidden, 1)] if expand != 1 else []
        layers += [cbn(hidden, hidden, 3, stride, groups=hidden), SqueezeExcitation(hidden, max(1, cin // 4)),
                   cbn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(p)

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class TVEfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            cbn(3, 8, 3, 2), nn.Sequential(MBConv(8, 8, 1, 1)), nn.Sequential(MBConv(8, 12, 2, 6), MBConv(12, 12, 1, 6)),
            cbn(12, 32, 1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- torchvision RegNet (`x = self.proj(x) + self.f(x)`) --------------------------------------------------


class ResBottleneckBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=4):
        super().__init__()
        self.proj = cbn(cin, cout, 1, stride, act=False) if cin != cout or stride != 1 else None
        self.f = nn.Sequential()
        self.f.add_module("a", cbn(cin, cout, 1))
        self.f.add_module("b", cbn(cout, cout, 3, stride, groups=cout // group_width))
        self.f.add_module("c", cbn(cout, cout, 1, act=False))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class TVRegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbn(3, 8, 3, 2)
        self.trunk_output = nn.Sequential(nn.Sequential(ResBottleneckBlock(8, 16, 2), ResBottleneckBlock(16, 16, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(1))


# --- a user-defined CNN whose forward branches on a tensor value (cannot be traced) ----------------------


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        if x.mean() > 10:  # data-dependent control flow: torch.fx cannot follow it
            x = x * 0.5
        x = x + self.body(x)
        return self.head(x.mean((2, 3)))


# manifest of look-alikes -> the norms SENet/CBAM/ECA would follow (hand-listed from the block code)
NETS = {
    "tv_resnet18": (lambda: TVResNet("basic"), ["layer1.0.bn2", "layer2.0.bn2", "layer2.1.bn2"]),
    "tv_resnet50": (lambda: TVResNet("bottleneck"), ["layer1.0.bn3", "layer2.0.bn3", "layer2.1.bn3"]),
    "tv_resnext": (lambda: TVResNet("bottleneck", groups=2, base_width=16), ["layer1.0.bn3", "layer2.0.bn3", "layer2.1.bn3"]),
    "tv_wide_resnet": (lambda: TVResNet("bottleneck", base_width=128), ["layer1.0.bn3", "layer2.0.bn3", "layer2.1.bn3"]),
    "timm_resnet": (TimmResNet, ["layer1.0.bn3", "layer1.1.bn3", "layer2.0.bn3"]),
    "tv_mobilenet_v2": (TVMobileNetV2, ["features.1.conv.2", "features.3.conv.3"]),
    "tv_efficientnet": (TVEfficientNet, ["features.1.0.block.2.1", "features.2.1.block.3.1"]),
    "tv_regnet": (TVRegNet, ["trunk_output.0.0.f.c.1", "trunk_output.0.1.f.c.1"]),
}
HOSTS = {"tv_mobilenet_v2": ["features.1", "features.3"], "tv_efficientnet": ["features.1.0", "features.2.1"],
         "tv_regnet": ["trunk_output.0.0", "trunk_output.0.1"]}


def _x(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("net", sorted(NETS))
def test_residual_points_are_after_last_norm_of_each_branch(net):
    build, expected = NETS[net]
    model = build()
    report = attach(model, "eca", profile=False)
    assert [i.after for i in report.insertions] == expected
    hosts = HOSTS.get(net, [e.rsplit(".", 1)[0] for e in expected])
    assert [i.name for i in report.insertions] == [f"{h}.attn" for h in hosts]
    for ins in report.insertions:
        norm = model.get_submodule(ins.after)
        assert ins.channels == norm.num_features


@pytest.mark.parametrize("net", sorted(NETS))
def test_existing_keys_unchanged_and_identity_init_exact(net):
    torch.manual_seed(0)
    model = NETS[net][0]().eval()
    for m in model.modules():  # non-trivial BN statistics so that the test can fail
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y0 = model(_x())
    report = attach(model, "se", init="identity", reduction=2, profile=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    new = set(after) - set(before)
    assert new and all(".attn" in k for k in new)
    with torch.no_grad():
        assert torch.equal(model(_x()), y0)  # exactly the original function at step 0
    # ... and the inserted modules are really on the path: gradients reach every new parameter.
    model(_x()).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".attn" in n]
    assert grads and all(g is not None for g in grads)
    assert report.params_added == sum(after[k].numel() for k in new)


@pytest.mark.parametrize("net", ["tv_resnet50", "tv_mobilenet_v2"])
def test_default_init_changes_output_and_survives_deepcopy(net):
    torch.manual_seed(0)
    model = NETS[net][0]().eval()
    with torch.no_grad():
        y0 = model(_x())
    attach(model, "eca", k_size=3, profile=False)
    with torch.no_grad():
        y1 = model(_x())
        assert not torch.allclose(y0, y1)
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(_x()), y1)
        # the copy's hooks use the copy's modules, not the original's
        for m in twin.modules():
            if hasattr(m, "attn"):
                m.attn.conv.weight.zero_()
        assert not torch.allclose(twin(_x()), y1)


@pytest.mark.parametrize("where", ["residual", "body.1"])
def test_network_fx_cannot_trace_is_traced_at_dispatch_level(where):
    """Control flow on a tensor value: fx and meta tensors fail, a real-tensor dispatch trace does not."""
    model = UserNet().eval()
    with torch.no_grad():
        y0 = model(_x(8))
    report = attach(model, "eca", where=where, init="identity", input_size=(3, 8, 8), profile=False)
    assert [(i.name, i.after, i.channels) for i in report.insertions] == [("attn", "body.1", 8)]
    assert report.tracer == ("dispatch (real tensors)" if where == "residual" else "")
    with torch.no_grad():
        assert torch.equal(model(_x(8)), y0)


def test_patterns_select_modules():
    model = TVResNet("bottleneck")
    report = attach(model, "se", where="layer2.*.bn3", profile=False)
    assert [i.after for i in report.insertions] == ["layer2.0.bn3", "layer2.1.bn3"]
    with pytest.raises(ExciteError, match="matches no module"):
        attach(TVResNet(), "se", where="block*.bn9", profile=False)


def test_user_errors_are_one_line():
    with pytest.raises(ExciteError, match="init="):
        attach(TVResNet(), "se", init="zeros")
    with pytest.raises(ExciteError, match="unknown attention"):
        attach(TVResNet(), "squeeze", profile=False)
    with pytest.raises(ExciteError, match="k_sz"):
        attach(TVResNet(), "eca", k_sz=3, profile=False)


def test_report_table_lists_every_insertion():
    model = TVResNet("bottleneck")
    report = attach(model, "eca", profile=False)
    assert isinstance(report, AttachReport) and len(report) == 3
    text = str(report)
    for ins in report.insertions:
        assert ins.name in text and ins.after in text
    # ECA adds one k-tap 1D conv per block (Wang et al. 2020, Sec. 3.3): k = 3 for these widths.
    assert report.params_added == sum(i.params for i in report.insertions) == 3 * 3


def test_report_from_profiler_when_available():
    model = TVResNet("bottleneck")
    report = attach(model, "se", input_size=(3, 32, 32))
    assert report.macs_added is not None and report.macs_added > 0, report.note


@pytest.mark.parametrize("name,attention", [("resnet18", "eca"), ("resnet20", "se"), ("resnet18", "cbam")])
def test_attached_project_model_equals_built_in_attention(name, attention):
    """Attaching to a plain project model gives the same keys and function as building it with attention."""
    torch.manual_seed(0)
    plain = excite.create_model(name, attention="none", num_classes=5).eval()
    built = excite.create_model(name, attention=attention, num_classes=5).eval()
    attach(plain, attention, profile=False)
    assert list(plain.state_dict()) == list(built.state_dict()) or set(plain.state_dict()) == set(built.state_dict())
    plain.load_state_dict(built.state_dict())
    x = _x(32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), built(x))


def test_cli_attach_prints_the_table(capsys):
    from excite.cli import main

    assert main(["attach", "resnet18", "eca", "--input-size", "32x32"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.attn" in out and "layer4.1.bn2" in out and "8 modules" in out


# --- the report: per-insertion parameters, MACs and memory traffic from the profiler ---------------------


class OneBlock(nn.Module):
    """A single normalised C-channel feature map: the attention's cost is all that changes."""

    def __init__(self, c=256):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("attention,kwargs", [("eca", {"k_size": 3}), ("se", {"reduction": 16})])
def test_report_exact_costs_of_one_module(attention, kwargs):
    """Hand-derived costs at C=256 on an 8x8 map, fp32.

    ECA (Wang et al. 2020, Sec. 3.3): one k-tap Conv1d without bias across the C pooled values: k params,
    k*C MACs. SE (Hu et al. 2018, Sec. 3.2; this project's SE keeps both biases, as torchvision and timm):
    C -> C/r -> C 1x1 convs: 2*C*C/r + C/r + C params, 2*C*C/r MACs. Either reads the map twice (pooling,
    scaling) and writes it once, plus small C-sized traffic.
    """
    c, hw = 256, 8 * 8
    report = attach(OneBlock(c), attention, where="bn", input_size=(3, 8, 8), **kwargs)
    (ins,) = report.insertions
    assert (ins.name, ins.after, ins.channels) == ("attn", "bn", c)
    if attention == "eca":
        assert (ins.params, ins.macs) == (3, 3 * c)
    else:
        assert (ins.params, ins.macs) == (2 * c * c // 16 + c // 16 + c, 2 * c * c // 16)
    assert 4 * 3 * c * hw <= ins.memory <= 4 * 3 * c * hw + 4 * (8 * c + ins.params)
    assert (report.params_added, report.macs_added, report.memory_added) == (ins.params, ins.macs, ins.memory)


@pytest.mark.parametrize("init", ["default", "identity"])
def test_report_rows_sum_to_totals_and_to_an_independent_profile(init):
    from excite.profiling import profile

    model = TVResNet("bottleneck")
    before = profile(copy.deepcopy(model), input_size=(3, 32, 32))
    report = attach(model, "se", init=init, reduction=4, input_size=(3, 32, 32))
    after = profile(model, input_size=(3, 32, 32))
    rows = report.insertions
    assert len(rows) == 3 and all(i.macs > 0 and i.memory > 0 for i in rows)
    assert sum(i.params for i in rows) == report.params_added == after.params - before.params
    assert sum(i.macs for i in rows) == report.macs_added == after.macs - before.macs
    assert sum(i.memory for i in rows) == report.memory_added == after.memory - before.memory
    assert (report.macs_before, report.memory_before) == (before.macs, before.memory)
    # SE MACs per block: 2 * C * (C // r) for the two 1x1 convs on the pooled vector (Hu et al. 2018).
    assert [i.macs for i in rows] == [2 * i.channels * (i.channels // 4) for i in rows]


def test_report_table_shows_every_row_and_the_totals():
    report = attach(TVResNet("bottleneck"), "se", reduction=4, input_size=(3, 32, 32))
    lines = report.table().splitlines()
    header = next(ln for ln in lines if ln.startswith("module"))
    assert header.split() == ["module", "after", "channels", "params", "MACs", "memory"]
    for ins in report.insertions:
        row = next(ln for ln in lines if ln.startswith(ins.name + " "))
        assert row.split()[:4] == [ins.name, ins.after, str(ins.channels), f"{ins.params:,}"]
    total = next(ln for ln in lines if ln.startswith("total"))
    assert total.split()[1] == f"{report.params_added:,}"
    pct = 100 * report.macs_added / report.macs_before
    assert f"+{pct:.3g}% MACs" in report.table()


def test_report_without_profiler_shows_dashes():
    report = attach(TVResNet("bottleneck"), "eca", profile=False)
    assert all(i.macs is None and i.memory is None for i in report.insertions)
    total = next(ln for ln in str(report).splitlines() if ln.startswith("total"))
    assert total.split()[-2:] == ["-", "-"]


# --- `excite attach` on a user's own network (MODULE:FACTORY or FILE.py:FACTORY) ---------------------------


def test_cli_attach_prints_the_table_for_a_torchvision_style_resnet(capsys, monkeypatch):
    import sys
    import types

    from excite.cli import main

    lookalikes = types.ModuleType("lookalikes")
    lookalikes.resnet50 = lambda: TVResNet("bottleneck")
    monkeypatch.setitem(sys.modules, "lookalikes", lookalikes)
    assert main(["attach", "lookalikes:resnet50", "eca", "--input-size", "32x32"]) == 0
    out = capsys.readouterr().out.strip()
    expected = attach(TVResNet("bottleneck"), "eca", input_size=(3, 32, 32))
    assert out == expected.table()  # the CLI prints exactly the library's report
    for after in NETS["tv_resnet50"][1]:
        assert f"{after.rsplit('.', 1)[0]}.attn  {after}" in out
    assert "MACs" in out and "memory" in out and "total" in out


def test_cli_attach_user_file_and_bad_specs(tmp_path, capsys):
    from excite.cli import main

    src = tmp_path / "mynet.py"
    src.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    assert main(["attach", f"{src}:build", "eca", "--where", "1", "--input-size", "8x8"]) == 0
    out = capsys.readouterr().out
    # a bare nn.Sequential holds the module on the matched layer (`1.attn`), so it runs once: 3 taps x 8 MACs
    row = next(ln for ln in out.splitlines() if ln.startswith("1.attn"))
    assert row.split()[:5] == ["1.attn", "1", "8", "3", "24"] and "1 modules" in out
    assert main(["attach", f"{src}:missing", "eca"]) == 2
    assert main(["attach", f"{src}:not_a_model", "eca"]) == 2
    assert main(["attach", "no_such_module_excite_test:build", "eca"]) == 2
    assert main(["attach", str(tmp_path / "absent.py") + ":build", "eca"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("excite: error:") for line in err)
