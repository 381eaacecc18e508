"""ResNet family against its references: torchvision/timm/official-ECA key manifests, the papers' parameter
counts, ResNeXt form equivalence, stride placement, and the real trained CIFAR checkpoints."""

import json
from pathlib import Path

import pytest
import torch

import excite
from excite.models.resnet import convert_resnext_form

REF = Path(__file__).parent / "reference"
TV = json.loads((REF / "state_dicts_torchvision_timm.json").read_text())
ECA_OFFICIAL = json.loads((REF / "state_dicts_eca_official.json").read_text())


def manifest(entry, rename=()):
    sd = entry["state_dict"]
    sd = dict(sd) if isinstance(sd, list) else sd
    out = {}
    for k, shape in sd.items():
        for a, b in rename:
            k = k.replace(a, b)
        out[k] = list(shape)
    return out


def layout(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def meta_model(name, **kw):
    with torch.device("meta"):
        return excite.create_model(name, **kw)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


TV_RESNETS = [k.split("/")[1] for k in TV if k.startswith("torchvision/") and "res" in k]


@pytest.mark.parametrize("name", TV_RESNETS)
def test_torchvision_keys_shapes_and_count(name):
    model = meta_model(name)
    assert n_params(model) == TV[f"torchvision/{name}"]["params"]
    assert layout(model) == manifest(TV[f"torchvision/{name}"])


@pytest.mark.parametrize(
    "timm_name, model, attention, kwargs",
    [
        ("seresnet50", "resnet50", "se", {}),
        ("seresnext50_32x4d", "resnext50_32x4d", "se", {}),
        ("resnet50_eca", "resnet50", "eca", {}),  # adaptive k: 5, 5, 5, 7
        ("resnet50_cbam", "resnet50", "cbam", {"bias": False}),
    ],
)
def test_timm_attention_models(timm_name, model, attention, kwargs):
    ref = TV[f"timm/{timm_name}"]
    m = meta_model(model, attention=attention, attention_kwargs=kwargs)
    assert n_params(m) == ref["params"]
    rename = ((".se.spatial.conv.conv.", ".attn.spatial.conv."), (".se.spatial.conv.bn.", ".attn.spatial.bn."),
              (".se.", ".attn."))
    assert layout(m) == manifest(ref, rename)


def test_senet_paper_counts():
    # SENet: SE-ResNet-50 28.1M; the ECA paper's bias-free SENet: 26.77M binary = 28,071,976.
    assert n_params(meta_model("resnet50", attention="se")) == 28_088_024
    assert n_params(meta_model("resnet50", attention="se", attention_kwargs={"bias": False})) == 28_071_976
    assert round(28_071_976 / 2**20, 2) == 26.77


@pytest.mark.parametrize(
    "official, model, ks",
    [
        ("eca_resnet50_k3557", "resnet50", [3, 5, 5, 7]),
        ("eca_resnet18_k3577", "resnet18", [3, 5, 7, 7]),
        ("eca_resnet101_k3357", "resnet101", [3, 3, 5, 7]),
    ],
)
def test_official_eca_resnets(official, model, ks):
    ref = ECA_OFFICIAL[f"eca-official/{official}"]
    m = meta_model(model, attention="eca", attention_kwargs={"k_size": ks})
    assert n_params(m) == ref["params"]
    assert layout(m) == manifest(ref, (("module.", ""), (".eca.", ".attn.")))


def test_eca_resnet50_adds_the_papers_80_parameters():
    plain = n_params(meta_model("resnet50"))
    assert n_params(meta_model("resnet50", attention="eca", attention_kwargs={"k_size": [3, 5, 5, 7]})) - plain == 80


# ResNet paper Table 6 (CIFAR-10): parameters as printed, in millions.
CIFAR_PARAMS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                "resnet1202": 19.4}


@pytest.mark.parametrize("name", CIFAR_PARAMS)
def test_cifar_resnet_parameters_match_the_paper(name):
    paper = CIFAR_PARAMS[name]
    digits = 1 if paper >= 1 else 2
    assert round(n_params(meta_model(name)) / 1e6, digits) == paper
    assert n_params(meta_model(name, preact=True)) == n_params(meta_model(name))  # v2 moves BN, adds none


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_real_cifar_checkpoint_loads_and_classifies(name):
    path = next((REF / "checkpoints").glob(f"{name}-*.th"))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module.").replace("linear.", "fc."): v for k, v in ckpt["state_dict"].items()}
    model = excite.create_model(name).eval()
    model.load_state_dict(sd, strict=True)  # every key matched, no parameters for option-A shortcuts
    # A fixed input far from the data still gives a confident, finite answer; and the trained BN statistics
    # were loaded (not the init values 0/1).
    assert not torch.allclose(model.bn1.running_var, torch.ones(16))
    out = model(torch.zeros(2, 3, 32, 32))
    assert torch.isfinite(out).all() and out.shape == (2, 10)


def test_stride_placement_v1_vs_v15():
    v15, v1 = meta_model("resnet50"), meta_model("resnet50", variant="v1")
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert layout(v1) == layout(v15)  # same weights, different computation
    with pytest.raises(excite.ExciteError, match="variant='v2'"):
        meta_model("resnet50", variant="v2")


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dst", ["a", "b"])
def test_resnext_forms_compute_the_same_function(dst, train):
    torch.manual_seed(0)
    kw = dict(groups=4, width_per_group=4, num_classes=5)
    grouped = excite.create_model("resnext50_32x4d", **kw)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in grouped.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    other = excite.create_model("resnext50_32x4d", block_form=dst, **kw)
    other.load_state_dict(convert_resnext_form(grouped.state_dict(), "c", dst, groups=4), strict=True)
    back = convert_resnext_form(other.state_dict(), dst, "c", groups=4)
    assert all(torch.equal(back[k], v) for k, v in grouped.state_dict().items())
    grouped.train(train), other.train(train)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(grouped(x), other(x), rtol=1e-4, atol=1e-4)


def test_attention_sits_after_the_last_bn_before_the_addition():
    model = excite.create_model("resnet50", attention="se").eval()
    block = model.layer1[0]
    seen = []
    block.bn3.register_forward_hook(lambda m, i, o: seen.append(("bn3", o)))
    block.attn.register_forward_hook(lambda m, i, o: seen.append(("attn", i[0])))
    model(torch.randn(1, 3, 64, 64))
    assert [s[0] for s in seen] == ["bn3", "attn"]
    assert seen[0][1] is seen[1][1]  # the attention input is the BN output itself
