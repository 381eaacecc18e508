"""MobileNet v1, ShuffleNet v1, ResNet-200, ResNeXt-101 32x4d, pre-activation and plain ResNets, CIFAR
ResNet-164/1001 and ResNeXt-29: counts against the papers and timm, structure, every attention module,
profile, ONNX, optimize, features_only; the activation options; the SENet notes' key map."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import excite
from excite.attention import SqueezeExcite
from excite.models import resnet as R
from excite.models.mobilenetv1 import TABLE8
from excite.models.shufflenetv1 import TABLE2_MFLOPS, shuffle_channels, stage_channels
from excite.profiling import profile

TIMM = json.loads((Path(__file__).parents[1] / "reference" / "timm_more_models.json").read_text())


def meta_model(name, **kw):
    with torch.device("meta"):
        return excite.create_model(name, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def layout(model):
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def millions(x):
    """A count as the papers print it: millions with one decimal."""
    return round(x / 1e6, 1)


# --- counts against timm and the papers ------------------------------------------------------------

@pytest.mark.parametrize("name,timm", [("mobilenet_v1", "mobilenetv1_100"), ("resnet200", "resnet200"),
                                       ("resnext101_32x4d", "resnext101_32x4d")])
def test_timm_count_keys_and_shapes(name, timm):
    ref = TIMM[f"timm/{timm}"]
    model = meta_model(name)
    assert n_params(model) == ref["params"]
    assert layout(model) == [(k, list(v)) for k, v in ref["state_dict"]]  # order too
    assert {"resnet200": 64_673_832, "resnext101_32x4d": 44_177_704, "mobilenet_v1": 4_231_976}[name] == ref["params"]


@pytest.mark.parametrize("alpha,name", [(1.0, "mobilenet_v1"), (0.75, "mobilenet_v1_075"), (0.5, "mobilenet_v1_050"),
                                        (0.25, "mobilenet_v1_025")])
def test_mobilenet_v1_table8(alpha, name):
    params, macs = TABLE8[alpha]
    model = meta_model(name)
    p = profile(model, (3, 224, 224))
    assert millions(n_params(model)) == params / 1e6
    assert round(p.macs / 1e6) == macs / 1e6  # conv + fc mult-adds, as the paper counts
    assert meta_model("mobilenet_v1", width_mult=alpha).state_dict().keys() == model.state_dict().keys()


def test_mobilenet_v1_resolution_table7():
    # Table 7, 1.0 MobileNet at 192 / 160 / 128: 418M / 290M / 186M mult-adds (parameters unchanged).
    # The 160 row is 290.7M by the formula; the paper prints it truncated.
    model = meta_model("mobilenet_v1")
    for side, paper in ((192, 418), (160, 290), (128, 186)):
        assert abs(profile(model, (3, side, side)).macs / 1e6 - paper) < 1


def test_mobilenet_v1_blocks_follow_table1():
    model = meta_model("mobilenet_v1", attention="se")
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == 13
    strides = [b.conv_dw.stride[0] for b in blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # the last dw conv keeps the 7x7 map
    assert [b.conv_pw.out_channels for b in blocks] == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    # Attention on every block, between the depthwise and the pointwise conv (timm's SE slot).
    assert all(isinstance(b.attn, SqueezeExcite) and b.attn.fc1.in_channels == b.conv_dw.out_channels for b in blocks)


def test_shufflenet_v1_channels_of_the_released_code():
    # megvii-model/ShuffleNet-Series ShuffleNetV1/network.py: stage_out_channels for g = 3 and g = 8.
    released = {3: {0.5: (12, 120, 240, 480), 1.0: (24, 240, 480, 960), 1.5: (24, 360, 720, 1440),
                    2.0: (48, 480, 960, 1920)},
                8: {0.5: (16, 192, 384, 768), 1.0: (24, 384, 768, 1536), 1.5: (24, 576, 1152, 2304),
                    2.0: (48, 768, 1536, 3072)}}
    for g, rows in released.items():
        for scale, channels in rows.items():
            assert stage_channels(g, scale) == channels
    # Table 1 at 1.0x for the other groups.
    assert [stage_channels(g, 1.0)[1] for g in (1, 2, 4)] == [144, 200, 272]
    for g in (1, 2, 3, 4, 8):
        for scale in (0.5, 1.0, 1.5, 2.0):
            stem, *stages = stage_channels(g, scale)
            assert all((c // 4) % g == 0 for c in stages) and (stages[0] - stem) % g == 0


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
def test_shufflenet_v1_table2_complexity(g):
    # Table 2 (1.0x, 224x224): 143 / 140 / 137 / 133 / 137 MFLOPs, the convolutions' mult-adds (the
    # classifier's in x 1000 excluded: with it g = 8 is 138.4M).
    model = meta_model(f"shufflenet_v1_g{g}")
    fc = model.get_classifier()
    conv_macs = profile(model, (3, 224, 224)).macs - fc.in_features * fc.out_features
    assert round(conv_macs / 1e6) == TABLE2_MFLOPS[g]


@pytest.mark.parametrize("g,scale,params,mflops", [
    (3, 2.0, 5.4, 524), (8, 2.0, 6.5, 522), (3, 1.5, 3.4, 292), (8, 1.5, 4.3, 290),
    (3, 1.0, 1.9, 138), (8, 1.0, 2.4, 138), (3, 0.5, 0.7, 38), (8, 0.5, 1.0, 40)])
def test_shufflenet_v1_released_table(g, scale, params, mflops):
    # The released code's README (FLOPs there are mult-adds with the classifier); the 1.0x g = 3 row
    # prints 138M for 137.5M.
    model = meta_model(f"shufflenet_v1_g{g}", width_mult=scale)
    assert millions(n_params(model)) == params
    assert abs(profile(model, (3, 224, 224)).macs / 1e6 - mflops) <= 0.6


def test_shufflenet_v1_units():
    model = meta_model("shufflenet_v1_g3", attention="eca")
    units = list(model.features)
    assert len(units) == 16 and [u.stride for u in units] == [2, 1, 1, 1, 2] + [1] * 7 + [2, 1, 1, 1]
    assert units[0].branch_main_1[0].groups == 1 and all(u.branch_main_1[0].groups == 3 for u in units[1:])
    assert all(u.branch_main_2[0].groups == 3 for u in units)
    assert all(type(u.attn).__name__ == "ECA" for u in units)
    assert model.get_classifier().bias is None  # the released classifier has no bias


def test_channel_shuffle_by_hand():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # (n=3, g=2) transposed: output j*n + a is input a*g + j -> 0 2 4 1 3 5
    assert shuffle_channels(x, 2).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert shuffle_channels(shuffle_channels(x, 2), 3).flatten().tolist() == list(range(6))  # g and n swap back


def test_preact_and_plain_imagenet_counts():
    tv50, tv34 = 25_557_032, 21_797_672
    # Pre-activation ResNet-50 (timm resnetv2_50's layout, 25.55M): no stem BN, projections without BN,
    # each unit's first BN on its input instead of its output, one final BN on 2048 channels.
    proj_bn = 2 * (256 + 512 + 1024 + 2048)
    first_bns = 2 * ((256 - 64) + (512 - 256) + (1024 - 512) + (2048 - 1024))
    assert n_params(meta_model("resnet50", preact=True)) == tv50 - 128 - proj_bn - first_bns + 2 * 2048 == 25_549_352
    keys = meta_model("resnet50", preact=True).state_dict()
    assert "norm.weight" in keys and "bn1.weight" not in keys and "layer1.0.downsample.1.weight" not in keys
    # Plain-34: ResNet-34 without its three projection shortcuts (conv + BN).
    proj = sum(cin * cout + 2 * cout for cin, cout in ((64, 128), (128, 256), (256, 512)))
    assert n_params(meta_model("resnet34", shortcut="none")) == tv34 - proj
    assert not [n for n, _ in meta_model("resnet50", shortcut="none").named_modules() if "downsample" in n]


def test_preact_cifar_counts():
    # ResNet v2 Table 3: ResNet-164 1.7M, ResNet-1001 10.2M. The paper's 10.2M is the convolutions'
    # weights (10,175,920); with BN and the classifier it is 10,327,706 (10.3M).
    m164, m1001 = meta_model("resnet164"), meta_model("resnet1001")
    assert n_params(m164) == 1_703_258 and millions(n_params(m164)) == 1.7
    conv = sum(m.weight.numel() for m in m1001.modules() if isinstance(m, nn.Conv2d))
    assert conv == 10_175_920 and millions(conv) == 10.2 and n_params(m1001) == 10_327_706
    assert [len(m1001.layer1), len(m164.layer1)] == [111, 18]
    # Stride on the first 1x1 (the authors' code); projections are a bare 1x1 conv on the pre-activation.
    b = m164.layer2[0]
    assert b.conv1.stride == (2, 2) and b.conv2.stride == (1, 1) and len(b.downsample) == 1


def test_resnext29_counts_and_forms():
    # Table 7: 34.4M and 68.1M. 34,426,698 rounds to 34.4M; 68,155,210 to 68.2M, and the paper's 68.1M
    # is the count without the 10-way classifier (68,144,960), which gives 34.4M for 8x64d too.
    m8, m16 = meta_model("resnext29_8x64d"), meta_model("resnext29_16x64d")
    fc = 1024 * 10 + 10
    assert (n_params(m8), n_params(m16)) == (34_426_698, 68_155_210)
    assert (millions(n_params(m8) - fc), millions(n_params(m16) - fc)) == (34.4, 68.1)
    assert {n_params(meta_model("resnext29_8x64d", block_form=f)) for f in "abc"} == {34_426_698}
    assert m8.layer1[0].conv2.groups == 8 and m8.layer1[0].conv2.in_channels == 512  # 8 paths of 64


def test_resnext29_forms_compute_the_same_function():
    torch.manual_seed(0)
    kw = dict(width_mult=0.125, num_classes=10)
    c = excite.create_model("resnext29_8x64d", block_form="c", **kw).eval()
    x = torch.randn(2, 3, 16, 16)
    for form in "ab":
        other = excite.create_model("resnext29_8x64d", block_form=form, **kw).eval()
        other.load_state_dict(R.convert_resnext_form(c, "c", form))
        with torch.no_grad():
            assert torch.allclose(other(x), c(x), atol=1e-5)


# --- where the addition and the attention are ------------------------------------------------------

def test_plain_and_shortcut_only_cifar_units_by_hand():
    torch.manual_seed(0)
    for kind, expected in (("none", lambda r, x: torch.relu(r)),
                           ("scale_shortcut", lambda r, x: torch.relu(r + 0.5 * x)),
                           ("scale", lambda r, x: torch.relu(0.5 * r + 0.5 * x))):
        block = R.CifarBasicBlock(8, 8, shortcut=kind).eval()
        x = torch.randn(2, 8, 6, 6)
        with torch.no_grad():
            assert torch.allclose(block(x), expected(block.residual(x), x), atol=1e-6), kind
    with pytest.raises(excite.ExciteError, match="shortcut='skip' is not valid"):
        R.CifarBasicBlock(8, 8, shortcut="skip")
    with pytest.raises(excite.ExciteError, match="needs a shortcut"):
        meta_model("resnet20", shortcut="none", attention="se", attention_position="identity")
    with pytest.raises(excite.ExciteError, match="expected one of identity, none"):
        meta_model("resnet18", shortcut="scale")


def test_plain_imagenet_block_has_no_addition():
    torch.manual_seed(0)
    model = excite.create_model("resnet18", shortcut="none", num_classes=3).eval()
    b, x = model.layer2[0], torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(b(x), b.relu(b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))))


@pytest.mark.parametrize("name,kw,branch_end", [("resnet18", dict(preact=True), "conv2"),
                                                ("resnet50", dict(preact=True), "conv3"),
                                                ("resnet164", {}, "conv3")])
def test_preact_attention_sits_after_the_last_conv_before_the_addition(name, kw, branch_end):
    torch.manual_seed(0)
    model = excite.create_model(name, attention="se", num_classes=3, **kw).eval()
    block = model.layer1[1]
    seen = {}
    getattr(block, branch_end).register_forward_hook(lambda m, a, out: seen.update(branch=out))
    block.attn.register_forward_hook(lambda m, a, out: seen.update(attn_in=a[0], attn_out=out))
    x = torch.randn(1, block.norm1.num_features, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert seen["attn_in"] is seen["branch"]
    assert torch.allclose(y, x + seen["attn_out"])  # no activation after the addition (ResNet v2)


# --- every attention module, profile, ONNX, optimize, features_only on one of each ----------------

# One small member of each new block kind (2 shared cores): depthwise-separable, ShuffleNet unit,
# pre-activation bottleneck (ResNet-164's unit, in an 11-layer net), CIFAR ResNeXt bottleneck; and the
# new options of the ResNets (pre-activation basic block, plain units).
REPS = {
    "mobilenet_v1": ("mobilenet_v1_050", {}),
    "shufflenet_v1": ("shufflenet_v1_g3", dict(width_mult=0.5)),
    "preact_bottleneck": ("resnet164", {}),
    "resnext29": ("resnext29_8x64d", dict(width_mult=0.125)),
    "preact_basic": ("resnet18", dict(preact=True)),
    "plain": ("resnet20", dict(shortcut="none")),
}
FAMILIES = ["mobilenet_v1", "shufflenet_v1", "preact_bottleneck", "resnext29"]


def build(kind, **kw):
    """The representative of ``kind``; ResNet-164's units in a 3-unit network (the same block, 1/18 the depth)."""
    name, options = REPS[kind]
    if name == "resnet164":
        from excite.models.preresnet_cifar import PreActCifarResNet

        return PreActCifarResNet(11, **kw)
    return excite.create_model(name, **options, **kw)


