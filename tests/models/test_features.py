"""Feature maps for detectors: create_model(..., features_only=True, out_indices=...) and feature_info."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import excite
from excite.core.errors import ExciteError
from excite.models.features import feature_info
from excite.core.registry import model_entry

# One model per registered family (the mechanism is generic: families added later are covered too).
FAMILIES = {}
for _name in excite.list_models():
    FAMILIES.setdefault(model_entry(_name).family, _name)


@pytest.mark.parametrize("name", sorted(FAMILIES.values()))
def test_every_family_has_stages_down_to_its_output(name):
    with torch.device("meta"):
        model = excite.create_model(name)
    info = feature_info(model)
    red = [s["reduction"] for s in info]
    assert red == sorted(set(red)) and all(r & (r - 1) == 0 for r in red)  # increasing powers of two
    final = 4 if model_entry(name).default_input_size[1] in (32, 42) else 32  # CIFAR-size nets /4, ImageNet /32
    assert red[-1] == final
    # The last stage is what the classifier pools (MobileNetV3 pools its 960/576-channel last conv; its
    # num_features is the classifier's hidden 1280/1024 after the pooling).
    assert info[-1]["num_chs"] == getattr(model, "pooled_features", model.num_features)
    assert [s["index"] for s in info] == list(range(len(info)))


def test_resnet50_stages_match_timm_feature_info():
    """timm's resnet50 feature_info (act1, layer1..4): channels 64, 256, 512, 1024, 2048 at /2 .. /32."""
    with torch.device("meta"):
        model = excite.create_model("resnet50", attention="eca")
    info = feature_info(model)
    assert [(s["module"], s["num_chs"], s["reduction"]) for s in info] == [
        ("relu", 64, 2), ("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16), ("layer4", 2048, 32)]
    # MobileNetV2: torchvision's detection backbone takes `features` to its end (1280 channels at /32)
    with torch.device("meta"):
        info = feature_info(excite.create_model("mobilenet_v2"))
    assert [(s["num_chs"], s["reduction"]) for s in info] == [(16, 2), (24, 4), (32, 8), (96, 16), (1280, 32)]


class TinyFPN(nn.Module):
    """Feature pyramid (Lin et al. 2017, Fig. 3): 1x1 laterals, nearest top-down upsampling, 3x3 smoothing."""

    def __init__(self, channels: list[int], width: int = 16):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in channels)

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        out = [lat[-1]]
        for x in reversed(lat[:-1]):
            out.insert(0, x + F.interpolate(out[0], size=x.shape[-2:], mode="nearest"))
        return [conv(p) for conv, p in zip(self.smooth, out)]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_fpn_on_features_shapes_and_gradients_reach_every_stage(name):
    torch.manual_seed(0)
    body = excite.create_model(name, attention="eca", features_only=True, out_indices=[1, 2, 3, 4])
    assert [s["reduction"] for s in body.feature_info] == [4, 8, 16, 32]
    fpn = TinyFPN(body.channels())
    x = torch.randn(2, 3, 64, 64)
    feats = body(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // r, 64 // r) for c, r in zip(body.channels(), body.reduction())]
    pyramid = fpn(feats)
    assert [tuple(p.shape) for p in pyramid] == [(2, 16, 64 // r, 64 // r) for r in body.reduction()]
    sum(p.square().mean() for p in pyramid).backward()
    # every parameter of the backbone is used and gets a gradient (no classifier left dangling)
    missing = [n for n, p in body.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    stage_param = {s["module"]: next(body.get_submodule(s["module"]).parameters()) for s in body.feature_info}
    assert all(p.grad is not None for p in stage_param.values())


def test_features_stop_after_the_last_wanted_stage_and_profile():
    """Only what the wanted stages need is computed: the profiler counts fewer MACs for shallower stages."""
    full = excite.profile(excite.create_model("resnet18", num_classes=0), (3, 224, 224))
    feats = excite.create_model("resnet18", features_only=True)
    r_all = excite.profile(feats, (3, 224, 224))
    r_two = excite.profile(excite.create_model("resnet18", features_only=True, out_indices=[1, 2]), (3, 224, 224))
    assert r_two.macs < r_all.macs <= full.macs
    assert r_all.params == full.params  # the same backbone, classifier removed
    calls = []
    model = excite.create_model("resnet18", features_only=True, out_indices=[0, 1])
    model.layer2.register_forward_hook(lambda *a: calls.append(1))
    out = model(torch.randn(1, 3, 32, 32))
    assert len(out) == 2 and calls == []  # layer2 never ran


def test_features_keys_files_and_errors(tmp_path, capsys):
    model = excite.create_model("resnet18", features_only=True, out_indices=[2, 4])
    plain = excite.create_model("resnet18")
    assert set(model.state_dict()) == {k for k in plain.state_dict() if not k.startswith("fc.")}
    assert model.excite_spec.out_indices == [2, 4]
    excite.save_model(model, tmp_path / "f.safetensors")
    back = excite.load_model(tmp_path / "f.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(back(x), model.eval()(x)))
    with pytest.raises(ExciteError, match=r"out_indices=\[7\]: ResNet has 5 stages \(0..4: relu/2, layer1/4"):
        excite.create_model("resnet18", features_only=True, out_indices=[7])
    with pytest.raises(ExciteError, match="out_indices applies to features_only=True"):
        excite.create_model("resnet18", out_indices=[1])
    from excite.cli import main

    assert main(["profile", "resnet18", "-O", "features_only=true", "-O", "out_indices=[1,2]"]) == 0
    assert "MACs" in capsys.readouterr().out


def test_a_deep_copy_captures_its_own_features():
    import copy

    model = excite.create_model("resnet20", features_only=True).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.layer1[0].conv1.weight.zero_()
        x = torch.randn(1, 3, 32, 32)
        a, b = model(x), twin(x)
    assert len(a) == len(b) == 3 and not torch.equal(a[0], b[0])
