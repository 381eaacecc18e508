"""A model flows from every command to the next: one description (ModelSpec), one model file, one
model reference. Round trips over several kinds of model, in a fresh process, through ONNX Runtime,
and through every command that takes a model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import excite
from excite.cli import main
from excite.core.errors import ExciteError
from excite.files.modelfile import read_model_file, save_model
from excite.core.spec import ModelSpec, parse_input_size

USER_NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    class Net(nn.Module):
        def __init__(self, width=16, num_classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))
''')


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(USER_NET)
    return path


def _randomize_bn(model):
    """Non-trivial BatchNorm statistics, so a lost buffer changes the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _kinds(user_file):
    """(label, model, input side): the round-trip matrix of the model-reference issue."""
    attached = excite.create_model("resnet20", attention="none")
    excite.attach(attached, "eca", init="identity", input_size=None, profile=False, k_size=3)
    return [
        ("resnet20 eca k3", excite.create_model("resnet20", attention="eca", attention_kwargs={"k_size": 3}), 32),
        ("resnet50 v1 se no-bias", excite.create_model("resnet50", attention="se", attention_kwargs={"bias": False},
                                                       variant="v1", num_classes=7), 64),
        ("resnext block form b", excite.create_model("resnext50_32x4d", block_form="b", num_classes=5), 64),
        ("mobilenet_v2 eca", excite.create_model("mobilenet_v2", attention="eca", num_classes=5), 64),
        ("efficientnet_b0 as published", excite.create_model("efficientnet_b0", num_classes=5), 64),
        ("user file", excite.resolve_model(f"{user_file}:Net", options={"width": 8}, num_classes=3), 32),
        ("after attach", attached, 32),
    ]


def test_round_trip_in_a_fresh_process(tmp_path, user_file):
    """save -> load in a fresh process -> identical outputs, for every kind of model."""
    expected, paths = {}, {}
    for i, (label, model, side) in enumerate(_kinds(user_file)):
        model = _randomize_bn(model).eval()
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            expected[f"y{i}"] = model(x)
        expected[f"x{i}"] = x
        paths[i] = str(save_model(model, tmp_path / f"m{i}.safetensors"))
    (tmp_path / "io.safetensors").write_bytes(st_save(expected))
    script = textwrap.dedent(f'''
        import json, sys, torch
        from safetensors.torch import load_file
        import excite
        torch.set_num_threads({torch.get_num_threads()})  # the same kernels' reduction order as the writer
        io = load_file({str(tmp_path / "io.safetensors")!r})
        paths = json.loads({json.dumps(json.dumps(paths))})
        bad = []
        for i, p in paths.items():
            m = excite.load_model(p, trust_code=[{f"{user_file}:Net"!r}]).eval()  # the user's own file
            with torch.no_grad():
                y = m(io["x" + i])
            if not torch.equal(y, io["y" + i]):
                bad.append((p, float((y - io["y" + i]).abs().max())))
        print(json.dumps(bad))
    ''')
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_model_file_is_self_describing(tmp_path):
    model = excite.create_model("resnet20", attention="eca", attention_kwargs={"k_size": [3, 5, 5]}, preact=True)
    path = save_model(model, tmp_path / "m.safetensors", metrics={"top1": 91.5})
    mf = read_model_file(path)
    assert mf.spec == model.excite_spec
    assert mf.spec.options == {"preact": True}
    assert mf.header["metrics"] == {"top1": 91.5}
    assert mf.header["version"] == excite.__version__
    assert set(mf.tensors) == set(model.state_dict())
    # the header is plain JSON, readable without excite
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["excite_model"])["arch"] == "resnet20"


def test_spec_json_round_trip_and_validation():
    spec = ModelSpec("resnet50", attention="eca", attention_kwargs={"k_size": [3, 5, 5, 7]}, options={"variant": "v1"},
                     num_classes=10, input_size=(3, 160, 160))
    assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ExciteError, match="unknown model description key"):
        ModelSpec.from_dict({"arch": "resnet50", "atention": "eca"})
    with pytest.raises(ExciteError, match="num_classes"):
        ModelSpec("resnet50", num_classes=-1)
    assert parse_input_size("224") == (3, 224, 224)
    assert parse_input_size("3x224x192") == (3, 224, 192)
    assert parse_input_size("160x128") == (3, 160, 128)
    for bad in ("abc", "0", "1x2x3x4", "0x0"):
        with pytest.raises(ExciteError):
            parse_input_size(bad)


