"""MobileNetV2 and EfficientNet against torchvision's manifests, the official ECA-MobileNetV2 layout and the
papers' scaling rules."""

import json
from pathlib import Path

import pytest
import torch

import excite
from excite.models.efficientnet import VARIANTS, StochasticDepth
from excite.models.mobilenetv2 import eca_official_k_size, make_divisible

REF = Path(__file__).parents[1] / "reference"
TV = json.loads((REF / "state_dicts_torchvision_timm.json").read_text())
ECA_OFFICIAL = json.loads((REF / "state_dicts_eca_official.json").read_text())


def layout(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def manifest(entry, strip=""):
    sd = entry["state_dict"]
    return {k.removeprefix(strip): list(v) for k, v in (sd if isinstance(sd, list) else sd.items())}


def meta_model(name, **kw):
    with torch.device("meta"):
        return excite.create_model(name, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2"] + [f"efficientnet_{v}" for v in VARIANTS])
def test_torchvision_count_keys_and_shapes(name):
    model = meta_model(name)
    assert n_params(model) == TV[f"torchvision/{name}"]["params"]
    assert layout(model) == manifest(TV[f"torchvision/{name}"])


def test_official_eca_mobilenet_v2_layout():
    ref = ECA_OFFICIAL["eca-official/eca_mobilenet_v2"]
    model = meta_model("mobilenet_v2", attention="eca", attention_kwargs={"k_size": eca_official_k_size})
    assert n_params(model) == ref["params"] == 3_504_872 + 31
    assert layout(model) == manifest(ref, "module.")


def mobilenet_v2_params_by_hand(width_mult, num_classes=1000):
    """Parameter count written out from the MobileNetV2 paper's Table 2 and torchvision's rounding rules
    (every layer channel ``make_divisible(c * w)``, the 1280 head never narrowed below 1280)."""
    rows = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    div = lambda v: max(8, int(v + 4) // 8 * 8) + (8 if max(8, int(v + 4) // 8 * 8) < 0.9 * v else 0)  # noqa: E731
    cin = div(32 * width_mult)
    total = 3 * 9 * cin + 2 * cin  # stem conv + BN
    for t, c, n, _ in rows:
        cout = div(c * width_mult)
        for _ in range(n):
            hidden = round(cin * t)
            total += (cin * hidden + 2 * hidden) if t != 1 else 0  # expansion 1x1 + BN
            total += 9 * hidden + 2 * hidden + hidden * cout + 2 * cout  # depthwise 3x3 + BN, projection + BN
            cin = cout
    last = div(1280 * max(1.0, width_mult))
    return total + cin * last + 2 * last + last * num_classes + num_classes


def test_width_multiplier_follows_torchvision():
    # The hand count reproduces torchvision's 3,504,872 at 1.0x, so its 0.5x value is torchvision's too.
    assert mobilenet_v2_params_by_hand(1.0) == TV["torchvision/mobilenet_v2"]["params"]
    assert mobilenet_v2_params_by_hand(0.5) == 1_968_680
    for w in (0.5, 0.75, 1.4):
        assert n_params(meta_model("mobilenet_v2", width_mult=w)) == mobilenet_v2_params_by_hand(w)
    assert meta_model("mobilenet_v2", width_mult=0.5).features[0][0].out_channels == 16
    with pytest.raises(excite.ExciteError, match="width_mult=0"):
        meta_model("mobilenet_v2", width_mult=0)


def test_channel_rounding_rule():
    # max(8, int(c + 4) // 8 * 8), plus 8 if that lost more than 10% (EfficientNet/MobileNet reference code).
    assert [make_divisible(c) for c in (32 * 1.1, 16 * 1.1, 40 * 1.4, 12, 4)] == [32, 16, 56, 16, 8]


@pytest.mark.parametrize("variant", ["b0", "b3", "b7"])
def test_se_squeezes_to_a_quarter_of_the_block_input(variant):
    model = meta_model(f"efficientnet_{variant}")
    for stage in model.features[1:-1]:
        for block in stage:
            se = block.block[-2]
            cin = block.block[0][0].in_channels
            assert se.fc1.out_channels == max(1, cin // 4)
            assert isinstance(se.act, torch.nn.SiLU)


def test_attention_replaces_the_se_and_none_keeps_indices():
    plain = meta_model("efficientnet_b0", attention="none")
    default = meta_model("efficientnet_b0")
    assert n_params(plain) < n_params(default)
    proj = {k for k in layout(default) if ".fc1." not in k and ".fc2." not in k}
    assert proj == set(layout(plain))  # only the SE keys are gone; the projection keeps its index
    eca = meta_model("efficientnet_b0", attention="eca")
    assert n_params(eca) - n_params(plain) == sum(b.block[-2].k_size for s in eca.features[1:-1] for b in s)


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    sd = StochasticDepth(0.5)
    x = torch.ones(1000, 1, 1, 1)
    assert torch.equal(sd.eval()(x), x)
    y = sd.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    drop = meta_model("efficientnet_b0")
    probs = [b.stochastic_depth.p for s in drop.features[1:-1] for b in s]
    assert probs[0] == 0 and probs == sorted(probs) and max(probs) < 0.2


def test_dropout_and_resolution_per_variant():
    for v, (_, _, res, p) in VARIANTS.items():
        assert excite.core.registry.model_entry(f"efficientnet_{v}").default_input_size == (3, res, res)
        assert meta_model(f"efficientnet_{v}").classifier[0].p == p


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
@pytest.mark.parametrize("attention", [None, "none", "se", "eca", "cbam"])
def test_small_forward(name, attention):
    torch.manual_seed(0)
    model = excite.create_model(name, attention=attention, num_classes=10)
    with torch.no_grad():  # the backward pass is checked once per model below (CPU time is scarce)
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_every_parameter_trains(name):
    torch.manual_seed(0)
    model = excite.create_model(name, attention="cbam", num_classes=10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    # An attention module that is built but never called would leave its parameters without a gradient.
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_head_helpers(name):
    model = excite.create_model(name, num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features == model.get_classifier().in_features
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert torch.allclose(model.forward_head(feats), model(x))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_stochastic_depth_in_the_model_only_when_training():
    torch.manual_seed(0)
    model = excite.create_model("efficientnet_b0", num_classes=10, stochastic_depth_prob=1.0)
    dropped = []

    def hook(module, inputs, output):
        dropped.append(not torch.equal(inputs[0], output))

    for m in model.modules():
        if isinstance(m, StochasticDepth):
            m.register_forward_hook(hook)
    x = torch.randn(2, 3, 32, 32)
    model.eval()(x)
    assert dropped and not any(dropped)  # eval: the identity everywhere
    dropped.clear()
    model.train()(x)
    assert any(dropped)  # train: residual branches are dropped or rescaled


def test_se_options_reach_every_mbconv():
    # A per-stage list (7 stages) and a plain option both reach the paper's SE; a typo is one clear error.
    model = meta_model("efficientnet_b0", attention_kwargs={"bias": [False] * 6 + [True]})
    biases = [b.block[-2].fc1.bias is not None for s in model.features[1:-1] for b in s]
    assert biases == [False] * 15 + [True]
    with pytest.raises(excite.ExciteError, match="attention 'se'"):
        meta_model("efficientnet_b0", attention_kwargs={"redution": 4})