@pytest.mark.parametrize("kind", list(REPS))
def test_every_attention_forward_backward(kind):
    # Every registered attention on each new family; the ResNet options with the three papers' modules.
    attentions = [None, *excite.list_attention()] if kind in FAMILIES else [None, "se", "eca", "cbam"]
    built = 0
    for attention in attentions:
        torch.manual_seed(0)
        try:
            model = build(kind, attention=attention, num_classes=3)
        except excite.ExciteError:
            continue  # e.g. se_gc's groups do not divide a block's channels: a clear error, nothing to run
        built += 1
        out = model(torch.randn(2, 3, 16, 16))  # every stage still at least 1x1
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        out.logsumexp(1).sum().backward()
        # num_params == num_params_with_grad: an attention module built but never called has no gradient.
        assert sum(p.numel() for p in model.parameters() if p.grad is not None) == n_params(model), attention
    assert built >= len(attentions) - 1


@pytest.mark.parametrize("kind", list(REPS))
def test_profile_counts_every_op(kind):
    with torch.device("meta"):
        model = build(kind, attention="se")
    p = profile(model, (3, 32, 32))
    assert p.unsupported == {} and p.macs > 0 and p.params == n_params(model)
    assert any(k.endswith("attn") and v["elementwise"] > 0 for k, v in p.modules.items())


