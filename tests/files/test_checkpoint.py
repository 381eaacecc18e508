"""load_checkpoint: safe reading, container unwrapping, key mapping per source, one readable error.

References: the real akamaster CIFAR ResNet checkpoints (outputs compared with a functional forward
written from the checkpoint's own tensors) and the torchvision / timm / official ECA-Net key manifests.
"""

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import excite
from excite.files.keymap import load_checkpoint, map_keys, match_state_dict, read_state_dict
from excite.files.modelfile import read_model_file, save_model
from excite.core.errors import ExciteError

REF = Path(__file__).parents[1] / "reference"
CIFAR = {"resnet20": REF / "checkpoints/resnet20-12fca82f.th", "resnet56": REF / "checkpoints/resnet56-4bfd9763.th"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


# --- safe reading -----------------------------------------------------------------------------------


class _Evil:
    """Unpickling calls ``open(marker, "w")``, which creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ExciteError, match="refused"):
        load_checkpoint(Tiny(), path)
    assert not marker.exists(), "the payload ran during a safe load"
    # Control: the payload does run under an unrestricted unpickler, so the test above could have failed.
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_garbage_and_unknown_suffix_are_one_line_errors(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExciteError, match="x.pth"):
        load_checkpoint(Tiny(), bad)
    other = tmp_path / "x.npz"
    other.write_bytes(b"")
    with pytest.raises(ExciteError, match="safetensors"):
        load_checkpoint(Tiny(), other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(Tiny(), tmp_path / "missing.pth")
    with pytest.raises(ExciteError, match="source"):
        load_checkpoint(Tiny(), bad, source="keras")


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar", ".th", ".pt", ".safetensors"])
def test_roundtrip_every_suffix_with_container_and_prefix(tmp_path, suffix):
    src = Tiny()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = Tiny()
    info = load_checkpoint(dst, path, source="torchvision")
    assert info["loaded"] == len(src.state_dict()) and not info["missing"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_error_lists_missing_unexpected_and_mismatched_in_one_message(tmp_path):
    sd = Tiny().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv1.weight"] = torch.zeros(5, 3, 3, 3)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    with pytest.raises(ExciteError) as e:
        load_checkpoint(Tiny(), path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing: fc.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "1 mismatched: conv1.weight (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg
    # Non-strict: loads what fits and reports the rest.
    model = Tiny()
    info = load_checkpoint(model, path, strict=False)
    assert info["missing"] == ["fc.bias"] and info["unexpected"] == ["extra.weight"]
    assert torch.equal(model.bn1.running_var, sd["bn1.running_var"])


def test_save_model_writes_provenance_in_the_header(tmp_path):
    m = excite.create_model("resnet20", attention="eca", attention_kwargs={"k_size": 3})
    w = save_model(m, tmp_path / "t.safetensors", provenance={"file": "x"})
    mf = read_model_file(w)
    assert mf.spec.arch == "resnet20" and mf.spec.attention == "eca" and mf.header["provenance"]["file"] == "x"
    assert set(read_state_dict(w)) == set(m.state_dict())
    with pytest.raises(ExciteError, match="no model description"):
        save_model(Tiny(), tmp_path / "tiny.safetensors")


# --- key mapping rules -----------------------------------------------------------------------------


def test_rules_map_timm_cbam_and_official_eca_names():
    t = map_keys({"module.layer1.0.se.spatial.conv.conv.weight": 0, "layer1.0.se.spatial.conv.bn.bias": 0,
                  "layer1.0.se.channel.fc1.weight": 0, "layer1.0.se.fc2.bias": 0}, "timm")
    assert set(t) == {"layer1.0.attn.spatial.conv.weight", "layer1.0.attn.spatial.bn.bias",
                      "layer1.0.attn.channel.fc1.weight", "layer1.0.attn.fc2.bias"}
    e = map_keys({"module.layer4.2.eca.conv.weight": 0, "module.fc.weight": 0}, "eca-official")
    assert set(e) == {"layer4.2.attn.conv.weight", "fc.weight"}
    c = map_keys({"module.linear.weight": 0, "module.layer1.0.conv1.weight": 0}, "cifar-resnet")
    assert set(c) == {"fc.weight", "layer1.0.conv1.weight"}


# --- real CIFAR checkpoints --------------------------------------------------------------------------


def _cifar_reference_forward(sd, x):
    """ResNet for CIFAR (He et al. 2016, Sec. 4.2) written directly on the checkpoint's tensors.

    Option-A shortcut: subsample by 2 and zero-pad the channels (no parameters), as in akamaster's code.
    """
    p = {k.removeprefix("module."): v for k, v in sd.items()}

    def bn(x, name):
        return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"],
                            p[f"{name}.bias"], False, 0.0, 1e-5)

    x = F.relu(bn(F.conv2d(x, p["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in p:
            b = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            out = F.relu(bn(F.conv2d(x, p[f"{b}.conv1.weight"], stride=stride, padding=1), f"{b}.bn1"))
            out = bn(F.conv2d(out, p[f"{b}.conv2.weight"], padding=1), f"{b}.bn2")
            if stride != 1 or x.shape[1] != out.shape[1]:
                pad = (out.shape[1] - x.shape[1]) // 2
                x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
            x = F.relu(out + x)
            i += 1
    x = x.mean((2, 3))
    return F.linear(x, p["linear.weight"], p["linear.bias"])


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_real_cifar_checkpoint_loads_and_matches_reference_forward(name):
    model = excite.create_model(name, num_classes=10)
    info = load_checkpoint(model, CIFAR[name])  # source auto-detected
    assert info["source"] == "cifar-resnet"
    assert not info["missing"] and not info["unexpected"] and not info["mismatched"]
    sd = torch.load(CIFAR[name], map_location="cpu", weights_only=True)["state_dict"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _cifar_reference_forward(sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_real_cifar_checkpoint_via_create_model(name):
    model = excite.create_model(name, num_classes=10, checkpoint=str(CIFAR[name]))
    sd = torch.load(CIFAR[name], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.fc.weight, sd["module.linear.weight"])


# --- manifests: synthesised checkpoints map completely ------------------------------------------------

MANIFESTS = {}
for _f in ("state_dicts_torchvision_timm.json", "state_dicts_eca_official.json"):
    MANIFESTS.update(json.loads((REF / _f).read_text()))

# manifest entry -> (source, excite model, attention, attention_kwargs)
CASES = {
    "torchvision/resnet18": ("torchvision", "resnet18", None, {}),
    "torchvision/resnet34": ("torchvision", "resnet34", None, {}),
    "torchvision/resnet50": ("torchvision", "resnet50", None, {}),
    "torchvision/resnet101": ("torchvision", "resnet101", None, {}),
    "torchvision/resnet152": ("torchvision", "resnet152", None, {}),
    "torchvision/resnext50_32x4d": ("torchvision", "resnext50_32x4d", None, {}),
    "torchvision/resnext101_32x8d": ("torchvision", "resnext101_32x8d", None, {}),
    "torchvision/resnext101_64x4d": ("torchvision", "resnext101_64x4d", None, {}),
    "torchvision/wide_resnet50_2": ("torchvision", "wide_resnet50_2", None, {}),
    "torchvision/mobilenet_v2": ("torchvision", "mobilenet_v2", None, {}),
    **{f"torchvision/efficientnet_b{i}": ("torchvision", f"efficientnet_b{i}", None, {}) for i in range(8)},
    "timm/seresnet50": ("timm", "resnet50", "se", {}),
    "timm/resnet50_eca": ("timm", "resnet50", "eca", {}),
    "timm/resnet50_cbam": ("timm", "resnet50", "cbam", {"bias": False}),
    "timm/seresnext50_32x4d": ("timm", "resnext50_32x4d", "se", {}),
    "eca-official/eca_resnet50_k3557": ("eca-official", "resnet50", "eca", {"k_size": [3, 5, 5, 7]}),
    "eca-official/eca_resnet18_k3577": ("eca-official", "resnet18", "eca", {"k_size": [3, 5, 7, 7]}),
    "eca-official/eca_resnet101_k3357": ("eca-official", "resnet101", "eca", {"k_size": [3, 3, 5, 7]}),
    "eca-official/eca_mobilenet_v2": ("eca-official", "mobilenet_v2", "eca", {"k_size": [1, 1, 1, 1, 3, 3, 3]}),
}


@pytest.mark.parametrize("entry", sorted(CASES))
def test_manifest_maps_completely(entry):
    source, name, attention, kwargs = CASES[entry]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = excite.create_model(name, attention=attention, attention_kwargs=kwargs)
    state = {k: torch.empty(s, device="meta") for k, s in MANIFESTS[entry]["state_dict"].items()}
    missing, unexpected, mismatched = match_state_dict(model, map_keys(state, source))
    assert (missing, unexpected, mismatched) == ([], [], [])


def test_manifest_end_to_end_through_a_file(tmp_path):
    """One synthesised checkpoint written as the official ECA release does (DataParallel container)."""
    entry = "eca-official/eca_resnet18_k3577"
    source, name, attention, kwargs = CASES[entry]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in MANIFESTS[entry]["state_dict"].items()}
    path = tmp_path / "eca_resnet18_k3577.pth.tar"
    torch.save({"epoch": 100, "arch": "eca_resnet18", "state_dict": sd}, path)
    model = excite.create_model(name, attention=attention, attention_kwargs=kwargs)
    info = load_checkpoint(model, path)  # auto-detects eca-official
    assert info["source"] == "eca-official"
    assert torch.equal(model.layer4[1].attn.conv.weight, sd["module.layer4.1.eca.conv.weight"])


# --- convert and create_model(checkpoint=) -----------------------------------------------------------


def test_convert_cli_then_create_model_loads_it(tmp_path):
    from excite.cli import main

    dst = tmp_path / "r20.safetensors"
    assert main(["convert", str(CIFAR["resnet20"]), str(dst), "--model", "resnet20"]) == 0
    mf = read_model_file(dst)
    assert mf.spec.arch == "resnet20" and mf.spec.num_classes == 10  # inferred from `linear.weight`
    prov = mf.header["provenance"]
    assert prov["source"] == "cifar-resnet" and prov["sha256"].startswith("12fca82f")
    model = excite.load_model(dst)
    sd = torch.load(CIFAR["resnet20"], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.layer3[2].conv2.weight, sd["module.layer3.2.conv2.weight"])


def test_convert_cli_user_errors_are_one_line(tmp_path, capsys):
    from excite.cli import main

    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o.safetensors"), "--model", "resnet20"]) == 2
    assert main(["convert", str(CIFAR["resnet20"]), str(tmp_path / "o.safetensors"), "--model", "resnet20",
                 "--attention-kwargs", "{bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("excite") and ": error: " in line for line in err)


def test_positional_pairing_only_when_every_shape_agrees():
    class A(nn.Module):
        def __init__(self, k=3):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gate = nn.Conv1d(1, 1, k, bias=False)

    src = {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4), "eca_x.weight": torch.ones(1, 1, 3)}
    missing, unexpected, mismatched = match_state_dict(A(), dict(src))
    assert (missing, unexpected, mismatched) == ([], [], [])
    missing, unexpected, _ = match_state_dict(A(k=5), dict(src))
    assert missing == ["gate.weight"] and unexpected == ["eca_x.weight"]


# --- timm MobileNetV2 / EfficientNet: role names (conv_stem, blocks.S.B.conv_dw ...) -> torchvision layout -----

# timm manifest -> (excite model, the torchvision manifest of the same network). Both manifests were dumped
# from the real libraries and list the same layers in the same order, so pairing them key by key gives
# the expected destination of every timm tensor independently of our mapping code.
TIMM_MOBILE = {"timm/efficientnet_b0": ("efficientnet_b0", "torchvision/efficientnet_b0"),
               "timm/mobilenetv2_100": ("mobilenet_v2", "torchvision/mobilenet_v2")}


def _expected_pairs(entry):
    timm_sd = MANIFESTS[entry]["state_dict"]
    tv_sd = MANIFESTS[TIMM_MOBILE[entry][1]]["state_dict"]
    assert len(timm_sd) == len(tv_sd)
    pairs = list(zip(timm_sd, tv_sd))
    assert all(timm_sd[a] == tv_sd[b] for a, b in pairs)  # the reference pairing itself is shape-consistent
    return pairs


@pytest.mark.parametrize("entry", sorted(TIMM_MOBILE))
def test_timm_mobile_manifest_maps_every_key_to_its_torchvision_name(entry):
    name, _ = TIMM_MOBILE[entry]
    from excite.files.keymap import detect_source

    state = {k: torch.empty(s, device="meta") for k, s in MANIFESTS[entry]["state_dict"].items()}
    assert detect_source(state) == "timm"
    with torch.device("meta"):
        model = excite.create_model(name)
    mapped = map_keys(state, "timm", target=model.state_dict())
    # by name alone (no positional fallback): every key found, every shape equal
    assert match_state_dict(model, dict(mapped), by_position=False) == ([], [], [])
    renamed = dict(zip(state, mapped))
    assert [(a, renamed[a]) for a, _ in _expected_pairs(entry)] == _expected_pairs(entry)


def test_timm_mobile_into_the_wrong_family_is_reported_not_loaded():
    state = {k: torch.empty(s, device="meta") for k, s in MANIFESTS["timm/efficientnet_b0"]["state_dict"].items()}
    with torch.device("meta"):
        model = excite.create_model("mobilenet_v2")
    missing, unexpected, mismatched = match_state_dict(model, map_keys(state, "timm", target=model.state_dict()))
    assert missing and unexpected and mismatched


@pytest.mark.parametrize("entry", sorted(TIMM_MOBILE))
def test_timm_mobile_checkpoint_file_loads_every_tensor_where_it_belongs(tmp_path, entry):
    name, _ = TIMM_MOBILE[entry]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in MANIFESTS[entry]["state_dict"].items()}
    path = tmp_path / f"{entry.split('/')[1]}.pth"
    torch.save({"epoch": 450, "state_dict": sd}, path)  # timm's train.py checkpoint container
    model = excite.create_model(name)
    info = load_checkpoint(model, path)  # source auto-detected
    assert info["source"] == "timm" and info["loaded"] == len(sd)
    assert (info["missing"], info["unexpected"], info["mismatched"]) == ([], [], [])
    ours = model.state_dict()
    for timm_key, tv_key in _expected_pairs(entry):
        assert torch.equal(ours[tv_key], sd[timm_key]), (timm_key, tv_key)
    # spot checks through the module tree, written from torchvision's model code
    if name == "efficientnet_b0":
        assert torch.equal(model.features[2][0].block[1][0].weight, sd["blocks.1.0.conv_dw.weight"])  # depthwise
        assert torch.equal(model.features[2][0].block[2].fc1.bias, sd["blocks.1.0.se.conv_reduce.bias"])  # SE
        assert torch.equal(model.features[1][0].block[2][0].weight, sd["blocks.0.0.conv_pw.weight"])  # DS projection
        assert torch.equal(model.features[8][1].running_var, sd["bn2.running_var"])  # head norm
    else:
        assert torch.equal(model.features[2].conv[1][0].weight, sd["blocks.1.0.conv_dw.weight"])
        assert torch.equal(model.features[17].conv[2].weight, sd["blocks.6.0.conv_pwl.weight"])
        assert torch.equal(model.features[18][0].weight, sd["conv_head.weight"])
    assert torch.equal(model.classifier[1].weight, sd["classifier.weight"])
