"""The fast recipe's parts, each checked on tiny digits runs: EMA, flip TTA, one-cycle over a time
budget, the config record, Ctrl-C from a real signal, and a study with the recipe."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from excite.data import TensorData, load_dataset, normalize
from excite.files.modelfile import load_state
from excite.training import TrainConfig, evaluate, get_recipe, make_config, train
from excite.training.plan import lr_at, subset


def tiny() -> nn.Module:
    """A few-thousand-parameter CNN with BatchNorm (so the EMA averages buffers too)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 10))


class Slow(nn.Module):
    """``tiny`` that sleeps in each training forward: a run long enough to be interrupted."""

    def __init__(self, seconds: float = 0.02):
        super().__init__()
        self.net, self.seconds = tiny(), seconds

    def forward(self, x):
        if self.training:
            time.sleep(self.seconds)
        return self.net(x)


TINY, SLOW = f"{__file__}:tiny", f"{__file__}:Slow"
FAST = dict(recipe="fashion-mnist-fast", model=TINY, dataset="digits", batch_size=64, epochs=1, threads=1,
            progress=False, time_budget=0.0)


def test_recipe_options_are_recorded_in_the_run_config(tmp_path):
    r = train(make_config(dict(FAST, out=str(tmp_path / "r"), subset=128, epochs=2)))
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    for key, value in get_recipe("fashion-mnist-fast").items():
        if key not in FAST:
            assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["recipe"] == "fashion-mnist-fast" and cfg["schedule"] == "onecycle" and cfg["ema_decay"] > 0
    # eval_every = 0: one evaluation, at the end; digits are not mirrored, so no flip TTA there
    assert [h["epoch"] for h in r["history"]] == [2] and r["ema"] and not r["tta"]
    assert r["history"][-1]["lr"] == 0.0  # one-cycle ends at exactly 0


def test_ema_weights_differ_from_raw_and_are_what_is_evaluated(tmp_path):
    r = train(make_config(dict(FAST, out=str(tmp_path / "r"), subset=256)))
    st = load_state(tmp_path / "r" / "last.safetensors")
    raw, ema = st["model"], st["ema"]
    assert set(raw) == set(ema) and int(st["ema_updates"]) == 4  # 256 / 64 steps
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    assert not torch.equal(raw["1.running_mean"], ema["1.running_mean"])  # buffers are averaged too
    returned = r["model"].state_dict()
    assert all(torch.equal(returned[k], ema[k]) for k in ema)  # eval_ema: the run's model is the EMA
    test = subset(load_dataset("digits")[1], 256)  # the run's test split
    assert evaluate(r["model"], test)["top1"] == pytest.approx(r["top1"])
    from excite.training.state import ema_decay_at

    # the warm-up: an early average follows the weights closely, a late one at the decay asked for
    assert ema_decay_at(0.99, 0) == pytest.approx(0.1) and ema_decay_at(0.99, 10**6) == 0.99


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    data = TensorData(images, torch.randint(0, 3, (40,)), 3, (0.5,) * 3, (0.25,) * 3)
    model(normalize(images[:1], data.mean, data.std))  # materialise the lazy layer
    with torch.no_grad():
        x = normalize(images, data.mean, data.std)
        plain, mirrored = model.eval()(x), model(x.flip(3))
    for tta, logits in ((False, plain), (True, (plain + mirrored) / 2)):
        expected = (logits.argmax(1) == data.labels).float().mean().item() * 100
        assert evaluate(model, data, batch_size=16, tta_flip=tta)["top1"] == pytest.approx(expected)
    assert not torch.equal(plain.argmax(1), ((plain + mirrored) / 2).argmax(1))  # TTA changed predictions


def test_time_budget_stops_early_and_the_schedule_ends_at_its_final_lr(tmp_path):
    r = train(make_config(dict(FAST, model=SLOW, epochs=50, time_budget=0.02, out=str(tmp_path / "r"))))
    cap = 50 * (1347 // 64)
    assert r["step"] < cap and r["step"] == r["planned_steps"]  # the budget, not the epochs, ended it
    assert r["history"][-1]["lr"] == 0.0 and r["history"][-1]["step"] == r["step"]
    assert r["seconds"] < 60
    cfg = TrainConfig(schedule="onecycle", warmup_fraction=0.2, lr=0.4, epochs=1)
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert lrs[19] == pytest.approx(0.4) and lrs[0] == pytest.approx(0.02) and lrs[-1] == 0.0
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:]))  # linear down after the peak


