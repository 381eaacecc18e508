"""MobileNetV3, DenseNet and ShuffleNetV2 against torchvision's manifests and their papers' tables; every
attention module in each family, used and trained; export and explain on the new block kinds."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import excite
from conftest import ONE_PER_FAMILY
from excite.attention import SqueezeExcite
from excite.models.densenet import CONFIGS
from excite.models.mobilenetv2 import make_divisible
from excite.models.mobilenetv3 import LARGE, SMALL
from excite.models.shufflenetv2 import STAGE_REPEATS, channel_shuffle

REF = json.loads((Path(__file__).parents[1] / "reference" / "state_dicts_more_families.json").read_text())
TORCHVISION = [n.removeprefix("torchvision/") for n in REF if n.startswith("torchvision/")]
# One model per family for the runs that execute (2 shared CPU cores); the others share their blocks.
SMALLEST = [n for f, n in ONE_PER_FAMILY.items() if f in ("mobilenetv3", "densenet", "shufflenetv2")]


def meta_model(name, **kw):
    with torch.device("meta"):
        return excite.create_model(name, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def layout(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def se_params_in_manifest(name):
    sd = REF[f"torchvision/{name}"]["state_dict"]
    return sum(math.prod(v) for k, v in sd.items() if ".fc1." in k or ".fc2." in k)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_count_keys_and_shapes(name):
    ref = REF[f"torchvision/{name}"]
    model = meta_model(name)
    assert n_params(model) == ref["params"]
    assert list(layout(model).items()) == [(k, list(v)) for k, v in ref["state_dict"].items()]  # order too


def test_published_counts():
    # The counts the issue names, as numbers (the manifests above are torchvision's state_dicts).
    want = {"mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856, "densenet121": 7_978_856,
            "densenet161": 28_681_000, "densenet169": 14_149_480, "densenet201": 20_013_928,
            "shufflenet_v2_x0_5": 1_366_792, "shufflenet_v2_x1_0": 2_278_604, "shufflenet_v2_x1_5": 3_503_624,
            "shufflenet_v2_x2_0": 7_393_996}
    assert {n: n_params(meta_model(n)) for n in want} == want
    assert REF["timm/mobilenetv3_large_100"]["params"] == want["mobilenet_v3_large"]  # timm's layout, same network


# --- MobileNetV3 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,table", [("mobilenet_v3_large", LARGE), ("mobilenet_v3_small", SMALL)])
def test_mobilenet_v3_se_where_the_paper_marks_it(name, table):
    model = meta_model(name)
    blocks = list(model.features)[1:-1]
    assert len(blocks) == len(table)
    for block, (k, exp, out, se, nl, s) in zip(blocks, table):
        ses = [m for m in block.modules() if isinstance(m, SqueezeExcite)]
        assert len(ses) == int(se)
        dw = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1][0]
        assert (dw.kernel_size, dw.stride, dw.out_channels) == ((k, k), (s, s), exp)
        convs = [c for c in block.block if not isinstance(c, SqueezeExcite)]  # the SE has its own ReLU
        acts = {type(m) for c in convs for m in c if isinstance(m, (nn.ReLU, nn.Hardswish))}
        assert acts == {nn.ReLU if nl == "RE" else nn.Hardswish}
        if se:  # on the expanded channels, squeeze to make_divisible(C / 4, 8), hard-sigmoid gate
            assert ses[0].fc1.in_channels == exp and ses[0].fc1.out_channels == make_divisible(exp / 4, 8)
            assert ses[0].gate is torch.nn.functional.hardsigmoid
    assert model.default_input_size == (3, 224, 224)
    assert excite.core.registry.model_entry(name).default_attention == "se"


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_mobilenet_v3_attention_replaces_or_removes_the_se(name):
    tv = REF[f"torchvision/{name}"]["params"]
    plain = meta_model(name, attention="none")
    assert n_params(plain) == tv - se_params_in_manifest(name)
    assert not any(isinstance(m, SqueezeExcite) for m in plain.modules())
    assert n_params(meta_model(name, attention="se")) == tv  # "se" by name is the paper's SE
    eca = meta_model(name, attention="eca")  # ECA-MobileNetV3: ECA where the paper has SE
    k = [m.k_size for m in eca.modules() if type(m).__name__ == "ECA"]
    n_se = sum(row[3] for row in (LARGE if "large" in name else SMALL))
    assert len(k) == n_se and n_params(eca) == n_params(plain) + sum(k)
    # An SE with an explicit reduction is the generic module, not the paper's one.
    r8 = meta_model(name, attention="se", attention_kwargs={"reduction": 8})
    assert all(m.fc1.out_channels == m.fc1.in_channels // 8 for m in r8.modules() if isinstance(m, SqueezeExcite))


def test_se_gates():
    torch.manual_seed(0)
    se = SqueezeExcite(4, rd_channels=2, gate="clamp")
    for p in se.parameters():
        p.data.copy_(torch.randn_like(p) * 3)
    x = torch.randn(2, 4, 3, 3)
    y = se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True))))
    assert torch.equal(se(x), x * torch.clamp(y, 0, 1))
    assert ((y < 0) | (y > 1)).any()  # the clamp is exercised at both ends
    se.gate = SqueezeExcite(4, rd_channels=2, gate="hard_sigmoid").gate
    assert torch.allclose(se(x), x * (torch.clamp(y + 3, 0, 6) / 6))
    model = meta_model("mobilenet_v3_small", attention_kwargs={"gate": "clamp"})
    gates = {m.gate.__name__ for m in model.modules() if isinstance(m, SqueezeExcite)}
    assert gates == {"_clamp"}
    with pytest.raises(excite.ExciteError, match="clamp"):
        SqueezeExcite(32, gate="softmax")


def test_mobilenet_v3_head():
    model = excite.create_model("mobilenet_v3_small", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[1] == 576 and model.num_features == 1024  # 6 x 96, then the 1x1 "NBN" layer (Table 2)
    assert model.forward_head(feats, pre_logits=True).shape == (1, 1024)
    assert torch.allclose(model.forward_head(feats), model(x))


# --- DenseNet ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_densenet_attention_per_layer_on_the_new_maps(name):
    k, blocks, _ = CONFIGS[name]
    model = meta_model(name, attention="se")
    attn = {n: m for n, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    assert len(attn) == sum(blocks)
    assert all(n.endswith(".attn") and ".denselayer" in n and m.fc1.in_channels == k for n, m in attn.items())
    se = 2 * k * (k // 16) + k // 16 + k  # SENet r=16 with biases on k channels
    assert n_params(model) == REF[f"torchvision/{name}"]["params"] + sum(blocks) * se


def test_densenet_attention_in_transitions():
    model = meta_model("densenet121", attention="se", attention_at="transition")
    attn = {n: m for n, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    assert sorted(attn) == [f"features.transition{i}.attn" for i in (1, 2, 3)]
    assert [m.fc1.in_channels for m in attn.values()] == [128, 256, 512]  # after compression 0.5, before pooling
    t = model.features.transition1
    assert list(dict(t.named_children())) == ["norm", "relu", "conv", "attn", "pool"]
    with pytest.raises(excite.ExciteError, match="attention_at='block'.*layer, transition"):
        meta_model("densenet121", attention_at="block")


def test_profile_reports_where_the_attention_is():
    from excite.profiling import profile

    p = profile(meta_model("densenet121", attention="se"), (3, 64, 64))
    assert p.modules["features.denseblock1.denselayer1.attn"]["elementwise"] > 0
    p = profile(meta_model("shufflenet_v2_x0_5", attention="eca"), (3, 64, 64))
    assert p.modules["stage2.0.branch2.8"]["elementwise"] > 0


# --- ShuffleNetV2 -----------------------------------------------------------------------------------

def test_channel_shuffle_by_hand():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # two groups [0 1 2 | 3 4 5] interleaved: 0 3 1 4 2 5 (ShuffleNet Fig. 1c)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(channel_shuffle(x, 2), 3).flatten().tolist() == list(range(6))  # inverse


@pytest.mark.parametrize("name", [n for n in TORCHVISION if n.startswith("shufflenet")])
def test_shufflenet_attention_on_the_branch_before_the_concat(name):
    model = meta_model(name, attention="se")
    attn = {n: m for n, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    assert len(attn) == sum(STAGE_REPEATS) == 16  # one per unit
    assert all(n.endswith(".branch2.8") for n in attn)
    added = 0
    for n, m in attn.items():
        unit = model.get_submodule(n.rsplit(".", 2)[0])
        c = unit.branch2[5].out_channels  # half the unit's output channels
        assert m.fc1.in_channels == c
        added += 2 * c * (c // 16) + c // 16 + c  # SENet r=16 with biases
    assert n_params(model) == REF[f"torchvision/{name}"]["params"] + added


# --- every attention module, used and trained; export; explain -------------------------------------

@pytest.mark.parametrize("name", SMALLEST)
def test_every_attention_forward_backward(name):
    built = 0
    for attention in [None, *excite.list_attention()]:
        torch.manual_seed(0)
        try:
            model = excite.create_model(name, attention=attention, num_classes=3)
        except excite.ExciteError:
            continue  # e.g. se_gc's 16 groups do not divide 24 channels: a clear error, nothing to run
        built += 1
        out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        out.logsumexp(1).sum().backward()
        # num_params == num_params_with_grad: an attention module built but never called has no gradient.
        assert sum(p.numel() for p in model.parameters() if p.grad is not None) == n_params(model), attention
    assert built >= len(excite.list_attention())


@pytest.mark.parametrize("name,attention", [("mobilenet_v3_small", None), ("densenet121", "se"),
                                            ("shufflenet_v2_x0_5", "eca")])
def test_onnx_export_matches_ort(tmp_path, name, attention):
    from excite.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    model = excite.create_model(name, attention=attention, num_classes=10).eval()
    r = export_onnx(model, str(tmp_path / "m.onnx"), input_size=(3, 64, 64))
    assert r.max_rel_err < 1e-4


@pytest.mark.parametrize("name,separable", [("mobilenet_v3_large", 15), ("mobilenet_v3_small", 11),
                                            ("shufflenet_v2_x1_0", 16 + 3), ("densenet121", 0)])
def test_explain_adds_up(name, separable):
    from excite.profiling.explain import explain

    e = explain(meta_model(name))
    assert e.total == REF[f"torchvision/{name}"]["params"] == sum(v for _, v in e.kinds) == sum(p for _, p in e.stages)
    # One depthwise + pointwise pair per bneck (MobileNetV3) / per branch (ShuffleNetV2: both branches of the 3
    # downsampling units, the conv branch of the 13 others); DenseNet has no depthwise conv.
    assert len(e.separable) == separable
    assert all(r["ratio"] == pytest.approx(1 / r["c_out"] + 1 / r["k"] ** 2) for r in e.separable)
