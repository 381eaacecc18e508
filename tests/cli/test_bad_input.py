"""A sweep of bad input over every command: each case exits 2 with exactly one line on stderr, no
traceback, and writes nothing (the working folder's tree is the same before and after).

Run in-process (``excite.cli.main``) for speed; the cases that need a fresh process (a crash would
take pytest down) run through ``subprocess``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import excite
from excite.cli import main
from excite.core.errors import ExciteError

BAD_NET = "import torch\nraise RuntimeError('broken on purpose')\n"
NOT_A_MODULE = "def make():\n    return 3\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Files the cases point at, outside the working folder: a trained model file and broken files."""
    d = tmp_path_factory.mktemp("assets")
    out = d / "run"
    excite.train(model="resnet20", attention="eca", dataset="digits", subset=64, batch_size=32, epochs=1,
                 out=str(out), progress=False, threads=1)
    best = out / "best.safetensors"
    # the same header with one tensor of another shape: "checkpoint whose shapes do not fit the model"
    tensors = load_file(str(best))
    from safetensors import safe_open

    with safe_open(str(best), framework="pt") as f:
        meta = f.metadata()
    tensors["fc.weight"] = torch.zeros(10, 32)
    save_file(tensors, str(d / "wrong_shape.safetensors"), metadata=meta)
    # a model file of a model with attention attached (attaching again must say so)
    assert main(["attach", "resnet20", "se", "--out", str(d / "attached.safetensors")]) == 0
    (d / "bad_net.py").write_text(BAD_NET)
    (d / "not_module.py").write_text(NOT_A_MODULE)
    (d / "random.pth").write_bytes(os.urandom(4096))
    (d / "image.pth").write_bytes(PNG)
    (d / "x.pth").write_bytes(b"PK\x03\x04" + os.urandom(200))
    (d / "empty.pth").write_bytes(b"")
    np.save(d / "calib_shape.npy", np.zeros((4, 3, 8), dtype=np.float32))
    np.save(d / "calib_objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "calib_int.npy", np.zeros((4, 3, 32, 32), dtype=np.int64))
    # an image folder with an empty class folder
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (d / "imgs" / split / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(d / "imgs" / split / "cat" / f"{i}.png")
            if split == "val":
                Image.new("RGB", (16, 16), (0, i * 40, 0)).save(d / "imgs" / split / "dog" / f"{i}.png")
    return d


def study(body: str) -> dict:
    return {"s.toml": body}


V = '[[variant]]\nlabel = "none"\n'
TOY = 'recipe = {toy_epochs = 1}\n'

# (id, argv, files to create in the working folder first). {A} is the assets folder.
CASES = [
    # -- train: every option's range, and names that are close to valid ones
    ("train-schedule-typo", ["train", "--schedule", "cosin", "--out", "o"], {}),
    ("train-epochs-0", ["train", "--epochs", "0", "--out", "o"], {}),
    ("train-epochs-neg", ["train", "--epochs", "-1", "--out", "o"], {}),
    ("train-batch-neg", ["train", "--batch-size", "-4", "--out", "o"], {}),
    ("train-batch-0", ["train", "--batch-size", "0", "--out", "o"], {}),
    ("train-lr-neg", ["train", "--lr", "-0.1", "--out", "o"], {}),
    ("train-lr-nan", ["train", "--lr", "nan", "--out", "o"], {}),
    ("train-lr-inf", ["train", "--lr", "inf", "--out", "o"], {}),
    ("train-momentum-neg", ["train", "--momentum", "-1", "--out", "o"], {}),
    ("train-label-smoothing-2", ["train", "--label-smoothing", "2", "--out", "o"], {}),
    ("train-weight-decay-neg", ["train", "--weight-decay", "-1", "--out", "o"], {}),
    ("train-ema-1.5", ["train", "--ema-decay", "1.5", "--out", "o"], {}),
    ("train-warmup-neg", ["train", "--warmup-epochs", "-1", "--out", "o"], {}),
    ("train-grad-clip-neg", ["train", "--grad-clip", "-1", "--out", "o"], {}),
    ("train-stop-after-neg", ["train", "--stop-after-steps", "-1", "--out", "o"], {}),
    ("train-threads-neg", ["train", "--threads", "-1", "--out", "o"], {}),
    ("train-threads-huge", ["train", "--threads", "100000", "--out", "o"], {}),
    ("train-seed-huge", ["train", "--seed", "99999999999999999999", "--out", "o"], {}),
    ("train-subset-neg", ["train", "--subset", "-5", "--out", "o"], {}),
    ("train-image-size-0", ["train", "--image-size", "0", "--out", "o"], {}),
    ("train-workers-neg", ["train", "--workers", "-1", "--out", "o"], {}),
    ("train-checkpoint-every-neg", ["train", "--checkpoint-every", "-1", "--out", "o"], {}),
    ("train-device-cuda", ["train", "--device", "cuda", "--out", "o"], {}),
    ("train-device-tpu", ["train", "--device", "tpu", "--out", "o"], {}),
    ("train-optimizer-typo", ["train", "--optimizer", "adam", "--out", "o"], {}),
    ("train-dataset-typo", ["train", "--dataset", "digit", "--out", "o"], {}),
    ("train-recipe-typo", ["train", "--recipe", "resnet-cifa", "--out", "o"], {}),
    ("train-model-typo", ["train", "--model", "resnet21", "--out", "o"], {}),
    ("train-attention-typo", ["train", "--attention", "ecca", "--out", "o"], {}),
    ("train-attention-kwargs-bad", ["train", "--attention", "eca", "--attention-kwargs", "k_size=0",
                                    "--out", "o", "--epochs", "1", "--subset", "64"], {}),
    ("train-attention-kwargs-unknown", ["train", "--attention", "eca", "--attention-kwargs", "bogus=1",
                                       "--out", "o", "--epochs", "1", "--subset", "64"], {}),
    ("train-model-option-unknown", ["train", "-O", "bogus=1", "--out", "o", "--epochs", "1", "--subset", "64"], {}),
    ("train-batch-over-data", ["train", "--batch-size", "100000", "--out", "o"], {}),
    ("train-resume-nothing", ["train", "--resume", "--out", "o"], {}),
    ("train-config-string", ["train", "--config", "c.toml", "--out", "o"], {"c.toml": 'lr = "fast"\n'}),
    ("train-config-float-batch", ["train", "--config", "c.toml", "--out", "o"], {"c.toml": "batch_size = 32.5\n"}),
    ("train-config-unknown-key", ["train", "--config", "c.toml", "--out", "o"], {"c.toml": "epoch = 3\n"}),
    ("train-config-invalid", ["train", "--config", "c.toml", "--out", "o"], {"c.toml": "lr = = 3\n"}),
    ("train-config-missing", ["train", "--config", "nope.toml", "--out", "o"], {}),
    ("train-config-folder", ["train", "--config", "cfgdir", "--out", "o"], {"cfgdir/x": ""}),
    ("train-out-is-file", ["train", "--out", "f", "--epochs", "1", "--subset", "64"], {"f": "x"}),
    ("train-empty-class-folder", ["train", "--dataset", "imagefolder", "--data", "{A}/imgs", "--out", "o",
                                  "--epochs", "1", "--batch-size", "1", "--image-size", "16", "--workers", "0"], {}),
    ("train-data-missing", ["train", "--dataset", "imagefolder", "--data", "nowhere", "--out", "o"], {}),
    ("train-input-size", ["train", "--input-size", "32", "--out", "o"], {}),
    ("train-bad-user-file", ["train", "--model", "{A}/bad_net.py:Net", "--out", "o", "--subset", "64"], {}),
    ("train-lr-string", ["train", "--lr", "fast"], {}),
    ("train-over-existing-run", ["train", "--out", "o", "--epochs", "1", "--subset", "64"],
     {"o/last.safetensors": "{A}/run/last.safetensors"}),
    ("train-resume-other-model", ["train", "--resume", "--out", "o", "--attention", "se", "--subset", "64"],
     {"o/last.safetensors": "{A}/run/last.safetensors"}),
    # -- eval
    ("eval-folder", ["eval", "{A}/run"], {}),
    ("eval-random-pth", ["eval", "{A}/x.pth"], {}),
    ("eval-png-pth", ["eval", "{A}/image.pth"], {}),
    ("eval-wrong-shapes", ["eval", "{A}/wrong_shape.safetensors"], {}),
    ("eval-missing", ["eval", "nope.safetensors"], {}),
    ("eval-device-tpu", ["eval", "{A}/run/best.safetensors", "--device", "tpu"], {}),
    ("eval-dataset-typo", ["eval", "{A}/run/best.safetensors", "--dataset", "cifar"], {}),
    ("eval-classes-differ", ["eval", "resnet20", "--num-classes", "7"], {}),
    ("eval-model-typo", ["eval", "resnet5"], {}),
    # -- demo
    ("demo-epochs-0", ["demo", "--epochs", "0", "--out", "o"], {}),
    ("demo-epochs-neg", ["demo", "--epochs", "-3", "--out", "o"], {}),
    ("demo-seeds-0", ["demo", "--seeds", "0", "--out", "o"], {}),
    # -- list / profile / explain / paper-table
    ("list-typo", ["list", "modelz"], {}),
    ("profile-input-0", ["profile", "resnet20", "--input-size", "0"], {}),
    ("profile-input-1", ["profile", "resnet20", "--input-size", "1"], {}),
    ("profile-input-abc", ["profile", "resnet20", "--input-size", "abc"], {}),
    ("profile-depth-neg", ["profile", "resnet20", "--depth", "-1"], {}),
    ("profile-batch-0", ["profile", "resnet20", "--batch-size", "0"], {}),
    ("profile-model-typo", ["profile", "resnet5"], {}),
    ("profile-attention-typo", ["profile", "resnet20", "--attention", "ecca"], {}),
    ("profile-attention-kw-bad", ["profile", "resnet20", "--attention", "eca", "--attention-kwargs", "k_size=-3"], {}),
    ("profile-attention-kw-notkv", ["profile", "resnet20", "--attention-kwargs", "k_size"], {}),
    ("profile-user-file-fails", ["profile", "{A}/bad_net.py:Net"], {}),
    ("profile-user-file-missing", ["profile", "missing.py:Net"], {}),
    ("profile-user-not-module", ["profile", "{A}/not_module.py:make"], {}),
    ("profile-user-no-attr", ["profile", "{A}/not_module.py:Nope"], {}),
    ("profile-num-classes-neg", ["profile", "resnet20", "--num-classes", "-1"], {}),
    ("profile-convention-typo", ["profile", "resnet20", "--convention", "paperz"], {}),
    ("explain-input-0", ["explain", "resnet20", "--input-size", "0"], {}),
    ("explain-model-typo", ["explain", "resnet5"], {}),
    ("paper-table-typo", ["paper-table", "resnett"], {}),
    # -- bench
    ("bench-warmup-neg", ["bench", "resnet20", "--warmup", "-1"], {}),
    ("bench-threads-huge", ["bench", "resnet20", "--threads", "100000"], {}),
    ("bench-threads-0", ["bench", "resnet20", "--threads", "0"], {}),
    ("bench-runs-0", ["bench", "resnet20", "--runs", "0"], {}),
    ("bench-input-0", ["bench", "resnet20", "--input-size", "0"], {}),
    ("bench-input-4", ["bench", "resnet20", "--input-size", "4"], {}),
    ("bench-model-typo", ["bench", "resnet5"], {}),
    # -- export onnx
    ("export-input-0", ["export", "onnx", "resnet20", "m.onnx", "--input-size", "0"], {}),
    ("export-batch-0", ["export", "onnx", "resnet20", "m.onnx", "--batch-size", "0"], {}),
    ("export-num-eval-0", ["export", "onnx", "resnet20", "m.onnx", "--int8", "--num-eval", "0"], {}),
    ("export-not-onnx", ["export", "onnx", "resnet20", "m.txt"], {}),
    ("export-calib-txt", ["export", "onnx", "resnet20", "m.onnx", "--int8", "--calibration", "c.txt"], {}),
    ("export-calib-shape", ["export", "onnx", "resnet20", "out/m.onnx", "--int8", "--calibration",
                            "{A}/calib_shape.npy"], {}),
    ("export-calib-objects", ["export", "onnx", "resnet20", "out/m.onnx", "--int8", "--calibration",
                              "{A}/calib_objects.npy"], {}),
    ("export-calib-missing", ["export", "onnx", "resnet20", "out/m.onnx", "--int8", "--calibration", "no.npy"], {}),
    ("export-out-is-folder", ["export", "onnx", "resnet20", "d.onnx"], {"d.onnx/x": ""}),
    # -- convert
    ("convert-empty", ["convert", "{A}/empty.pth", "out.safetensors", "--model", "resnet20"], {}),
    ("convert-random", ["convert", "{A}/random.pth", "out.safetensors", "--model", "resnet20"], {}),
    ("convert-png", ["convert", "{A}/image.pth", "out.safetensors", "--model", "resnet20"], {}),
    ("convert-under-a-file", ["convert", "{A}/run/best.safetensors", "f/sub/out.safetensors",
                              "--model", "resnet20", "--attention", "eca"], {"f": "x"}),
    ("convert-missing-src", ["convert", "nope.pth", "out.safetensors", "--model", "resnet20"], {}),
    ("convert-model-typo", ["convert", "{A}/random.pth", "out.safetensors", "--model", "resnet5"], {}),
    ("convert-num-classes-neg", ["convert", "{A}/random.pth", "out.safetensors", "--model", "resnet20",
                                 "--num-classes", "-2"], {}),
    ("convert-wrong-model", ["convert", "{A}/run/best.safetensors", "out.safetensors", "--model", "resnet50"], {}),
    # -- attach
    ("attach-input-abc", ["attach", "resnet20", "se", "--input-size", "abc"], {}),
    ("attach-input-0x0", ["attach", "resnet20", "se", "--input-size", "0x0"], {}),
    ("attach-input-4d", ["attach", "resnet20", "se", "--input-size", "1x2x3x4"], {}),
    ("attach-attention-typo", ["attach", "resnet20", "sse"], {}),
    ("attach-where-nomatch", ["attach", "resnet20", "se", "--where", "nothing*"], {}),
    ("attach-out-suffix", ["attach", "resnet20", "se", "--out", "m.pt"], {}),
    ("attach-bad-user-file", ["attach", "{A}/bad_net.py:Net", "se"], {}),
    ("attach-kw-bad", ["attach", "resnet20", "eca", "--attention-kwargs", "k_size=0"], {}),
    # -- study run / report, inspect
    ("study-seeds-strings", ["study", "run", "s.toml", "--out", "o"], study('seeds = ["a"]\n' + V)),
    ("study-models-int", ["study", "run", "s.toml", "--out", "o"], study("models = 3\n" + V)),
    ("study-label-number", ["study", "run", "s.toml", "--out", "o"], study('[[variant]]\nlabel = 3\n')),
    ("study-attention-kwargs-bad", ["study", "run", "s.toml", "--out", "o"],
     study('[[variant]]\nlabel = "a"\nattention = "eca"\nattention_kwargs = "k_size=3"\n')),
    ("study-attention-kwargs-value", ["study", "run", "s.toml", "--out", "o"],
     study('[[variant]]\nlabel = "a"\nattention = "eca"\nattention_kwargs = {k_size = 0}\n')),
    ("study-attention-typo", ["study", "run", "s.toml", "--out", "o"],
     study('[[variant]]\nlabel = "a"\nattention = "ecca"\n')),
    ("study-model-typo", ["study", "run", "s.toml", "--out", "o"], study('models = ["resnet5"]\n' + V)),
    ("study-dataset-typo", ["study", "run", "s.toml", "--out", "o"], study('dataset = "digit"\n' + V)),
    ("study-recipe-bad-value", ["study", "run", "s.toml", "--out", "o"], study("recipe = {lr = -1}\n" + V)),
    ("study-recipe-unknown-key", ["study", "run", "s.toml", "--out", "o"], study("recipe = {lrr = 1}\n" + V)),
    ("study-recipe-name-typo", ["study", "run", "s.toml", "--out", "o"], study('recipe = "resnet-cifa"\n' + V)),
    ("study-seeds-negative", ["study", "run", "s.toml", "--out", "o"], study("seeds = [-1]\n" + V)),
    ("study-seeds-zero", ["study", "run", "s.toml", "--out", "o"], study("seeds = 0\n" + V)),
    ("study-published-string", ["study", "run", "s.toml", "--out", "o"],
     study('[[variant]]\nlabel = "a"\npublished = "high"\n')),
    ("study-baseline-typo", ["study", "run", "s.toml", "--out", "o"], study('baseline = "nonee"\n' + V)),
    ("study-name-int", ["study", "run", "s.toml", "--out", "o"], study("name = 5\n" + V)),
    ("study-variant-not-table", ["study", "run", "s.toml", "--out", "o"], study('variant = ["a"]\n')),
    ("study-unknown-key", ["study", "run", "s.toml", "--out", "o"], study("seed = 3\n" + V)),
    ("study-invalid-toml", ["study", "run", "s.toml", "--out", "o"], study("[[variant\n")),
    ("study-missing-file", ["study", "run", "nope.toml", "--out", "o"], {}),
    ("study-builtin-typo", ["study", "run", "eca-tabel2", "--out", "o"], {}),
    ("study-seeds-flag", ["study", "run", "eca-table2", "--seeds", "a,b", "--out", "o"], {}),
    ("study-jobs-0", ["study", "run", "eca-table2", "--jobs", "0", "--out", "o"], {}),
    ("study-models-flag-typo", ["study", "run", "eca-table2", "--models", "resnet5", "--out", "o"], {}),
    ("study-dataset-flag-typo", ["study", "run", "eca-table2", "--dataset", "digit", "--out", "o"], {}),
    ("study-recipe-flag-typo", ["study", "run", "eca-table2", "--recipe", "nope", "--out", "o"], {}),
    ("study-trainer-missing", ["study", "run", "s.toml", "--trainer", "no_such_mod:fn", "--out", "o"], study(V)),
    ("study-trainer-not-callable", ["study", "run", "s.toml", "--trainer", "excite.study.runner:RUNS_DIR",
                                    "--out", "o"], study(V)),
    ("study-out-is-file", ["study", "run", "s.toml", "--out", "f"], {**study(TOY + V), "f": "x"}),
    ("report-out-file", ["study", "report", "sd", "--out", "f"], {"f": "x", "sd/x": ""}),
    ("report-missing", ["study", "report", "nowhere"], {}),
    ("report-not-study", ["study", "report", "sd"], {"sd/x": ""}),
    ("inspect-out-file", ["inspect", "{A}/run/best.safetensors", "--out", "f"], {"f": "x"}),
    ("inspect-limit-0", ["inspect", "{A}/run/best.safetensors", "--limit", "0", "--out", "i"], {}),
    ("inspect-missing", ["inspect", "nope.safetensors", "--out", "i"], {}),
    ("inspect-dataset-typo", ["inspect", "{A}/run/best.safetensors", "--dataset", "digit", "--out", "i"], {}),
    ("inspect-no-attention", ["inspect", "resnet20", "--attention", "none", "--out", "i"], {}),
    # -- the top level
    ("no-such-command", ["trian"], {}),
    ("no-command", [], {}),
]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0) for p in root.rglob("*")}


