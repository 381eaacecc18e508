"""The papers' own ablation axes: ResNet v2 shortcuts (Fig. 2 / Table 1) and activation orders (Fig. 4 /
Table 2), SENet's integration (Fig. 5 / Table 14), stages (Table 13), squeeze and excitation (Tables 11,
12), the SENet training notes (frozen BN, linear lr scaling) and EfficientNet's compound scaling.

Counts are checked against hand-derived formulas and the papers' figures; each variant's output is
checked against the formula its figure draws, computed here from the block's own layers.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import excite
from excite.core.errors import ExciteError
from excite.models import resnet as R

RESNET20 = 269_722  # ResNet paper Table 6: 0.27M (tests/test_resnet.py holds the exact reference)
# (C_in, C_out, stride) of ResNet-20's nine blocks: three stages of 16, 32, 64 channels.
BLOCKS20 = [(16, 16, 1)] * 3 + [(16, 32, 2)] + [(32, 32, 1)] * 2 + [(32, 64, 2)] + [(64, 64, 1)] * 2


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(name, **kw):
    with torch.device("meta"):
        return excite.create_model(name, **kw)


# ------------------------------------------------------------------------------------- counts


def test_resnet_v2_shortcut_counts():
    # Fig. 2: only the 1x1 conv shortcut (C_in C_out weights) and the gates (1x1 conv with bias:
    # C_in C_out + C_out) add parameters; scaling and dropout add none.
    conv = sum(ci * co for ci, co, _ in BLOCKS20)
    gate = sum(ci * co + co for ci, co, _ in BLOCKS20)
    assert (conv, gate) == (13_568, 13_904)
    expected = dict(identity=RESNET20, scale=RESNET20, dropout=RESNET20, conv=RESNET20 + conv,
                    exclusive_gate=RESNET20 + gate, shortcut_gate=RESNET20 + gate, scale_shortcut=RESNET20,
                    none=RESNET20)
    assert {k: n_params(meta("resnet20", shortcut=k)) for k in R.SHORTCUTS} == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet110"])
def test_resnet_v2_activation_orders_add_no_parameters(name):
    # Fig. 4: every unit has two BNs of the unit's width; only their places change.
    counts = {o: n_params(meta(name, act_order=o)) for o in R.ACT_ORDERS}
    assert len(set(counts.values())) == 1, counts
    assert counts["original"] == n_params(meta(name))


def se_params(c, r=16):
    return 2 * c * (c // r) + c // r + c  # two 1x1 convolutions with biases


RESNET50 = 25_557_032  # torchvision
LAYERS50 = [(3, 256), (4, 512), (6, 1024), (3, 2048)]  # (blocks, output channels) of layer1..layer4


def test_senet_table13_counts():
    # SE in one stage only: SENet Table 13 prints 25.6M / 25.7M / 26.4M (stage 2, 3, 4) and 28.1M (all).
    stage = [n * se_params(c) for n, c in LAYERS50]
    for k in (1, 2, 3):
        assert n_params(meta("resnet50", attention="se", attention_stages=[k])) == RESNET50 + stage[k - 1]
    assert n_params(meta("resnet50", attention="se")) == RESNET50 + sum(stage) == 28_088_024
    assert n_params(meta("resnet50", attention="se", attention_stages=[1, 2, 3, 4])) == 28_088_024
    m = meta("resnet50", attention="se", attention_stages=[2])
    assert [k for k, v in m.named_modules() if k.endswith("attn") and v is not None][0] == "layer2.0.attn"
    assert m.layer1[0].attn is None and m.layer3[0].attn is None


def test_senet_table10_counts():
    # Reduction ratio r: 45.7M at r = 2 and 28.1M at r = 16 as printed (the other rows: paper-table gaps).
    for r, printed in ((2, 45.7), (16, 28.1)):
        total = RESNET50 + sum(n * se_params(c, r) for n, c in LAYERS50)
        assert n_params(meta("resnet50", attention="se", attention_kwargs={"reduction": r})) == total
        assert round(total / 1e6, 1) == printed


def test_senet_integration_counts():
    # Standard, POST and Identity gate C_out channels; SE-PRE gates the unit's input, C_in channels.
    assert {p: n_params(meta("resnet50", attention="se", attention_position=p)) for p in ("post", "identity")} == \
        {"post": 28_088_024, "identity": 28_088_024}
    cin = [64, 256, 256, 256, 512, 512, 512, 512, 1024, 1024, 1024, 1024, 1024, 1024, 2048, 2048]
    assert n_params(meta("resnet50", attention="se", attention_position="pre")) == RESNET50 + sum(map(se_params, cin))


def test_senet_ablations_paper_table():
    from excite.profiling.papers import paper_table

    _, rows = paper_table("senet-ablations")
    status = {r.label: r.params_status[0] for r in rows}
    assert status["SE-ResNet-50, r = 2 (Table 10)"] == status["SE-ResNet-50, r = 16 (Table 10)"] == "rounds"
    assert status["SE_Stage_2 (Table 13)"] == status["SE_Stage_3 (Table 13)"] == status["SE_ALL (Table 13)"] == "rounds"
    assert all(bool(r.gap) == (r.params_status[0] == "gap") for r in rows)


# ------------------------------------------------------------------- what each figure draws


def block(cin=16, cout=16, stride=1, **kw):
    torch.manual_seed(0)
    b = R.CifarBasicBlock(cin, cout, stride, **kw)
    for m in b.modules():  # non-trivial BN statistics, so a misplaced BN shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return b.eval()


def bn(m, x):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def conv(m, x):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding)


def residual_original(b, x):  # Fig. 4a's branch: conv-BN-ReLU-conv-BN
    return bn(b.bn2, conv(b.conv2, F.relu(bn(b.bn1, conv(b.conv1, x)))))


X = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("order", R.ACT_ORDERS)
def test_activation_orders_compute_fig4(order):
    b = block(act_order=order)
    x, relu = X, F.relu
    c1, c2 = (lambda t: conv(b.conv1, t)), (lambda t: conv(b.conv2, t))
    b1, b2 = (lambda t: bn(b.bn1, t)), (lambda t: bn(b.bn2, t))
    expected = {
        "original": lambda: relu(b2(c2(relu(b1(c1(x))))) + x),
        "bn_after_add": lambda: relu(b2(c2(relu(b1(c1(x)))) + x)),
        "relu_before_add": lambda: relu(b2(c2(relu(b1(c1(x)))))) + x,
        "relu_preact": lambda: b2(c2(relu(b1(c1(relu(x)))))) + x,
        "full_preact": lambda: c2(relu(b2(c1(relu(b1(x)))))) + x,
    }[order]()
    torch.testing.assert_close(b(x), expected)


def test_preact_is_full_preactivation():
    assert excite.create_model("resnet20", preact=True).act_order == "full_preact"
    assert excite.create_model("resnet20", act_order="full_preact").preact
    with pytest.raises(ExciteError, match="preact=True"):
        excite.create_model("resnet20", preact=True, act_order="original")


def test_shortcut_variants_compute_fig2():
    x = X
    b = block(shortcut="scale")
    torch.testing.assert_close(b(x), F.relu(0.5 * residual_original(b, x) + 0.5 * x))  # both paths halved
    b = block(shortcut="exclusive_gate")
    g = torch.sigmoid(conv(b.gate, x))
    torch.testing.assert_close(b(x), F.relu(g * residual_original(b, x) + (1 - g) * x))
    assert torch.all(b.gate.bias == -6.0)  # the Table 1 row: b_g initialised to -6
    b = block(shortcut="shortcut_gate")
    g = torch.sigmoid(conv(b.gate, x))
    torch.testing.assert_close(b(x), F.relu(residual_original(b, x) + (1 - g) * x))
    assert torch.all(b.gate.bias == 0.0)
    b = block(shortcut="conv")
    torch.testing.assert_close(b(x), F.relu(residual_original(b, x) + conv(b.proj, x)))
    b = block(shortcut="dropout")
    torch.testing.assert_close(b(x), F.relu(residual_original(b, x) + x))  # eval: dropout is the identity
    b.train()
    with torch.no_grad():
        b.residual = lambda t: torch.zeros_like(t)  # isolate the shortcut: kept values doubled, others 0
        out = b(x.abs() + 1)
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * (x.abs() + 1)[kept])
    assert 0.3 < kept.float().mean() < 0.7


def test_gated_shortcut_with_downsampling():
    # A stride-2 unit: the gate is a strided 1x1 conv from the input, gating the option-A shortcut.
    b = block(16, 32, 2, shortcut="exclusive_gate")
    g = torch.sigmoid(conv(b.gate, X))
    s = F.pad(X[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    torch.testing.assert_close(b(X), F.relu(g * residual_original(b, X) + (1 - g) * s))


class Times(nn.Module):
    """A stand-in attention that doubles its input, so its place in the block shows in the output."""

    def __init__(self, channels=0):
        super().__init__()

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("position", R.ATTENTION_POSITIONS)
def test_attention_positions_compute_senet_fig5(position):
    b = block(attn=Times(), attn_position=position)
    x, res = X, (lambda t: residual_original(b, t))
    expected = {
        "standard": lambda: F.relu(2 * res(x) + x),
        "pre": lambda: F.relu(res(2 * x) + x),  # SE-PRE: the branch sees attn(x), the identity x
        "post": lambda: 2 * F.relu(res(x) + x),  # SE-POST: after the addition and its ReLU
        "identity": lambda: F.relu(res(x) + 2 * x),  # SE-Identity gates the identity path
    }[position]()
    torch.testing.assert_close(b(x), expected)


@pytest.mark.parametrize("position", R.ATTENTION_POSITIONS)
def test_attention_positions_on_a_bottleneck(position):
    torch.manual_seed(0)
    b = R.Bottleneck(256, 64, attn=Times(), attn_position=position).eval()
    x = torch.randn(1, 256, 4, 4)

    def res(t):
        t = F.relu(b.bn1(b.conv1(t)))
        return b.bn3(b.conv3(F.relu(b.bn2(b.conv2(t)))))

    with torch.no_grad():
        expected = {"standard": lambda: F.relu(2 * res(x) + x), "pre": lambda: F.relu(res(2 * x) + x),
                    "post": lambda: 2 * F.relu(res(x) + x), "identity": lambda: F.relu(res(x) + 2 * x)}[position]()
        torch.testing.assert_close(b(x), expected)


@pytest.mark.parametrize("kw", [dict(shortcut=s) for s in R.SHORTCUTS] + [dict(act_order=o) for o in R.ACT_ORDERS]
                         + [dict(attention_position=p) for p in R.ATTENTION_POSITIONS])
def test_every_variant_trains(kw):
    # Forward and backward through the whole network; every parameter gets a gradient (none is dead).
    torch.manual_seed(0)
    model = excite.create_model("resnet20", attention="se", num_classes=4, **kw)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_imagenet_positions_and_stages_train():
    torch.manual_seed(0)
    model = excite.create_model("resnet18", attention="se", attention_position="pre", attention_stages=[2, 4],
                                num_classes=3)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.layer1[0].attn is None and model.layer2[0].attn.fc1.in_channels == 64  # SE-PRE: C_in


def test_bad_options_are_one_clear_error():
    for kw, msg in ((dict(shortcut="gate"), "shortcut='gate'"), (dict(act_order="post"), "act_order='post'"),
                    (dict(attention_position="after"), "attention_position='after'"),
                    (dict(attention_stages=[4]), "stage numbers 1..3")):
        with pytest.raises(ExciteError, match=msg):
            excite.create_model("resnet20", attention="se", **kw)
    with pytest.raises(ExciteError, match="stage numbers 1..4"):
        excite.create_model("resnet50", attention="se", attention_stages=[0])


# ------------------------------------------------------------------ SE squeeze and excitation


@pytest.mark.parametrize("squeeze,gate", [("avg", "sigmoid"), ("max", "sigmoid"), ("avg", "tanh"), ("avg", "relu")])
def test_se_squeeze_and_excitation_operators(squeeze, gate):
    from excite.attention import SqueezeExcite

    torch.manual_seed(0)
    se = SqueezeExcite(32, 4, squeeze=squeeze, gate=gate)
    x = torch.randn(2, 32, 5, 5)
    y = x.mean((2, 3)) if squeeze == "avg" else x.flatten(2).max(2).values  # SENet Table 11
    h = F.relu(y @ se.fc1.weight.flatten(1).T + se.fc1.bias)
    z = h @ se.fc2.weight.flatten(1).T + se.fc2.bias
    w = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu}[gate](z)  # Table 12
    torch.testing.assert_close(se(x), x * w[:, :, None, None])
    assert n_params(se) == n_params(SqueezeExcite(32, 4))  # operators without parameters
    with pytest.raises(ExciteError, match="squeeze='median'"):
        SqueezeExcite(32, squeeze="median")


# ------------------------------------------------------------------------------ training notes


def test_linear_lr_scaling():
    from excite.training.engine import lr_at, make_config, scaled_lr

    assert scaled_lr(0.1, 256) == 0.1 and scaled_lr(0.1, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.6, 1024, base_batch=1024) == 0.6
    cfg = make_config(dict(lr=0.1, batch_size=512, scale_lr=True, warmup_epochs=0, schedule="constant"))
    assert lr_at(cfg, 0, 10) == pytest.approx(0.2)
    cfg = make_config(dict(lr=0.1, batch_size=512, warmup_epochs=0, schedule="constant"))
    assert lr_at(cfg, 0, 10) == pytest.approx(0.1)  # off by default
    js = make_config(dict(scale_lr=True, freeze_bn_last=2)).to_json()
    assert js["scale_lr"] is True and js["freeze_bn_last"] == 2  # recorded in the run's config


def test_freeze_bn_keeps_statistics_and_affine_parameters():
    from excite.training.engine import freeze_bn, train

    model = excite.create_model("resnet20", num_classes=4)
    model.train()
    params = freeze_bn(model)
    assert len(params) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    mean = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 8, 8) + 3)
    torch.testing.assert_close(model.bn1.running_mean, mean)

    # Training with every epoch frozen: BN statistics and affine parameters stay at their initial
    # values, while the convolutions learn.
    res = train(dict(model="resnet20", dataset="digits", subset=64, batch_size=32, epochs=2, freeze_bn_last=2,
                     threads=1, progress=False, warmup_epochs=0, lr=0.01))
    m = res["model"]
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert all(torch.equal(b.running_mean, torch.zeros_like(b.running_mean)) for b in bns)
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) and torch.equal(b.bias, torch.zeros_like(b.bias))
               for b in bns)
    res = train(dict(model="resnet20", dataset="digits", subset=64, batch_size=32, epochs=2, freeze_bn_last=1,
                     threads=1, progress=False, warmup_epochs=0, lr=0.01))
    assert any(not torch.equal(b.weight, torch.ones_like(b.weight)) for b in res["model"].modules()
               if isinstance(b, nn.BatchNorm2d))  # the first epoch trained them
    with pytest.raises(ExciteError, match="freeze_bn_last"):
        train(dict(model="resnet20", dataset="digits", subset=64, epochs=1, freeze_bn_last=3, progress=False))


# ---------------------------------------------------------------------------- compound scaling


def test_compound_scaling_efficientnet_matches_the_released_models():
    from excite.profiling.scaling import ALPHA, BETA, GAMMA, check_constraint, compound_scale

    assert check_constraint() == pytest.approx(1.2 * 1.1 ** 2 * 1.15 ** 2) and 1.9 < check_constraint() < 2.0
    s0 = compound_scale("efficientnet_b0", 0, build=False)
    assert (s0.params, s0.pixels, s0.cost) == (5_288_548, 224, 1.0)  # torchvision EfficientNet-B0
    # phi = 1, 2: w = 1.1, 1.21 and d = 1.2, 1.44 give the channels and repeats of B2 and B3 (the released
    # models' w/d are 1.1/1.2 and 1.2/1.4): torchvision's parameter counts.
    s1, s2 = compound_scale("efficientnet_b0", 1, build=False), compound_scale("efficientnet_b0", 2, build=False)
    assert (s1.params, s2.params) == (9_109_994, 12_233_232)
    assert (s1.depth, s1.width, s1.resolution) == (ALPHA, BETA, GAMMA) and s1.pixels == round(224 * 1.15)
    assert s1.target == pytest.approx(check_constraint()) and s1.two_to_phi == 2.0
    assert s1.cost > 2  # ceil() on the short stages makes the real depth grow faster than 1.2x


def test_compound_scaling_cifar_resnet():
    from excite.profiling.scaling import compound_scale

    s = compound_scale("resnet20", 1, num_classes=10)
    # n = ceil(3 x 1.2) = 4 blocks per stage; channels round(16, 32, 64 x 1.1) = 18, 35, 70; side 37.
    assert (s.blocks, s.channels, s.pixels, s.input_size) == (12, 70, 37, 32)
    assert s.model.n == 4 and s.model.layer1[0].conv1.out_channels == 18
    assert s.model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    d = compound_scale("resnet20", depth=2, build=False)
    assert (d.blocks, d.channels, d.pixels, d.phi) == (18, 64, 32, None)
    with torch.device("meta"):
        assert d.params == n_params(R.CifarResNet(6))  # depth x2 of ResNet-20 is the 6n+2 net with n = 6
    w = compound_scale("resnet20", width=2, build=False)
    assert w.channels == 128 and 3.5 < w.cost < 4.0  # the stem's 3 input channels and the fc do not double
    r = compound_scale("resnet20", resolution=2, build=False)
    assert r.params == RESNET20 and r.pixels == 64 and r.cost == pytest.approx(4.0, rel=0.02)
    with pytest.raises(ExciteError, match="EfficientNet or CIFAR ResNet"):
        compound_scale("resnet50", 1)


def test_cli_scale_prints_both_tables(capsys):
    import argparse

    from excite.cli import scale as cli_scale

    ap = argparse.ArgumentParser()
    cli_scale.register(ap.add_subparsers())
    args = ap.parse_args(["scale", "--phi", "0,1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "efficientnet_b0:" in out and "resnet20:" in out and "2^phi" in out and "9,109,994" in out
    with pytest.raises(ExciteError, match="--phi"):
        args.func(ap.parse_args(["scale", "--phi", "one"]))


# --------------------------------------------------------------------------------------- studies

NEW_STUDIES = ["resnet-v2-shortcuts", "resnet-v2-activations", "se-integration", "se-stages",
               "se-squeeze-excitation", "compound-scaling"]


def test_new_studies_carry_the_papers_columns():
    from excite.study import load_study

    pub = {n: {v.label: v.published for v in load_study(n).variants} for n in NEW_STUDIES}
    # ResNet v2 Tables 1 and 2 (ResNet-110 error) and SENet Tables 11-14 (error), as 100 - error.
    assert pub["resnet-v2-shortcuts"]["constant scaling 0.5"] == pytest.approx(100 - 12.35)
    assert pub["resnet-v2-shortcuts"]["dropout shortcut"] is None  # "fails"
    assert [pub["resnet-v2-activations"][k] for k in pub["resnet-v2-activations"]] == pytest.approx(
        [100 - e for e in (6.61, 8.17, 7.84, 6.71, 6.37)])
    assert pub["se-integration"] == pytest.approx({"SE": 100 - 22.28, "SE-PRE": 100 - 22.23, "SE-POST": 100 - 22.78,
                                                   "SE-Identity": 100 - 22.20})
    assert [pub["se-stages"][f"SE stage {k}"] for k in (1, 2, 3)] == pytest.approx([100 - 23.03, 100 - 23.04, 100 - 22.68])
    assert pub["se-squeeze-excitation"]["avg + ReLU"] == pytest.approx(100 - 23.47)
    for n in NEW_STUDIES:
        s = load_study(n)
        assert s.source and s.title


@pytest.mark.parametrize("name", NEW_STUDIES)
def test_new_studies_run(name, tmp_path, capsys):
    # The smoke run: one seed, a recipe given on the command line, the fast toy trainer.
    from excite.cli import main

    out = tmp_path / name
    assert main(["study", "run", name, "--seeds", "0", "--recipe", "digits-short", "--out", str(out),
                 "--trainer", "excite.study.runner:toy_trainer"]) == 0
    from excite.study import load_study
    from excite.study.db import load_results

    assert len(load_results(out)) == len(load_study(name).variants)


def test_scale_cli_defaults_match_the_library():
    from excite.cli import scale as scale_cli
    from excite.profiling.scaling import ALPHA, BETA, GAMMA

    import argparse
    p = argparse.ArgumentParser()
    scale_cli.register(p.add_subparsers())
    args = p.parse_args(["scale"])
    assert (args.alpha, args.beta, args.gamma) == (ALPHA, BETA, GAMMA)
