"""Every registered model x attention: builds, runs, and trains every parameter.

Parametrized from the registries, so a new model or attention module is covered automatically.
"""

import pytest
import torch

import excite
from excite.core.errors import ExciteError

from conftest import ATTENTION_MODULES, ONE_PER_FAMILY

# One model per family (the registry's smallest) runs the forward/backward sweep with every attention
# module; the others repeat these blocks (their layouts and counts are tested on the meta device in the
# family tests): they run with their published attention only. Families whose smallest network is
# large (ResNeXt-29, Wide ResNet, ResNeSt, ResNeXt-50: 25-69M parameters) or deep (ResNet-164, the
# Residual Attention Network), and ResNet-18 and ShuffleNet v1 (ResNet-20's and ShuffleNet v2's blocks
# again), run with their published attention and SE: a minute each for the full sweep and no new block.
REPRESENTATIVE = set(ONE_PER_FAMILY.values()) | {"resnet50"}  # resnet50: the bottleneck block
SHORT_SWEEP = {"resnext29_8x64d", "wide_resnet50_2", "resnest50", "resnext50_32x4d", "resnet164",
               "residual_attention92_cifar", "resnet18", "shufflenet_v1_g1"}


def _attentions(name: str) -> list:
    if name not in REPRESENTATIVE:
        return [None]
    return [None, "se"] if name in SHORT_SWEEP else [None, *ATTENTION_MODULES]


CASES = [(n, a) for n in excite.list_models() for a in _attentions(n)]


def build_or_refuse(name, attention, **kw):
    """The model, or ``None`` when its channel counts cannot take the module (grouped SE: groups must
    divide the channels; a reduction larger than a narrow layer's channels), which must then be refused in
    one line naming the valid range."""
    try:
        return excite.create_model(name, attention=attention, **kw)
    except ExciteError as e:
        assert any(w in str(e) for w in ("must divide", "out of range; expected", "must be >=")), str(e)
        return None


def small_input(name):
    # 32x32 keeps every stage at least 1x1 (ImageNet models downsample 32x) and the sweep fast.
    return torch.randn(2, excite.core.registry.model_entry(name).default_input_size[0], 32, 32)


@pytest.mark.parametrize("name, attention", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_forward_backward_every_parameter_used(name, attention):
    torch.manual_seed(0)
    model = build_or_refuse(name, attention, num_classes=7)
    if model is None:
        return
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient (built but never called?): {unused[:5]}"


@pytest.mark.parametrize("name", excite.list_models())
def test_model_interface(name):
    with torch.device("meta"):
        model = excite.create_model(name, num_classes=5)
    assert model.default_input_size == excite.core.registry.model_entry(name).default_input_size
    assert model.excite_spec.arch == name
    model.reset_classifier(3)
    fc = model.get_classifier()
    assert fc.out_features == 3
    assert fc.in_features == model.num_features


@pytest.mark.parametrize("name", excite.list_models())
def test_attention_none_string_removes_all_attention(name):
    with torch.device("meta"):
        plain = excite.create_model(name, attention="none")
    kinds = {type(m).__name__ for m in plain.modules()}
    assert not kinds & {"SqueezeExcite", "ECA", "CBAM"}


def test_forward_features_feeds_the_head():
    torch.manual_seed(0)
    model = excite.create_model("resnet18", attention="eca", num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.ndim == 4 and feats.shape[1] == model.num_features
    assert torch.allclose(model.forward_head(feats), model(x))


def test_in_chans():
    model = excite.create_model("resnet20", in_chans=1, num_classes=10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_list_models_pattern():
    assert excite.list_models("resnet5*") == ["resnet50", "resnet56"]
    assert "efficientnet_b7" in excite.list_models()
    assert excite.list_models("nothing*") == []


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean.*resnet50"):
        excite.create_model("resnet05")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_classes": -1}, "num_classes=-1"),
        ({"attention": "sse"}, "unknown attention 'sse'"),
        ({"depth": 3}, "no argument 'depth'"),
        ({"attention": "eca", "attention_kwargs": {"k_size": [3, 5]}}, "4 stages"),
        ({"attention": "eca", "attention_kwargs": {"k_size": 2}}, "k_size=2"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, needle):
    with pytest.raises(ExciteError, match=needle):
        excite.create_model("resnet50", **kwargs)