def _write(root: Path, files: dict, assets: Path | None = None) -> None:
    """Create ``files`` under ``root``: text, or a copy of an asset (``{A}/path``)."""
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("{A}/"):
            shutil.copyfile(content.replace("{A}", str(assets)), p)
        else:
            p.write_text(content)


class StillRunning(Exception):
    """A bad input was accepted: the command is still working after the time limit."""


def _alarm(signum, frame):
    raise StillRunning("the command accepted the input and is still running")


def run_main(argv, limit: int = 600) -> int:
    # A rejected input fails in well under a second (plus imports); a silently accepted one would
    # train or benchmark for minutes, so a time limit turns it into a failure instead of a hang.
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code if isinstance(e.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_one_line_error(argv, capsys, root: Path, files: dict | None = None, assets: Path | None = None) -> str:
    """Run ``argv`` in ``root``; assert exit 2, one line on stderr, no traceback, nothing written."""
    _write(root, files or {}, assets)
    capsys.readouterr()
    before = _tree(root)
    rc = run_main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert _tree(root) == before, "files were written"
    return lines[0]


@pytest.mark.parametrize("argv,files", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, files, assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    argv = [a.replace("{A}", str(assets)) for a in argv]
    check_one_line_error(argv, capsys, tmp_path, files, assets)


# What some of the messages must name (the real problem, and what is valid).
MESSAGES = {
    "train-schedule-typo": "did you mean cosine",
    "train-optimizer-typo": "adamw",
    "train-epochs-0": "epochs",
    "train-subset-neg": "subset",
    "train-config-float-batch": "batch_size=32.5",
    "train-image-size-0": "image_size",
    "train-threads-huge": "threads",
    "train-resume-nothing": "run without --resume",
    "train-empty-class-folder": "dog",
    "eval-folder": "is a folder",
    "eval-random-pth": "not a readable",
    "eval-png-pth": "not a readable",
    "bench-threads-huge": "100000",
    "profile-input-1": "8",
    "demo-epochs-0": "0",
    "study-seeds-strings": "seeds",
    "study-models-int": "models",
    "study-label-number": "label",
    "study-recipe-bad-value": "lr",
    "train-device-tpu": "did you mean",
    "train-over-existing-run": "--overwrite",
    "train-lr-nan": "lr",
    "no-command": "command",
    "convert-empty": "empty",
}


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_messages_name_the_real_problem(case, assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _, argv, files = next(c for c in CASES if c[0] == case)
    argv = [a.replace("{A}", str(assets)) for a in argv]
    line = check_one_line_error(argv, capsys, tmp_path, files, assets)
    assert MESSAGES[case] in line, line
    assert "weights_only=False" not in line


def test_eca_with_zero_channels_is_one_clear_error():
    with pytest.raises(ExciteError, match="channels"):
        excite.create_attention("eca", 0)


@pytest.mark.parametrize("argv", [["train", "--threads", "100000", "--out", "o"],
                                  ["bench", "resnet20", "--threads", "100000"]])
def test_absurd_thread_counts_do_not_crash(argv, tmp_path):
    r = subprocess.run([sys.executable, "-m", "excite", *argv], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(excite.__file__).parents[1])})
    assert r.returncode == 2, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1 and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cmd", [["attach"], ["train"], ["profile"], ["explain"], ["bench"], ["eval"], ["inspect"],
                                 ["export", "onnx"], ["study", "run"]])
def test_help_says_that_a_references_code_is_run(cmd, capsys):
    assert main([*cmd, "--help"]) == 0  # argparse's exit, returned by main for in-process callers
    assert "code is imported and run" in " ".join(capsys.readouterr().out.split())
