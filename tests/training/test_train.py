"""Training engine: schedule formulas, atomic checkpoints, bit-exact resume, bad input, DDP, CLI, demo."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import excite
from torch import nn

from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec
from excite.training import TrainConfig, evaluate, make_config, train
from excite.files.modelfile import load_state, save_model
from excite.training.engine import lr_at


def tiny(norm: bool = True) -> nn.Module:
    """A few-thousand-parameter CNN: fast enough to train for real steps in a test."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, stride=2, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


TINY = f"{__file__}:tiny"  # a model reference to the user's own code, as `excite train --model FILE.py:NAME`
FAILS = f"{__file__}:_Fails"


def run(tmp_path, name="run", **kw):
    cfg = dict(model=TINY, epochs=2, batch_size=128, progress=False, out=str(tmp_path / name), threads=1)
    cfg.update(kw)
    return train(TrainConfig(**cfg))


def test_lr_schedule_matches_formulas():
    cfg = TrainConfig(lr=0.2, epochs=10, warmup_epochs=1, schedule="cosine")
    spe = 10  # steps per epoch
    assert lr_at(cfg, 0, spe) == pytest.approx(0.2 / 10)  # linear warmup from lr/warm
    assert lr_at(cfg, 9, spe) == pytest.approx(0.2)
    # cosine half-way through the post-warmup steps: lr/2
    assert lr_at(cfg, 10 + 45, spe) == pytest.approx(0.1)
    assert lr_at(cfg, 10 + 30, spe) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 30 / 90)))
    step = TrainConfig(lr=0.1, epochs=100, warmup_epochs=0, schedule="step", milestones=(0.5, 0.75))
    assert [lr_at(step, s, 1) for s in (49, 50, 74, 75)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_warmup_never_takes_more_than_a_tenth_of_the_run():
    from excite.training.engine import MAX_WARMUP_FRACTION

    # The default 1-epoch warm-up in a 1-epoch run: capped to 10 of 100 steps, then cosine to ~0.
    cfg = TrainConfig(lr=0.1, epochs=1, warmup_epochs=1.0, schedule="cosine")
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert MAX_WARMUP_FRACTION == 0.1
    assert lrs[9] == pytest.approx(0.1) and lrs[0] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    # Long runs keep the warm-up asked for (1 of 10 epochs is exactly the cap).
    assert lr_at(TrainConfig(lr=0.2, epochs=30, warmup_epochs=1), 4, 10) == pytest.approx(0.2 * 5 / 10)


def test_digits_demo_setting_is_harder_and_keeps_the_whole_test_split():
    from excite.data import load_dataset
    from excite.study.demo import DEMO_TRAIN_IMAGES, _register_small_digits

    name = _register_small_digits(DEMO_TRAIN_IMAGES)
    assert _register_small_digits(DEMO_TRAIN_IMAGES) == name  # registered once
    tr, te = load_dataset(name)
    full_tr, full_te = load_dataset("digits")
    assert len(tr) == 450 and torch.equal(te.labels, full_te.labels) and len(full_tr) == 1347
    assert min(torch.bincount(tr.labels).tolist()) >= 35  # evenly spaced over a shuffled split: 38-51 a class


def save_state(path, state):
    """A training checkpoint of a small model with ``state`` as its resumable state."""
    return save_model(excite.create_model("resnet20"), path, train_state=state)


def test_state_roundtrip_with_int_keys_and_no_pickle(tmp_path):
    opt_state = {"state": {0: {"momentum_buffer": torch.randn(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    st = {"optimizer": opt_state, "step": 7, "history": [{"a": 1.5}]}
    p = save_state(tmp_path / "c.safetensors", st)
    back = load_state(p)
    assert set(back["model"]) == set(excite.create_model("resnet20").state_dict())
    assert back["step"] == 7 and back["history"] == [{"a": 1.5}]
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"], opt_state["state"][0]["momentum_buffer"])
    assert back["optimizer"]["param_groups"][0]["params"] == [0]
    assert not (tmp_path / "c.safetensors.tmp").exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    p = save_state(tmp_path / "last.safetensors", {"step": 1, "w": torch.ones(2)})

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        save_state(p, {"step": 2, "w": torch.zeros(2)})
    monkeypatch.undo()
    assert load_state(p)["step"] == 1
    assert not (tmp_path / "last.safetensors.tmp").exists()


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    p = save_state(tmp_path / "c.safetensors", {"w": torch.ones(100)})
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(ExciteError, match="not a readable safetensors file"):
        load_state(p)


@pytest.mark.parametrize("precise_bn", [0, 300])
def test_resume_is_bit_identical(tmp_path, precise_bn):
    # 1,347 digits / 128 = 10 steps per epoch; stop mid-epoch 2 (step 13), then resume.
    full = run(tmp_path, "full", precise_bn=precise_bn)
    part = run(tmp_path, "part", stop_after_steps=13, precise_bn=precise_bn)
    assert part["step"] == 13
    assert load_state(tmp_path / "part" / "last.safetensors")["step"] == 13
    resumed = run(tmp_path, "part", resume=True, precise_bn=precise_bn)
    assert resumed["step"] == full["step"] == 20
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "part" / "log.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "part" / "config.json").exists() and (tmp_path / "part" / "log.csv").exists()


def test_precise_bn_is_the_plain_average_of_the_last_epochs_batch_statistics(tmp_path):
    """Before each evaluation, every BatchNorm's statistics are the equal-weight average over the first
    batches of the epoch just trained (augmented as in training) of each batch's mean and unbiased
    variance, computed with the final weights; a BatchNorm held in eval mode keeps its own."""
    from excite.data import load_digits, normalize
    from excite.training.plan import tensor_batches

    res = run(tmp_path, precise_bn=300, epochs=2)  # 128-image batches: 3 batches reach 300 images
    model = res["model"]
    bn = model[1]
    data = load_digits()[0]
    cfg = TrainConfig(model=TINY, epochs=2, batch_size=128, precise_bn=300)
    probe = tiny()
    probe.load_state_dict(model.state_dict())
    means, variances = [], []
    with torch.no_grad():
        for _, x, _ in list(tensor_batches(data, cfg, 1, 0, 10, 0, 1))[:3]:
            h = probe[0](normalize(x, data.mean, data.std))
            means.append(h.mean((0, 2, 3)))
            variances.append(h.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and bn.num_batches_tracked == 3
    # without it the statistics are the exponential average, which differs
    plain = run(tmp_path, "plain", epochs=2)["model"][1]
    assert not torch.allclose(plain.running_mean, bn.running_mean, rtol=1e-3)


def test_precise_bn_leaves_frozen_batchnorms_alone(tmp_path):
    frozen = run(tmp_path, "frozen", epochs=2, freeze_bn_last=2)["model"][1]
    both = run(tmp_path, "both", epochs=2, freeze_bn_last=2, precise_bn=300)["model"][1]
    assert torch.equal(frozen.running_mean, both.running_mean) and torch.equal(frozen.running_var, both.running_var)


class _Fails(nn.Module):
    """Behaves like ``tiny`` until call ``at``, then returns NaN logits or raises Ctrl-C."""

    def __init__(self, at: int, what: str):
        super().__init__()
        self.net, self.at, self.what, self.calls = tiny(), at, what, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls > self.at:
                if self.what == "nan":
                    return self.net(x) * float("nan")
                raise KeyboardInterrupt
        return self.net(x)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(ExciteError, match="at step 12 "):
        run(tmp_path, model=FAILS, options={"at": 12, "what": "nan"})
    assert load_state(tmp_path / "run" / "last.safetensors")["step"] == 10  # end of epoch 1


def test_ctrl_c_checkpoints_and_resume_continues(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 4"):
        run(tmp_path, model=FAILS, options={"at": 4, "what": "ctrl-c"})
    assert load_state(tmp_path / "run" / "last.safetensors")["step"] == 4
    assert run(tmp_path, resume=True, model=FAILS, options={"at": 10**9, "what": "ctrl-c"})["step"] == 20


def test_bad_config_and_output_errors(tmp_path):
    with pytest.raises(ExciteError, match="unknown config key 'epoch'"):
        make_config({"epoch": 3})
    with pytest.raises(ExciteError, match="unknown recipe"):
        make_config({}, recipe="imagenet-v9")
    (tmp_path / "file").write_text("")
    with pytest.raises(ExciteError, match="not writable"):
        run(tmp_path, "file/sub")
    with pytest.raises(ExciteError, match="run without --resume"):
        run(tmp_path, "fresh", resume=True)


def test_a_model_spec_is_a_training_config_model():
    spec = ModelSpec("resnet20", attention="se", attention_kwargs={"reduction": 8}, options={"shortcut": "identity"})
    cfg = make_config({"model": spec, "epochs": 1})
    assert (cfg.model, cfg.attention, cfg.attention_kwargs, cfg.options) == (
        "resnet20", "se", {"reduction": 8}, {"shortcut": "identity"})
    assert cfg.spec == spec  # the flat fields give the same spec back
    with pytest.raises(ExciteError, match="attention is set twice"):
        make_config({"model": spec, "attention": "eca"})
    with pytest.raises(ExciteError, match="also sets input_size"):
        TrainConfig(model=ModelSpec("resnet20", input_size=(3, 64, 64)))


def test_evaluate_confusion_matrix_by_hand():
    from excite.data import TensorData

    class Const(nn.Module):
        def forward(self, x):  # always predicts class 2, second choice class 1
            out = torch.zeros(len(x), 3)
            out[:, 2], out[:, 1] = 2.0, 1.0
            return out

    data = TensorData(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1, 2, 2, 2]), 3, (0.5,) * 3, (0.2,) * 3)
    m = evaluate(Const(), data, batch_size=4)
    assert m["top1"] == pytest.approx(50.0)
    assert m["confusion"] == [[0, 0, 1], [0, 0, 2], [0, 0, 3]]
    assert m["per_class"] == pytest.approx([0.0, 0.0, 100.0])
    assert m["top5"] == pytest.approx(100.0)  # 3 classes: top-5 covers all


def test_recipes_state_their_source():
    from excite.training.recipes import RECIPES

    assert RECIPES["resnet-cifar"]["lr"] == 0.1 and RECIPES["resnet-cifar"]["batch_size"] == 128
    assert RECIPES["resnet-cifar"]["weight_decay"] == 1e-4  # He et al. 2016, Sec. 4.2
    for r in RECIPES.values():
        assert r["source"]
        make_config({}, recipe=next(k for k, v in RECIPES.items() if v is r))


_DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    from excite.training import TrainConfig, train

    def tiny():  # no BatchNorm: per-rank batch statistics would differ from one global batch
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                             nn.Flatten(), nn.Linear(64, 10))

    if __name__ == "__main__":  # the model reference below imports this file again
        r = train(TrainConfig(model=f"{__file__}:tiny", epochs=1, batch_size=128, progress=False, threads=1,
                              label_smoothing=0.0))
        rank = int(os.environ.get("RANK", "0"))  # the process group is gone once train() returns
        torch.save(r["model"].state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
""")


def test_ddp_two_processes_match_single_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    single = tmp_path / "single"
    single.mkdir()
    p = subprocess.run([sys.executable, str(script), str(single)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r0, r1, s = (torch.load(f, weights_only=True) for f in (tmp_path / "rank0.pt", tmp_path / "rank1.pt", single / "rank0.pt"))
    for k in s:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the ranks identical
        torch.testing.assert_close(r0[k], s[k], rtol=1e-4, atol=1e-5)  # same global batch as one process


def test_cli_train_eval_and_unknown_config_key(tmp_path, capsys):
    from excite.cli import main

    assert main(["train", "--model", "resnet20", "--epochs", "1", "--stop-after-steps", "1", "--batch-size", "32",
                 "--threads", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert (tmp_path / "r" / "last.safetensors").exists()
    assert main(["eval", str(tmp_path / "r" / "last.safetensors")]) == 0
    assert "top-1" in capsys.readouterr().out
    (tmp_path / "run.toml").write_text("epochs = 1\nbatchsize = 8\n")
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 2
    assert "unknown config key 'batchsize'; did you mean batch_size" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2


def test_demo_aggregates_runs_and_writes_csv_and_plot(tmp_path, monkeypatch, capsys):
    import csv
    import statistics

    from excite.study import demo as demo_mod

    fake = {0: 90.0, 1: 94.0, 2: 95.0}
    monkeypatch.setattr(demo_mod, "train", lambda cfg: {"top1": fake[cfg.seed] + (cfg.attention == "eca"), "top5": 100.0,
                                                      "img_per_s": 100.0 + cfg.seed})
    rows = demo_mod.demo(tmp_path, epochs=1, seeds=(0, 1, 2), attentions=("none", "eca"), progress=False)
    assert rows[1]["top1_mean"] == pytest.approx(statistics.fmean([91.0, 95.0, 96.0]))
    # ECA is exactly 1 point better on every seed: no spread, so the paired test cannot run.
    assert rows[1]["delta_vs_none"] == pytest.approx(1.0) and math.isnan(rows[1]["p_paired"])
    assert rows[1]["separated"].startswith("no (cannot test")
    assert rows[0]["top1_std"] == pytest.approx(statistics.stdev(fake.values()))
    assert rows[1]["params"] > rows[0]["params"]  # ECA adds its 1-D conv kernels
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "+-" in capsys.readouterr().out


def test_cli_imagefolder_streams_one_epoch_and_names_bad_images(tmp_path, capsys):
    from test_data import make_imagefolder

    from excite.cli import main

    root = make_imagefolder(tmp_path / "data", n=3)
    args = ["train", "--model", "resnet20", "--dataset", "imagefolder", "--data-root", str(root), "--image-size", "32",
            "--epochs", "1", "--batch-size", "4", "--workers", "1", "--threads", "1", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "r")]) == 0
    assert "on imagefolder: top-1" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]  # 6 images, global batch 4: one step, then eval on 6 val images
    assert json.loads((tmp_path / "r" / "config.json").read_text())["image_size"] == 32
    assert load_state(tmp_path / "r" / "last.safetensors")["step"] == 1
    (root / "train" / "cat" / "zz-broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(args + ["--batch-size", "7", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot read image" in err and "zz-broken.jpg" in err
    assert main(args + ["--batch-size", "7", "--skip-bad-images", "--out", str(tmp_path / "skip")]) == 0
    assert "1 unreadable image reads skipped" in capsys.readouterr().out


def test_imagefolder_resume_is_bit_identical_across_worker_counts(tmp_path):
    from test_data import make_imagefolder

    root = make_imagefolder(tmp_path / "data", n=4)  # 8 training images, batch 4: 2 steps per epoch
    kw = dict(dataset="imagefolder", data=str(root), image_size=16, batch_size=4, epochs=2)
    full = run(tmp_path, "full", workers=0, **kw)
    run(tmp_path, "part", workers=2, stop_after_steps=3, **kw)
    resumed = run(tmp_path, "part", workers=1, resume=True, **kw)
    assert resumed["step"] == full["step"] == 4
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # crops depend on (seed, epoch, index), not on workers


def test_cli_download_cifar_checks_md5(tmp_path, monkeypatch, capsys):
    import hashlib

    from test_data import make_cifar

    from excite.cli import main
    from excite.data import download

    archive, _, _ = make_cifar(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    base = ["train", "--dataset", "cifar10", "--download", "--data", str(tmp_path / "dl"), "--model", "resnet20",
            "--batch-size", "8", "--stop-after-steps", "1", "--threads", "1", "--no-progress"]
    monkeypatch.setitem(download.CIFAR_ARCHIVES, "cifar10", (archive.as_uri(), "f" * 32))
    assert main(base) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "dl" / archive.name).exists()
    monkeypatch.setitem(download.CIFAR_ARCHIVES, "cifar10", (archive.as_uri(), md5))
    assert main(base) == 0
    assert (tmp_path / "dl" / archive.name).read_bytes() == archive.read_bytes()
    assert main(["train", "--dataset", "digits", "--download", "--no-progress"]) == 2
    assert "--download works for cifar10, cifar100" in capsys.readouterr().err


def test_tensorboard_is_optional(tmp_path, capsys):
    import importlib.util

    from excite.cli import main

    args = ["train", "--model", "resnet20", "--batch-size", "32", "--stop-after-steps", "1", "--threads", "1",
            "--no-progress", "--tensorboard"]
    if importlib.util.find_spec("tensorboard") is None:
        assert main(args + ["--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert "'tensorboard' package" in err and "pip install tensorboard" in err and "\n" not in err
    else:
        assert main(args + ["--epochs", "1", "--stop-after-steps", "0", "--out", str(tmp_path / "r")]) == 0
        assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert main(args) == 2
    assert "--tensorboard needs --out" in capsys.readouterr().err


def test_torchrun_cli_two_processes_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "excite",
           "train", "--model", "resnet20", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
           "--subset", "192", "--threads", "1", "--no-progress", "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("resnet20 attention=None on digits: top-1") == 1  # rank 0 prints, rank 1 does not
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 192 // 64  # one epoch, logged once
    st = load_state(out / "last.safetensors")
    assert st["step"] == 3 and st["config"]["batch_size"] == 64 and st["config"]["subset"] == 192
    assert (out / "best.safetensors").exists() and (out / "metrics.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "config.json", "last.safetensors",
                                                     "log.csv", "log.jsonl", "metrics.json"]


def test_eval_and_inspect_refuse_a_model_of_other_channels_in_one_line(tmp_path, capsys, monkeypatch):
    from excite.cli import main

    monkeypatch.chdir(tmp_path)
    excite.save_model(excite.create_model("resnet20", in_chans=1), "gray.safetensors")
    for cmd in (["eval", "gray.safetensors"], ["inspect", "gray.safetensors", "--out", "insp"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert err == "excite: error: gray.safetensors takes 1-channel inputs but the dataset's images have 3"
    assert not (tmp_path / "insp").exists()
