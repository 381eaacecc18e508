"""ResNet / ResNeXt / Wide ResNet and the CIFAR ResNets, checked against references.

References: parameter counts and every state_dict key and shape recorded from torchvision, timm and the
official ECA-Net release (tests/reference/*.json); the CIFAR ResNet parameter counts of the ResNet paper
(He et al. 2016, section 4.2 / Table 6); trained akamaster CIFAR-10 checkpoints; and the exact
equivalence of the three ResNeXt block forms (Xie et al. 2017, Fig. 3).
"""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import excite
from excite.core.errors import ExciteError
from excite.models import resnet as R

REF = Path(__file__).parents[1] / "reference"
TV_TIMM = json.loads((REF / "state_dicts_torchvision_timm.json").read_text())
ECA_OFFICIAL = json.loads((REF / "state_dicts_eca_official.json").read_text())

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


# ------------------------------------------------------------------------------------------ helpers


def meta_model(name, **kwargs):
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return excite.create_model(name, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def renamed(ref_sd, *pairs, strip=""):
    """A reference key->shape dict with ``strip`` removed from the front and substrings replaced."""
    out = {}
    for key, shape in ref_sd.items():
        key = key[len(strip):] if strip and key.startswith(strip) else key
        for old, new in pairs:
            key = key.replace(old, new)
        out[key] = shape
    return out


def assert_same_layout(ours, ref):
    missing, extra = sorted(ref.keys() - ours.keys()), sorted(ours.keys() - ref.keys())
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = [k for k in ref if ours[k] != ref[k]]
    assert not wrong, f"shape mismatch: {[(k, ours[k], ref[k]) for k in wrong[:5]]}"


# ------------------------------------------------------------------- ImageNet models vs torchvision


@pytest.mark.parametrize("name", [n for n in IMAGENET if f"torchvision/{n}" in TV_TIMM])
def test_torchvision_layout(name):
    ref = TV_TIMM[f"torchvision/{name}"]
    model = meta_model(name)
    assert n_params(model) == ref["params"]
    assert_same_layout(shapes(model), ref["state_dict"])


def test_wide_resnet101_2_params():
    # Not in the manifest; torchvision's model table lists Wide_ResNet101_2 at 126,886,696 parameters.
    assert n_params(meta_model("wide_resnet101_2")) == 126_886_696


# ---------------------------------------------------------------------- with attention vs timm / ECA


def test_se_resnet50_matches_timm():
    ref = TV_TIMM["timm/seresnet50"]
    model = meta_model("resnet50", attention="se")
    assert n_params(model) == ref["params"] == 28_088_024
    assert_same_layout(shapes(model), renamed(ref["state_dict"], (".se.", ".attn.")))


def test_se_without_bias_matches_eca_paper_count():
    # ECA-Net Table 2 lists SENet-50 at 28.07M: its SE layers have no biases.
    assert n_params(meta_model("resnet50", attention="se", attention_kwargs={"bias": False})) == 28_071_976


def test_seresnext50_matches_timm():
    ref = TV_TIMM["timm/seresnext50_32x4d"]
    model = meta_model("resnext50_32x4d", attention="se")
    assert n_params(model) == ref["params"] == 27_559_896
    assert_same_layout(shapes(model), renamed(ref["state_dict"], (".se.", ".attn.")))


def test_eca_adaptive_matches_timm():
    ref = TV_TIMM["timm/resnet50_eca"]
    model = meta_model("resnet50", attention="eca")
    assert n_params(model) == ref["params"] == 25_557_118
    assert_same_layout(shapes(model), renamed(ref["state_dict"], (".se.", ".attn.")))


@pytest.mark.parametrize("name,k_size,official", [
    ("resnet50", [3, 5, 5, 7], "eca_resnet50_k3557"),
    ("resnet18", [3, 5, 7, 7], "eca_resnet18_k3577"),
    ("resnet101", [3, 3, 5, 7], "eca_resnet101_k3357"),
])
def test_eca_per_stage_kernels_match_official(name, k_size, official):
    ref = ECA_OFFICIAL[f"eca-official/{official}"]
    model = meta_model(name, attention="eca", attention_kwargs={"k_size": k_size})
    # One k-weight conv per block on top of the plain ResNet.
    layers = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}[name]
    added = sum(n * k for n, k in zip(layers, k_size))
    assert n_params(model) == ref["params"] == TV_TIMM[f"torchvision/{name}"]["params"] + added
    if name == "resnet50":
        assert added == 80
    assert_same_layout(shapes(model), renamed(ref["state_dict"], (".eca.", ".attn."), strip="module."))