@pytest.mark.parametrize("kind,attention", [("mobilenet_v1", "eca"), ("shufflenet_v1", "se"),
                                            ("preact_bottleneck", "cbam"), ("resnext29", "se")])
def test_onnx_export_matches_ort(tmp_path, kind, attention):
    from excite.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build(kind, attention=attention, num_classes=10).eval()
    assert export_onnx(model, str(tmp_path / "m.onnx"), input_size=(3, 32, 32)).max_rel_err < 1e-4


def _random_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("kind", list(REPS))
def test_optimize_keeps_outputs(kind):
    from excite.models.optimize import optimize_for_inference

    torch.manual_seed(0)
    model = _random_bn(build(kind, attention="se", num_classes=10))
    opt = optimize_for_inference(model, channels_last=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), opt(x)
    assert ((ref - got).abs().max() / ref.abs().max()).item() < 1e-4
    assert opt.excite_folded_bn > 0
    left = sum(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    if kind.startswith("preact"):  # each unit's first BN reads the unit's input, the final norm the last sum
        units = sum(len(getattr(model, f"layer{i}", ())) for i in (1, 2, 3, 4))
        # ... except on CIFAR, where the first unit's BN reads the stem conv alone and folds into it.
        assert left == units + 1 - (kind == "preact_bottleneck")
    else:
        assert left == 0


@pytest.mark.parametrize("kind,channels,reductions", [
    ("mobilenet_v1", [32, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("shufflenet_v1", [120, 240, 480], [8, 16, 32]),
    ("preact_basic", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("resnext29", [32, 64, 128], [1, 2, 4])])
def test_features_only(kind, channels, reductions):
    name, kw = REPS[kind]
    torch.manual_seed(0)
    model = excite.create_model(name, attention="eca", features_only=True, **kw).eval()
    side = 32 if model.default_input_size[1] == 32 else 64
    feats = model(torch.randn(1, 3, side, side))
    assert model.channels() == channels and model.reduction() == reductions
    assert [(f.shape[1], side // f.shape[2]) for f in feats] == list(zip(channels, reductions))


# --- activation options ----------------------------------------------------------------------------

def test_activation_options():
    acts = (nn.ReLU, nn.SiLU, nn.Hardswish, nn.ReLU6)
    kinds = lambda m: {type(x) for x in m.modules() if isinstance(x, acts)}  # noqa: E731
    b0 = meta_model("efficientnet_b0")
    assert kinds(b0) == {nn.SiLU} and n_params(b0) == 5_288_548
    relu = meta_model("efficientnet_b0", activation="relu")
    assert kinds(relu) == {nn.ReLU} and n_params(relu) == 5_288_548  # the SE's hidden layer too
    assert kinds(meta_model("mobilenet_v3_small", activation="relu")) == {nn.ReLU}
    assert nn.Hardswish not in kinds(meta_model("mobilenet_v3_small", activation="relu"))
    hs = meta_model("mobilenet_v3_large", activation="hard_swish")
    convs = [c for c in hs.features if not isinstance(c, SqueezeExcite)]
    assert {type(x) for c in convs for x in c.modules() if isinstance(x, acts) and not
            any(x is y for s in c.modules() if isinstance(s, SqueezeExcite) for y in s.modules())} == {nn.Hardswish}
    assert kinds(meta_model("mobilenet_v3_large")) == {nn.ReLU, nn.Hardswish}
    with pytest.raises(excite.ExciteError, match="activation='gelu' is not valid; expected one of swish, relu"):
        meta_model("efficientnet_b0", activation="gelu")
    with pytest.raises(excite.ExciteError, match="expected one of paper, relu, hard_swish"):
        meta_model("mobilenet_v3_small", activation="swish")


# --- the SENet notes' SE layout ----------------------------------------------------------------------

def _senet_notes_checkpoint(path):
    """An SE-ResNet-20 saved the way the SENet notes' code names it: ``se.fc.0`` / ``se.fc.2`` Linear layers."""
    torch.manual_seed(1)
    src = excite.create_model("resnet20", attention="se", attention_kwargs={"bias": False}).eval()
    for p in src.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    state = {}
    for k, v in src.state_dict().items():
        if ".attn.fc" in k:
            k = k.replace(".attn.fc1.", ".se.fc.0.").replace(".attn.fc2.", ".se.fc.2.")
            v = v.flatten(1)  # Linear weights are 2-D
        state[f"module.{k}"] = v
    torch.save({"state_dict": state}, path)
    return src


def test_senet_fc_keymap_loads_the_notes_layout(tmp_path):
    from excite.files.keymap import detect_source, load_checkpoint

    src = _senet_notes_checkpoint(tmp_path / "se.pth")
    model = excite.create_model("resnet20", attention="se", attention_kwargs={"bias": False}).eval()
    info = load_checkpoint(model, tmp_path / "se.pth")
    assert info["source"] == "senet-fc" and not info["missing"] and not info["unexpected"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    assert detect_source(["layer1.0.se.fc.0.weight", "layer1.0.se.fc.2.weight"]) == "senet-fc"
    assert detect_source(["layer1.0.se.fc1.weight"]) == "timm"


def test_convert_cli_senet_fc(tmp_path):
    src = _senet_notes_checkpoint(tmp_path / "se.pth")
    cmd = [sys.executable, "-m", "excite", "convert", str(tmp_path / "se.pth"), "out.safetensors",
           "--model", "resnet20", "--attention", "se", "--attention-kwargs", "bias=false"]
    ok = subprocess.run(cmd + ["--source", "senet-fc"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    model = excite.load_model(tmp_path / "out.safetensors").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src.eval()(x))
    bad = subprocess.run(cmd[:5] + ["bad.safetensors"] + cmd[6:] + ["--source", "senet"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "error" in bad.stderr and "senet-fc" in bad.stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_list_models_shows_the_new_families():
    out = subprocess.run([sys.executable, "-m", "excite", "list", "models"], capture_output=True, text=True)
    assert out.returncode == 0
    for name, params in (("mobilenet_v1", "4,231,976"), ("shufflenet_v1_g8", "2,433,768"),
                         ("resnet200", "64,673,832"), ("resnext101_32x4d", "44,177,704"),
                         ("resnet164", "1,703,258"), ("resnext29_8x64d", "34,426,698")):
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
        assert params in line


# --- the docs' table of every model -------------------------------------------------------------------

def test_docs_models_table_matches_the_registry():
    """docs/models.md lists every registered model with its count (rewrite it: python docs/gen_models.py)."""
    from excite.core.registry import index

    page = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    generated = page.split("<!-- models table: generated by docs/gen_models.py", 1)[-1]
    rows = [ln.split("|")[1:-1] for ln in generated.splitlines() if ln.startswith("| `")]
    table = {r[0].strip().strip("`"): [c.strip() for c in r[1:]] for r in rows}
    assert list(table) == excite.list_models(), "docs/models.md is out of date: run python docs/gen_models.py"
    catalog = index()["models"]
    assert {n: int(r[1].replace(",", "")) for n, r in table.items()} == {n: catalog[n]["params"] for n in table}
    for name in ("resnet18", "mobilenet_v1", "shufflenet_v1_g3", "resnext29_8x64d"):  # a sample of the MACs
        macs = profile(meta_model(name), excite.core.registry.model_entry(name).default_input_size).macs
        assert table[name][2] == f"{macs / 1e6:,.1f}M"