def test_none_means_as_published_everywhere():
    """attention=None keeps EfficientNet's SE in create_model and in training; 'none' removes it."""
    from excite.training.engine import build_training_model, make_config

    published = build_training_model(make_config({"model": "efficientnet_b0"}), 10)
    removed = build_training_model(make_config({"model": "efficientnet_b0", "attention": "none"}), 10)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(published) == n(excite.create_model("efficientnet_b0", num_classes=10))
    assert n(removed) < n(published)


def test_train_writes_model_files_that_every_command_reads(tmp_path, capsys):
    out = tmp_path / "runs" / "eca"
    res = excite.train(model="resnet20", attention="eca", attention_kwargs={"k_size": 3}, dataset="digits",
                       subset=128, batch_size=32, epochs=1, out=str(out), progress=False)
    best = out / "best.safetensors"
    model = excite.load_model(best).eval()
    assert model.excite_spec.attention_kwargs == {"k_size": 3}
    assert model.excite_file["training"]["dataset"] == "digits"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), res["model"].eval()(x))
    # the same flags and the same file in every command
    for argv in (["eval", str(best)], ["profile", str(best)], ["explain", str(best)],
                 ["bench", str(best), "--batch-size", "2", "--runs", "1", "--warmup", "0"],
                 ["inspect", str(best), "--limit", "8", "--out", str(tmp_path / "insp")],
                 ["export", "onnx", str(best), str(tmp_path / "new" / "m.onnx")]):
        assert main(argv) == 0, argv
    text = capsys.readouterr().out
    assert "ONNX Runtime vs PyTorch" in text and "269,749" in text
    # initial weights for a new run: --model FILE fine-tunes it
    r2 = excite.train(model=str(best), dataset="digits", subset=64, batch_size=32, epochs=1, progress=False)
    assert r2["model"].excite_spec.attention == "eca"


def test_create_model_checkpoint_reads_trained_files(tmp_path):
    out = tmp_path / "run"
    excite.train(model="resnet20", attention="eca", dataset="digits", subset=64, batch_size=32, epochs=1,
                 out=str(out), progress=False)
    m = excite.create_model("resnet20", attention="eca", checkpoint=str(out / "last.safetensors"))
    ref = excite.load_model(out / "last.safetensors")
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
    with pytest.raises(ExciteError, match="do not fit"):
        excite.create_model("resnet20", attention="se", checkpoint=str(out / "last.safetensors"))


def test_files_of_excite_0_1_still_load(tmp_path):
    """Training checkpoints with every tensor under `s.` and converted weights with a JSON beside them."""
    from excite.files.modelfile import _flatten

    model = excite.create_model("resnet20", attention="none").eval()
    tensors = {}
    skeleton = _flatten("s", {"model": model.state_dict(), "step": 3,
                              "config": {"model": "resnet20", "attention": None, "dataset": "digits"}}, tensors)
    old = tmp_path / "last.safetensors"
    old.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()},
                            metadata={"excite_train_state": json.dumps(skeleton)}))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(excite.load_model(old).eval()(x), model(x))
    side = tmp_path / "conv.safetensors"
    side.write_bytes(st_save({k: v.contiguous() for k, v in model.state_dict().items()}))
    side.with_suffix(".json").write_text(json.dumps({"name": "resnet20", "attention": "none", "num_classes": 10,
                                                     "provenance": {"source": "excite"}}))
    with torch.no_grad():
        assert torch.equal(excite.load_model(side).eval()(x), model(x))


def test_optimized_and_converted_models_save_and_load(tmp_path):
    model = _randomize_bn(excite.create_model("resnet20", attention="eca")).eval()
    opt = excite.optimize_for_inference(model, channels_last=False)
    path = save_model(opt, tmp_path / "opt.safetensors")
    back = excite.load_model(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-4, rtol=1e-4)
    assert back.excite_spec.optimized


