"""The command line: output of `excite list`, and bad input as one line with a non-zero exit."""

import subprocess
import sys

import pytest

import excite
from excite.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "excite", *args], capture_output=True, text=True)


def test_list_models_shows_every_model_with_its_parameter_count(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in excite.list_models():
        assert f"\n{name} " in out
    assert "25,557,032" in out  # resnet50, torchvision's count
    assert "5,288,548" in out  # efficientnet_b0 with its SE


def test_list_attention(capsys):
    assert main(["list", "attention"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in excite.list_attention())


@pytest.mark.parametrize("args", [["list", "modelz"], ["no-such-command"]])
def test_bad_command_line_exits_non_zero(args):
    r = run(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