def test_the_budget_keeps_back_the_final_evaluation_and_a_reserve():
    from excite.training.plan import Budget

    cfg = TrainConfig(time_budget=30.0, epochs=40, batch_size=128, tta_flip=True)
    budget = Budget(cfg, steps_per_epoch=468, eval_images=10_000)
    # 8 steps/s measured over 800 s of a 1800 s budget: 1782 s usable, minus 10,000 x 2 x 0.5 / 128 steps
    planned = budget.plan(step=6400, elapsed=800.0, steps_timed=6400, seconds_timed=800.0, planned=0)
    assert planned == 6400 + math.floor((1800 * 0.99 - 800) * 8 - 20_000 * 0.5 / 128)
    assert budget.plan(step=6400, elapsed=1799.0, steps_timed=6400, seconds_timed=800.0, planned=0) == 6401
    assert Budget(TrainConfig(time_budget=0.0, epochs=2), 468, 10_000).plan(0, 0.0, 0, 0.0, 0) == 936


def _cli(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "excite", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kw)


def test_cli_bad_time_budget_is_one_line_and_writes_nothing(tmp_path):
    p = _cli(["train", "--recipe", "fashion-mnist-fast", "--time-budget", "-1", "--out", "bad"], tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("excite: error: time_budget=-1") and p.stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_sigint_checkpoints_exits_130_and_resume_is_bit_identical(tmp_path):
    """A real SIGINT to ``excite train --recipe fashion-mnist-fast``; resuming (``--resume`` is tested
    from the command line in test_faults) then ends where a run that was never interrupted ends: the
    same weights and the same EMA, bit for bit."""
    run = dict(model=SLOW, subset=256, batch_size=32, epochs=4, eval_every=1)
    args = ["train", "--recipe", "fashion-mnist-fast", "--time-budget", "0", "--model", SLOW, "--subset", "256",
            "--batch-size", "32", "--epochs", "4", "--eval-every", "1", "--threads", "1", "--no-progress", "--out", "r"]
    proc = subprocess.Popen([sys.executable, "-m", "excite", *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "r" / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # config.json is written just before the first step
    time.sleep(0.3)  # 32 steps of at least 0.02 s: well inside the run
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert err.startswith("excite: interrupted at step ") and "continue with --resume" in err
    assert 0 < load_state(tmp_path / "r" / "last.safetensors")["step"] < 32
    resumed = train(make_config(dict(FAST, **run, out=str(tmp_path / "r"), resume=True)))
    full = train(make_config(dict(FAST, **run, out=str(tmp_path / "full"))))
    a, b = load_state(tmp_path / "r" / "last.safetensors"), load_state(tmp_path / "full" / "last.safetensors")
    assert a["step"] == b["step"] == 32
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), part
    assert [(h["epoch"], h["top1"], h["loss"]) for h in a["history"]] == [(h["epoch"], h["top1"], h["loss"])
                                                                          for h in b["history"]]
    assert full["top1"] == resumed["top1"] == json.loads((tmp_path / "r" / "metrics.json").read_text())["top1"]


def test_study_runs_with_the_fast_recipe(tmp_path, capsys):
    from excite.cli import main

    (tmp_path / "s.toml").write_text(
        'name = "fast"\nseeds = [0]\nrecipe = {name = "fashion-mnist-fast", epochs = 1, subset = 64, '
        'batch_size = 32, threads = 1, time_budget = 0.0}\n[[variant]]\nlabel = "none"\n')
    assert main(["study", "run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "st")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "[1/1]" in err


def test_results_page_is_generated_from_the_committed_files():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results_page.py"
    spec = importlib.util.spec_from_file_location("results_page", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, "docs/results.md is out of date: python benchmarks/results_page.py"