def test_cbam_without_bias_matches_timm():
    ref = TV_TIMM["timm/resnet50_cbam"]
    model = meta_model("resnet50", attention="cbam", attention_kwargs={"bias": False})
    assert n_params(model) == ref["params"] == 28_073_576
    # timm wraps the spatial conv and BN in one ConvBnAct (``spatial.conv.conv`` / ``spatial.conv.bn``).
    pairs = ((".se.spatial.conv.conv.", ".attn.spatial.conv."), (".se.spatial.conv.bn.", ".attn.spatial.bn."),
             (".se.", ".attn."))
    assert_same_layout(shapes(model), renamed(ref["state_dict"], *pairs))


def test_no_attention_means_no_attn_keys():
    assert not any(".attn." in k for k in meta_model("resnet50", attention="none").state_dict())


def test_attention_sits_after_last_bn_before_addition():
    # SENet Fig. 3 / CBAM Fig. 3 / ECA-Net Fig. 2: the gate sees the residual branch's last BN output.
    seen = []

    class Spy(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.channels = channels

        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros_like(x)  # kills the branch: block output becomes relu(shortcut)

    torch.manual_seed(0)
    for name, last_bn in (("resnet18", "bn2"), ("resnet50", "bn3")):
        model = excite.create_model(name, attention=Spy).eval()
        block = model.layer1[1]  # an identity-shortcut block
        bn_out = []
        block.get_submodule(last_bn).register_forward_hook(lambda m, i, o: bn_out.append(o.clone()))
        seen.clear()
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        out = block(x)
        assert block.attn.channels == x.shape[1]
        torch.testing.assert_close(seen[0], bn_out[0])
        torch.testing.assert_close(out, torch.relu(x))


# -------------------------------------------------------------------------- variants and interface


def test_stride_placement_v1_and_v1_5():
    v15 = meta_model("resnet50").layer2[0]
    v1 = meta_model("resnet50", variant="v1").layer2[0]
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))  # torchvision: stride on the 3x3
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))  # ResNet paper: stride on the first 1x1
    assert shapes(meta_model("resnet50", variant="v1")) == shapes(meta_model("resnet50"))


@pytest.mark.parametrize("kwargs,needle", [({"variant": "v2"}, "v1.5"), ({"block_form": "d"}, "a, b, c")])
def test_invalid_options_name_valid_ones(kwargs, needle):
    with pytest.raises(ExciteError, match=needle):
        excite.create_model("resnext50_32x4d", **kwargs)


@pytest.mark.parametrize("attention", [None, "se", "eca", "cbam"], ids=str)
def test_resnet18_forward(attention):
    torch.manual_seed(0)
    model = excite.create_model("resnet18", attention=attention, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == 512
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_classifier_reset_and_in_chans():
    model = excite.create_model("resnet18", num_classes=4, in_chans=1)
    assert model.get_classifier().out_features == 4
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 512)
    model.reset_classifier(3)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_zero_init_residual_makes_blocks_identity(name):
    # Goyal et al. 2017: with the last BN scale at zero, an identity-shortcut block computes relu(x).
    model = excite.create_model(name, zero_init_residual=True, attention="se").eval()
    block = model.layer1[1]
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_torchvision_init_statistics():
    # kaiming_normal_(fan_out): std = sqrt(2 / (out_channels * k * k)).
    w = excite.create_model("resnet50").layer3[0].conv2.weight
    expected = (2 / (256 * 9)) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.05


# ------------------------------------------------------------------------ ResNeXt block forms (Fig. 3)


def _randomise_bn(model):
    # Non-trivial BN statistics and affine parameters, so that eval mode tests the split of all four.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)


