"""Public weights by name (excite.files.weights), attention onto a pretrained backbone, fine-tuning with a frozen
backbone. Nothing downloads: entries point at ``file://`` URLs of files the tests write."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

import excite
from excite.files import weights as W
from excite.core.errors import ExciteError
from excite.files.keymap import map_keys, match_state_dict
from excite.files.modelfile import save_model

REF = Path(__file__).parents[1] / "reference"
MANIFESTS = {}
for _f in ("state_dicts_torchvision_timm.json", "state_dicts_eca_official.json"):
    MANIFESTS.update(json.loads((REF / _f).read_text()))
# Families other helpers are adding; their entries are listed before the model is registered.
PENDING = {"mobilenet_v3_large", "mobilenet_v3_small", "densenet121", "densenet161", "densenet169", "densenet201",
           "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCITE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(W, "_TABLE", None)  # re-read the packaged table (a test may have replaced it)


def _entry(path: Path, model="resnet18", sha=None, **kw) -> W.WeightEntry:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return W.WeightEntry(model=model, tag="test", source=kw.pop("source", "torchvision"), url=path.as_uri(),
                         file=path.name, sha256=digest[:10] if sha is None else sha, licence="test", top1=None, **kw)


def _pretend_pretrained(model: torch.nn.Module, size: int) -> dict:
    """Weights that look trained: perturbed, with BatchNorm statistics measured on data (so activations
    stay in range in eval mode, as a real checkpoint's do)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.rand_like(p)).add_(0.01 * torch.rand_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    return {k: v.clone() for k, v in model.state_dict().items()}


_FILES: dict = {}


def _torchvision_file(tmp_path, name="resnet18", num_classes=1000, seed=0) -> tuple[Path, dict]:
    """A torchvision-layout checkpoint (plain state dict, pickled), written once per session and copied."""
    if name not in _FILES:
        torch.manual_seed(seed)
        sd = _pretend_pretrained(excite.create_model(name, num_classes=num_classes), 32)
        buf = __import__("io").BytesIO()
        torch.save(sd, buf)
        _FILES[name] = (buf.getvalue(), sd)
    data, sd = _FILES[name]
    path = tmp_path / "src" / f"{name}-0000.pth"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, sd


# --- the table ----------------------------------------------------------------------------------------


def test_table_is_complete_and_hash_prefixes_are_the_file_names():
    entries = W.list_weights()
    registered = set(excite.list_models())
    tags = {(e.model, e.tag) for e in entries}
    assert len(tags) == len(entries)  # one file per (model, tag)
    for e in entries:
        assert e.model in registered or e.model in PENDING, e.model
        assert e.licence and e.reference and e.url.startswith("https://")
        assert 50 < e.top1 < 90
        if e.source in ("torchvision", "timm"):
            # torchvision and timm name files NAME-<first hex digits of the SHA-256>.pth (torch.hub checks them)
            assert e.sha256 == re.search(r"-([0-9a-f]{8,})\.pth$", e.url)[1] == re.search(r"-([0-9a-f]{8,})\.", e.file)[1]
            assert e.hash_kind == "prefix"
        else:
            assert e.hash_kind == "none"
    # every torchvision ImageNet family the issue names, and the official ECA-Net ImageNet table
    for model in ("resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "efficientnet_b0",
                  "mobilenet_v3_large", "densenet121", "shufflenet_v2_x1_0"):
        assert (model, "torchvision") in tags
    eca = {e.model: e for e in entries if e.tag == "eca-official"}
    assert sorted(eca) == ["mobilenet_v2", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    # published top-1 (torchvision ResNet50_Weights.IMAGENET1K_V1; ECA-Net paper Table / README)
    assert W.find_weights("resnet50", "torchvision").top1 == 76.13
    assert eca["resnet50"].top1 == 77.42 and eca["resnet50"].attention_kwargs == {"k_size": [3, 5, 5, 7]}


MANIFEST_OF = {("resnet50", "timm"): "timm/seresnet50", ("resnext50_32x4d", "timm"): "timm/seresnext50_32x4d",
               **{(m, "eca-official"): f"eca-official/{n}" for m, n in [
                   ("resnet18", "eca_resnet18_k3577"), ("resnet50", "eca_resnet50_k3557"),
                   ("resnet101", "eca_resnet101_k3357"), ("mobilenet_v2", "eca_mobilenet_v2")]}}


@pytest.mark.parametrize("entry", [e for e in W.list_weights() if e.model not in PENDING], ids=lambda e: e.label)
def test_every_entry_fits_its_model_by_the_published_key_manifest(entry):
    """The model create_model(pretrained=) builds for an entry takes that file's keys and shapes exactly
    (key manifests recorded from torchvision, timm and the official ECA-Net files)."""
    name = MANIFEST_OF.get((entry.model, entry.tag), f"torchvision/{entry.model}" if entry.source == "torchvision" else "")
    if name not in MANIFESTS:  # reference data not recorded for this file (not excite's code)
        pytest.skip(f"no key manifest recorded for {name}")
    with torch.device("meta"):
        model = excite.create_model(entry.model, attention=entry.attention, attention_kwargs=entry.attention_kwargs)
    state = {k: torch.empty(s, device="meta") for k, s in MANIFESTS[name]["state_dict"].items()}
    assert match_state_dict(model, map_keys(state, entry.source)) == ([], [], [])


def test_weights_list_cli(capsys):
    from excite.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "resnet50            torchvision     torchvision   -" in out and "76.13" in out and "0676ba61 (prefix)" in out
    assert "eca k_size=[3,5,5,7]" in out and "unpublished" in out
    assert "(model not registered)" not in out  # every family in the table is registered now
    assert len([ln for ln in out.splitlines() if ln.strip()]) == len(W.list_weights()) + 2
    assert main(["weights", "list", "--format", "json", "--pattern", "resnet18"]) == 0
    assert {e["tag"] for e in json.loads(capsys.readouterr().out)} == {"torchvision", "eca-official"}


def test_unknown_and_unregistered_names_are_one_line():
    with pytest.raises(ExciteError, match=r"no 'timm' weights for resnet18; available: torchvision, eca-official"):
        excite.create_model("resnet18", pretrained="timm")
    with pytest.raises(ExciteError, match="no public weights for resnet20"):
        excite.create_model("resnet20", pretrained=True)
    with pytest.raises(ExciteError, match="include eca attention"):
        excite.create_model("resnet50", attention="se", pretrained="eca-official")


# --- download: once, hash-checked, atomic -----------------------------------------------------------------


def test_download_once_verify_and_load(tmp_path):
    path, sd = _torchvision_file(tmp_path)
    entry = _entry(path)
    model = excite.create_model("resnet18", pretrained=entry)
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    report = model.excite_pretrained
    assert len(report.loaded) == len(sd) and report.new == [] and report.head == "loaded"
    cached = W.cache_dir() / path.name
    assert cached.is_file() and cached.parent == tmp_path / "home" / "weights"
    path.unlink()  # the source is gone: the cached file is used, not downloaded again
    again = excite.create_model("resnet18", pretrained=entry)
    assert torch.equal(again.fc.weight, sd["fc.weight"])


def test_hash_mismatch_and_offline_leave_no_file(tmp_path):
    path, _ = _torchvision_file(tmp_path)
    with pytest.raises(ExciteError, match=r"SHA-256 [0-9a-f]{16}\.\.\. does not match the published deadbeef") as e:
        excite.create_model("resnet18", pretrained=_entry(path, sha="deadbeef"))
    assert "\n" not in str(e.value)
    assert not (W.cache_dir()).exists() or list(W.cache_dir().iterdir()) == []
    missing = W.WeightEntry(model="resnet18", tag="x", source="torchvision", url=(tmp_path / "nope.pth").as_uri(),
                            file="nope.pth", sha256="00000000", licence="", top1=None)
    with pytest.raises(ExciteError, match=r"cannot download resnet18:x from file://.*offline\? download it elsewhere"):
        excite.create_model("resnet18", pretrained=missing)
    assert list(W.cache_dir().iterdir()) == []
    page = tmp_path / "drive.pth.tar"
    page.write_bytes(b"<!DOCTYPE html><html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(ExciteError, match="returned a web page, not the weights"):
        W.download_weights(_entry(page, sha=""))
    assert list(W.cache_dir().iterdir()) == []


def test_a_corrupt_cached_file_is_fetched_again(tmp_path):
    path, sd = _torchvision_file(tmp_path)
    W.cache_dir().mkdir(parents=True)
    (W.cache_dir() / path.name).write_bytes(b"truncated")
    model = excite.create_model("resnet18", pretrained=_entry(path))
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_unpublished_hash_prints_the_computed_one(tmp_path, capsys):
    """The ECA-Net files have no published hash: loaded safely, and the SHA-256 printed so it can be recorded."""
    torch.manual_seed(0)
    src = excite.create_model("resnet18", attention="eca", attention_kwargs={"k_size": [3, 5, 7, 7]})
    sd = {f"module.{k.replace('.attn.', '.eca.')}": v for k, v in src.state_dict().items()}
    path = tmp_path / "eca_resnet18_k3577.pth.tar"
    torch.save({"epoch": 100, "arch": "eca_resnet18", "state_dict": sd, "best_prec1": torch.tensor(70.9)}, path)
    table = [e if e.label != "resnet18:eca-official" else W.WeightEntry(**{**e.__dict__, "url": path.as_uri()})
             for e in W.list_weights()]
    W._TABLE = table
    model = excite.create_model("resnet18", pretrained="eca-official")  # attention and k_size from the table
    assert model.excite_spec.attention == "eca" and model.excite_spec.attention_kwargs == {"k_size": [3, 5, 7, 7]}
    assert torch.equal(model.layer4[1].attn.conv.weight, src.layer4[1].attn.conv.weight)
    assert hashlib.sha256(path.read_bytes()).hexdigest() in capsys.readouterr().err


# --- attention onto a pretrained backbone -------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_attention_onto_pretrained_backbone_computes_the_pretrained_function(tmp_path, attention):
    path, sd = _torchvision_file(tmp_path)
    plain = excite.create_model("resnet18", pretrained=_entry(path)).eval()
    model = excite.create_model("resnet18", attention=attention, pretrained=_entry(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = plain(x)
        assert torch.isfinite(y).all() and torch.equal(model(x), y)  # bit for bit: exactly y at scale 0
    report = model.excite_pretrained
    assert len(report.loaded) == len(sd)  # every backbone tensor (and the classifier) loaded
    assert all(".attn." in k or k.endswith("attn_scale") for k in report.new)
    assert sum(k.endswith("attn_scale") for k in report.new) == 8  # one per BasicBlock
    assert "new" in str(report) and "classifier loaded" in str(report)
    # the attention does train: its blend scales get gradients
    model.train()
    model(x).sum().backward()
    assert model.layer1[0].attn_scale.grad is not None
    # the model file rebuilds the same network (the description records attention_init="identity")
    save_model(model, tmp_path / "m.safetensors")
    back = excite.load_model(tmp_path / "m.safetensors").eval()
    assert back.excite_spec.attention_init == "identity"
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))


def test_pretrained_with_other_classes_gets_a_new_head(tmp_path):
    path, sd = _torchvision_file(tmp_path)
    model = excite.create_model("resnet18", num_classes=10, attention="eca", pretrained=_entry(path))
    report = model.excite_pretrained
    assert report.head == "new" and {"fc.weight", "fc.bias"} <= set(report.new)
    assert len(report.loaded) == len(sd) - 2 and model.fc.out_features == 10


def test_a_file_that_does_not_fit_is_one_line(tmp_path):
    path, _ = _torchvision_file(tmp_path, name="resnet20")
    with pytest.raises(ExciteError, match=r"resnet18:test weights \(resnet20-0000.pth\) do not fit ResNet: \d+ missing"):
        excite.create_model("resnet18", pretrained=_entry(path))


def test_spec_without_new_fields_is_unchanged():
    spec = excite.ModelSpec(arch="resnet18")
    assert "attention_init" not in spec.to_dict() and "out_indices" not in spec.to_dict()
    assert excite.ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ExciteError, match="attention_init='zero' is not valid"):
        excite.ModelSpec(arch="resnet18", attention_init="zero")


# --- fine-tuning: train only the new modules first ----------------------------------------------------------


def test_train_pretrained_with_frozen_backbone(tmp_path, monkeypatch):
    """--pretrained + --attention eca + --freeze-backbone-epochs: before training the outputs are the
    pretrained model's; after steps with the backbone frozen every backbone tensor (BN statistics included)
    is unchanged while the attention and the classifier have moved."""
    from excite.files.modelfile import read_model_file
    from excite.training.engine import TrainConfig, train

    torch.manual_seed(0)
    sd = _pretend_pretrained(excite.create_model("resnet20"), 32)
    path = tmp_path / "resnet20-0000.pth"
    torch.save(sd, path)
    W._TABLE = [_entry(path, model="resnet20")]
    cfg = TrainConfig(model="resnet20", attention="eca", pretrained="test", freeze_backbone_epochs=1, epochs=2,
                      stop_after_steps=3, batch_size=32, subset=64 * 3, progress=False, threads=1,
                      out=str(tmp_path / "run"), warmup_epochs=0.0, lr=0.05)
    train(cfg)
    after = read_model_file(tmp_path / "run" / "last.safetensors").tensors
    backbone = [k for k in sd if not k.startswith("fc.")]
    assert backbone and all(torch.equal(after[k], sd[k]) for k in backbone)
    assert not torch.equal(after["fc.weight"], sd["fc.weight"])
    scales = [k for k in after if k.endswith("attn_scale")]
    assert len(scales) == 9 and any(after[k].item() != 0 for k in scales)


def test_frozen_epochs_end_and_everything_trains(tmp_path):
    from excite.files.modelfile import read_model_file
    from excite.training.engine import TrainConfig, train

    torch.manual_seed(0)
    sd = _pretend_pretrained(excite.create_model("resnet20"), 32)
    path = tmp_path / "resnet20-0000.pth"
    torch.save(sd, path)
    W._TABLE = [_entry(path, model="resnet20")]
    cfg = TrainConfig(model="resnet20", attention="eca", pretrained="test", freeze_backbone_epochs=1, epochs=2,
                      batch_size=32, subset=32 * 2, progress=False, threads=1, out=str(tmp_path / "run"),
                      warmup_epochs=0.0)
    train(cfg)
    after = read_model_file(tmp_path / "run" / "last.safetensors").tensors
    assert not torch.equal(after["conv1.weight"], sd["conv1.weight"])  # epoch 2 trains the backbone too


def test_a_file_put_in_the_cache_folder_is_used_offline(tmp_path):
    """A torchvision file the user already has: copied into $EXCITE_HOME/weights, checked against the
    published hash prefix, used without any network."""
    path, sd = _torchvision_file(tmp_path)
    entry = W.WeightEntry(**{**_entry(path).__dict__, "url": "https://download.invalid/resnet18-0000.pth"})
    W.cache_dir().mkdir(parents=True)
    (W.cache_dir() / path.name).write_bytes(path.read_bytes())
    model = excite.create_model("resnet18", attention="eca", pretrained=entry)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_densenet_files_get_todays_key_names():
    """torchvision's DenseNet files say `norm.1` where the module is now `norm1` (its _load_state_dict fix)."""
    t = torch.zeros(1)
    fixed = W._fix_keys({"features.denseblock1.denselayer1.norm.1.weight": t,
                         "features.denseblock1.denselayer1.conv.2.weight": t,
                         "features.norm5.weight": t}, "densenet-legacy")
    assert set(fixed) == {"features.denseblock1.denselayer1.norm1.weight",
                          "features.denseblock1.denselayer1.conv2.weight", "features.norm5.weight"}


def test_weights_download_cli(tmp_path, capsys):
    from excite.cli import main

    path, _ = _torchvision_file(tmp_path)
    W._TABLE = [_entry(path)]
    assert main(["weights", "download", "resnet18", "--tag", "test"]) == 0
    assert Path(capsys.readouterr().out.strip()) == W.cache_dir() / path.name
    assert main(["weights", "download", "resnet18", "--tag", "nope"]) == 2
    assert "no 'nope' weights for resnet18; available: test" in capsys.readouterr().err