def test_user_file_reference_in_every_command(tmp_path, user_file, capsys):
    ref = f"{user_file}:Net"
    assert main(["profile", ref, "--input-size", "32"]) == 0
    assert "params" in capsys.readouterr().out
    assert main(["profile", ref, "--input-size", "32", "--attention", "eca"]) == 0
    assert main(["explain", ref, "--input-size", "32"]) == 0
    assert main(["export", "onnx", ref, str(tmp_path / "u.onnx"), "--input-size", "32"]) == 0
    assert main(["attach", ref, "eca", "--input-size", "32", "--init", "identity",
                 "--out", str(tmp_path / "att.safetensors")]) == 0
    back = excite.load_model(tmp_path / "att.safetensors", trust_code=[ref])  # the header names the user's code
    assert any(n.endswith("attn") for n, _ in back.named_modules())
    assert main(["bench", ref, "--input-size", "32", "--batch-size", "2", "--runs", "1", "--warmup", "0",
                 "-O", "width=8"]) == 0


def test_timm_and_torchvision_references(monkeypatch, capsys):
    """`timm:NAME` and `torchvision:NAME` go through the packages' own factories (look-alikes here)."""
    from torch import nn

    calls = []

    def create_model(name, pretrained=False, num_classes=1000, **kw):
        calls.append((name, pretrained, num_classes))
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    assert main(["profile", "timm:tiny", "--input-size", "32", "--num-classes", "5"]) == 0
    assert calls == [("tiny", False, 5)]
    assert "params 269" in capsys.readouterr().out  # 3*8*9 + 8 + 8*5 + 5 = 269
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not importable
    with pytest.raises(ExciteError, match="needs the torchvision package"):
        excite.resolve_model("torchvision:resnet50")


def test_nesterov_can_be_turned_off(tmp_path):
    from excite.training.engine import make_config

    assert make_config({}).nesterov is True
    r = subprocess.run([sys.executable, "-m", "excite", "train", "--no-nesterov", "--epochs", "1", "--subset", "64",
                        "--batch-size", "32", "--out", str(tmp_path / "r"), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["nesterov"] is False


def test_a_model_spec_is_what_every_entry_point_takes(tmp_path):
    """resolve_model, bench, convert, export and the weights table take or return a ModelSpec; the keyword
    settings override its fields."""
    from excite.deploy.bench import bench
    from excite.deploy.onnx_export import export_onnx
    from excite.factory import convert

    spec = ModelSpec(arch="resnet20", attention="eca", attention_kwargs={"k_size": 5}, num_classes=7)
    model = excite.resolve_model(spec)
    assert model.excite_spec == spec and model.fc.out_features == 7
    assert model.layer1[0].attn.conv.kernel_size == (5,)
    se = excite.resolve_model(spec, attention="se", attention_kwargs={}, options={"preact": True}, input_size=40)
    assert (se.excite_spec.attention, se.excite_spec.options, se.default_input_size) == ("se", {"preact": True}, (3, 40, 40))
    assert se.excite_spec.num_classes == 7 and spec.attention == "eca"  # the caller's spec is left as it was
    assert excite.resolve_model(spec, device="meta").fc.weight.is_meta

    result = bench(spec, batch_size=1, input_size=32, runs=1, warmup=0, threads=1)
    assert result.model == "resnet20" and [v.label for v in result.variants] == ["eca"]

    ckpt = Path(__file__).parent / "reference/checkpoints/resnet20-12fca82f.th"
    info = convert(ckpt, tmp_path / "r20.safetensors", model=ModelSpec(arch="resnet20"))
    assert info["spec"] == read_model_file(info["weights"]).spec and info["spec"].num_classes == 10

    report = export_onnx(spec, str(tmp_path / "eca.onnx"), input_size=(3, 32, 32))
    assert report.input_shape == (1, 3, 32, 32) and report.max_rel_err < 1e-4

    entry = next(e for e in excite.list_weights() if e.attention == "eca")
    assert entry.spec == ModelSpec(arch=entry.model, attention="eca", attention_kwargs=entry.attention_kwargs)