@pytest.mark.parametrize("form", ["a", "b"])
def test_resnext_forms_compute_the_same_function(form):
    # A short, narrow ResNeXt (C=4, d=2; 1-2 blocks per stage) in float64 keeps this fast and tight.
    torch.manual_seed(0)
    kw = dict(num_classes=5, groups=4, width_per_group=2, attention="se")
    grouped = R.ResNet(R.Bottleneck, (1, 2, 1, 1), **kw).double()
    _randomise_bn(grouped)
    other = R.ResNet(R.Bottleneck, (1, 2, 1, 1), block_form=form, **kw).double()
    other.load_state_dict(R.convert_resnext_form(grouped, "c", form))  # strict: every key mapped
    # Form (a) really has C separate paths, each summed through its own last 1x1.
    block = other.layer1[0]
    assert len(block.paths) == 4 and (form != "a" or len(block.proj) == 4)
    assert n_params(other) == n_params(grouped)
    # And back (before training-mode passes move the BN statistics): the round trip is exact.
    back = R.convert_resnext_form(other.state_dict(), form, "c")
    ref = grouped.state_dict()
    assert back.keys() == ref.keys() and all(torch.equal(back[k], ref[k]) for k in ref)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)  # layer4 at 1x1: BN still has 2 values per channel
    for train in (False, True):
        grouped.train(train), other.train(train)
        torch.testing.assert_close(other(x), grouped(x), rtol=1e-9, atol=1e-9)


def test_resnext_form_a_to_b():
    kw = dict(num_classes=3, groups=2, width_per_group=2)
    a = excite.create_model("resnext50_32x4d", block_form="a", **kw).eval()
    b = excite.create_model("resnext50_32x4d", block_form="b", **kw).eval()
    b.load_state_dict(R.convert_resnext_form(a, "a", "b"))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- CIFAR ResNets

# ResNet paper section 4.2 / Table 6: depth 6n+2 and the parameter counts as printed there.
CIFAR_PAPER = [("resnet20", 3, 0.27), ("resnet32", 5, 0.46), ("resnet44", 7, 0.66), ("resnet56", 9, 0.85),
               ("resnet110", 18, 1.7), ("resnet1202", 200, 19.4)]


@pytest.mark.parametrize("name,n,millions", CIFAR_PAPER)
def test_cifar_resnet_matches_paper(name, n, millions):
    model = meta_model(name)
    assert model.fc.out_features == 10 and excite.core.registry.model_entry(name).default_input_size == (3, 32, 32)
    digits = 1 if millions >= 1 else 2
    assert round(n_params(model) / 1e6, digits) == millions
    # 6n+2 weighted layers: the stem, 2 convolutions in each of 3n blocks, the classifier.
    weighted = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert weighted == 6 * n + 2 == int(name[len("resnet"):])
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]


def test_cifar_option_a_shortcut():
    # Option A: no projection parameters; subsample by 2 and zero-pad the new channels.
    block = excite.create_model("resnet20").layer2[0].eval()
    assert not any("shortcut" in k or "downsample" in k for k in block.state_dict())
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    torch.testing.assert_close(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_cifar_keys_and_forward():
    model = excite.create_model("resnet20", attention="eca")
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.weight", "layer3.2.conv2.weight", "layer1.0.bn2.bias", "fc.weight"} <= keys
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_cifar_preact():
    # He et al. 2016b: BN-ReLU-conv units; one BN-ReLU after the last unit instead of after the stem.
    model = excite.create_model("resnet20", preact=True)
    plain = excite.create_model("resnet20")
    assert n_params(model) == n_params(plain)  # same BN count: the stem BN moves to the end
    assert "bn_final.weight" in model.state_dict() and "bn1.weight" not in model.state_dict()
    assert model.layer2[0].bn1.num_features == 16  # the first BN sees the block's input
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,file", [("resnet20", "resnet20-12fca82f.th"), ("resnet56", "resnet56-4bfd9763.th")])
def test_akamaster_checkpoint_loads(name, file):
    ckpt = torch.load(REF / "checkpoints" / file, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    sd = {k.removeprefix("module.").replace("linear.", "fc."): v for k, v in sd.items()}
    model = excite.create_model(name).eval()
    model.load_state_dict(sd, strict=True)
    # The 2018 checkpoint predates BN's num_batches_tracked buffer (loading tolerates its absence).
    assert sd.keys() == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
