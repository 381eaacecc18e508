"""Nothing runs that the user did not type, and nothing is lost that the user saved.

Attacker's files made here by hand (no pickle anywhere): a model file whose header names code, a study
TOML and a ``--config`` naming code. Each is refused in one line naming the reference and the file,
and the code (which would create a marker file) never runs unless the user allows exactly that
reference. Then the check-before-act cases: each is one line, exit 2, and loses nothing.
Command-line cases run ``python3 -m excite`` in a fresh process in an empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import excite
from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec
from excite.core.trust import allow_code, check_reference, grant

TINY = str((Path(__file__).parents[1] / "tiny_net.py")) + ":Tiny"  # a user model file: fast to train


def cli(cwd: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python3 -m excite ARGS`` in ``cwd``, a fresh process."""
    return subprocess.run([sys.executable, "-m", "excite", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def one_line_exit_2(r: subprocess.CompletedProcess) -> str:
    """The run failed as bad input: exit 2, one line on stderr, no traceback. Returns the line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("excite: error: "), r.stderr
    return lines[0]


def evil_code(folder: Path, marker: Path) -> None:
    """``folder/evil.py``: importing it creates ``marker`` (what an attacker's code would do instead)."""
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from torch import nn\n\n\nclass Net(nn.Sequential):\n    def __init__(self, num_classes=10):\n"
        "        super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n")


def crafted_model_file(path: Path, description: dict) -> Path:
    """A safetensors model file whose header carries ``description``, written by hand as an attacker would."""
    header = {"format": "pt", "excite_format": "excite-model/1", "excite_version": "0.1.0",
              "excite_model": json.dumps(description)}
    save_file({"w": torch.zeros(2)}, str(path), metadata=header)
    return path


@pytest.fixture
def attack(tmp_path):
    """``dl/evil.safetensors`` naming ``evil.py:Net`` beside it, an empty working folder, and the marker."""
    dl, work, marker = tmp_path / "dl", tmp_path / "work", tmp_path / "PWNED"
    dl.mkdir()
    work.mkdir()
    evil_code(dl, marker)
    crafted_model_file(dl / "evil.safetensors", {"arch": "evil.py:Net", "num_classes": 10})
    return dl / "evil.safetensors", work, marker


# --- a model file's header ----------------------------------------------------------------------------

def test_model_file_naming_code_is_refused_by_eval_and_profile(attack):
    path, work, marker = attack
    for command in ("eval", "profile"):
        line = one_line_exit_2(cli(work, command, path))
        assert "refused to run the model 'evil.py:Net'" in line and str(path) in line and "--trust-code evil.py:Net" in line
    assert not marker.exists()
    assert list(work.iterdir()) == []


def test_trust_code_allows_exactly_the_named_reference(attack):
    path, work, marker = attack
    one_line_exit_2(cli(work, "profile", path, "--trust-code", "other.py:Net"))
    assert not marker.exists()
    r = cli(work, "profile", path, "--trust-code", "evil.py:Net")
    assert r.returncode == 0, r.stderr
    assert marker.exists() and "params" in r.stdout


def test_load_model_refuses_a_module_reference_with_options(tmp_path):
    """The reported attack: `module:function` plus options from the header ran a command."""
    marker = tmp_path / "PWNED"
    path = crafted_model_file(tmp_path / "m.safetensors",
                              {"arch": "subprocess:run", "options": {"args": ["touch", str(marker)]}})
    with pytest.raises(ExciteError, match=r"refused to run the model 'subprocess:run'.*import module subprocess"):
        excite.load_model(path)
    with pytest.raises(ExciteError, match="refused"):
        excite.resolve_model(str(path), device="meta")
    assert not marker.exists()


def test_trust_code_true_is_not_a_blanket_switch(attack):
    path, _, marker = attack
    with pytest.raises(TypeError, match="not True"):
        excite.load_model(path, trust_code=True)
    assert not marker.exists()
    model = excite.load_model(path, trust_code=["evil.py:Net"], device="meta")
    assert marker.exists() and model.excite_spec.arch == "evil.py:Net"


def test_a_grant_lasts_for_one_call(attack):
    path, _, marker = attack
    with allow_code(["evil.py:Net"]):
        check_reference("evil.py:Net", path)
    with pytest.raises(ExciteError, match="refused"):
        check_reference("evil.py:Net", path)
    assert grant("a.py:B") == {"a.py:B"} and not marker.exists()


@pytest.mark.parametrize("description,match", [
    ({"arch": "resnet20", "options": {"checkpoint": "/etc/passwd"}}, "'checkpoint' of resnet20 is not a model option"),
    ({"arch": "resnet20", "options": {"pretrained": True}}, "'pretrained' of resnet20 is not a model option"),
    ({"arch": "resnet20", "options": {"no_such_option": 1}}, "takes no option 'no_such_option'"),
    ({"arch": "timm:resnet50", "options": {"pretrained": True}}, "would open a path or download"),
    ({"arch": "timm:resnet50", "options": {"pretrained_cfg_overlay": {"file": "x.pth"}}}, "would open a path"),
    ({"arch": "torchvision:resnet50", "options": {"weights": "IMAGENET1K_V1"}}, "would open a path or download"),
    ({"arch": "resnet20", "attention": "se", "attention_kwargs": {"gate_layer": "os:system"}}, "takes no setting"),
    ({"arch": "resnet20", "attach": [{"attention": "evil.py:Net"}]}, "unknown attention"),
    ({"arch": "resnet20", "attach": [{"attention": "se", "profile": True}]}, "takes no setting 'profile'"),
], ids=["checkpoint", "pretrained", "unknown-option", "timm-pretrained", "timm-overlay", "tv-weights",
        "attention-setting", "attach-code", "attach-key"])
def test_registered_and_package_names_take_plain_options_only(tmp_path, description, match):
    path = crafted_model_file(tmp_path / "m.safetensors", description)
    with pytest.raises(ExciteError, match=match):
        excite.load_model(path)


def test_a_header_claiming_more_bytes_than_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(ExciteError, match=r"claims shape \[1099511627776\]"):
        excite.load_model(path)
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    with pytest.raises(ExciteError, match="header claims"):
        excite.load_model(path)


def test_a_newer_model_file_format_is_named(tmp_path):
    path = crafted_model_file(tmp_path / "m.safetensors", {"arch": "resnet20"})
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(path), metadata={"excite_format": "excite-model/2", "excite_model": "{}"})
    with pytest.raises(ExciteError, match="format excite-model/2, newer than this excite reads"):
        excite.load_model(path)


# --- study TOML, --config, a study's database -------------------------------------------------------------

def test_study_toml_naming_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil_code(tmp_path, marker)
    work = tmp_path / "work"
    work.mkdir()
    toml = tmp_path / "s.toml"
    toml.write_text(f'models = ["{tmp_path / "evil.py"}:Net"]\nseeds = 1\n[[variant]]\nlabel = "a"\n')
    line = one_line_exit_2(cli(work, "study", "run", toml, "--out", "S"))
    assert f"{toml}: refused to run the model" in line and "--trust-code" in line
    assert not marker.exists() and list(work.iterdir()) == []
    from excite.study.spec import load_study

    ref = f"{tmp_path / 'evil.py'}:Net"
    assert load_study(toml, trust_code=[ref]).models == [ref]
    assert load_study(toml, overrides={"models": ["resnet20"]}).models == ["resnet20"]  # typed: the caller's
    assert not marker.exists()  # loading a study runs no model


def test_study_toml_options_that_open_files_are_refused(tmp_path):
    from excite.study.spec import load_study

    toml = tmp_path / "s.toml"
    toml.write_text('models = ["resnet20"]\nseeds = 1\n[[variant]]\nlabel = "a"\noptions = {pretrained = true}\n')
    with pytest.raises(ExciteError, match="'pretrained' of resnet20 is not a model option"):
        load_study(toml)


def test_config_file_naming_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil_code(tmp_path, marker)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "c.toml").write_text(f'model = "{tmp_path / "evil.py"}:Net"\nepochs = 1\n')
    line = one_line_exit_2(cli(work, "train", "--config", tmp_path / "c.toml", "--out", "o"))
    assert "c.toml: refused to run the model" in line
    assert not marker.exists() and list(work.iterdir()) == []


def test_config_model_replaced_on_the_command_line_is_not_checked():
    from excite.core.trust import check_config

    file_values = {"model": "evil.py:Net"}
    check_config(file_values, {"model": "resnet20"}, "c.toml")  # the flag replaced it: it never runs
    with pytest.raises(ExciteError, match="refused"):
        check_config(file_values, dict(file_values), "c.toml")


def test_study_report_refuses_code_named_in_the_database():
    from excite.study.report import _profile

    run = {"model": "evil.py:Net", "variant": {"attention": "none", "attention_kwargs": {}, "options": {}}}
    with pytest.raises(ExciteError, match="results.sqlite: refused"):
        _profile(run)


def test_the_weights_table_names_no_code():
    """The packaged weights table passes the checks a file's description gets: registered models and
    attention, plain settings, nothing that runs code."""
    from excite.core.trust import check_attention, runs_code

    entries = excite.list_weights()
    assert entries
    for e in entries:
        assert not runs_code(e.model) and e.model in excite.list_models()
        check_attention(e.attention, e.attention_kwargs, "weights.json")
        assert e.url.startswith(("https://", "file://"))


# --- check everything, then act ------------------------------------------------------------------------

def _run_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_overwrite_with_bad_data_loses_nothing(tmp_path):
    run = tmp_path / "RUN"
    excite.train(model=TINY, dataset="digits", subset=64, batch_size=32, epochs=1, out=str(run), progress=False,
                 threads=1)
    before = _run_files(run)
    assert "last.safetensors" in before and "config.json" in before
    work = tmp_path / "work"
    work.mkdir()
    line = one_line_exit_2(cli(work, "train", "--model", TINY, "--overwrite", "--out", run, "--dataset", "cifar10",
                               "--data", "missing"))
    assert "missing" in line
    assert _run_files(run) == before and not (run / ".replaced").exists()


def test_overwrite_removes_the_old_run_once_the_new_one_has_checkpointed(tmp_path):
    run = tmp_path / "RUN"
    args = dict(model=TINY, dataset="digits", subset=64, batch_size=32, epochs=1, out=str(run), progress=False,
                threads=1)
    excite.train(**args)
    (run / "old-only.txt").write_text("a file of the user's: kept")
    old = (run / "last.safetensors").read_bytes()
    excite.train(**args, seed=1, overwrite=True)
    assert (run / "last.safetensors").read_bytes() != old
    assert not (run / ".replaced").exists() and (run / "old-only.txt").exists()


def test_an_interrupted_overwrite_is_undone_by_the_next_run(tmp_path):
    from excite.files.folderlock import move_aside, settle_aside

    (tmp_path / "last.safetensors").write_text("old run")
    (tmp_path / "log.csv").write_text("old log")
    move_aside(tmp_path, ["last.safetensors", "log.csv", "best.safetensors"])  # then killed before a checkpoint
    (tmp_path / "log.csv").write_text("the killed run's log")
    settle_aside(tmp_path)
    assert (tmp_path / "last.safetensors").read_text() == "old run" and (tmp_path / "log.csv").read_text() == "old log"
    assert not (tmp_path / ".replaced").exists()


def test_a_study_whose_first_run_fails_leaves_nothing(tmp_path):
    (tmp_path / "s.toml").write_text('dataset = "cifar10"\nmodels = ["resnet20"]\nseeds = 1\n[[variant]]\nlabel = "a"\n')
    r = cli(tmp_path, "study", "run", "s.toml", "--out", "S")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # progress lines come first (the run had started); the error is the last line
    assert r.stderr.strip().splitlines()[-1].startswith("excite: error: dataset 'cifar10' needs --data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_demo_out_under_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("")
    line = one_line_exit_2(cli(tmp_path, "demo", "--quick", "--out", "afile/sub", timeout=60))
    assert "afile is a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("args,match", [
    (["train", "--attention-kwargs", "k_size=3", "--out", "o"], "would have no effect: no --attention was given"),
    (["profile", "resnet18", "--attention-kwargs", "reduction=8"], "would have no effect: no --attention was given"),
    (["train", "--freeze-backbone-epochs", "5", "--out", "o"], "only the classifier would train"),
    (["train", "--resume", "--overwrite", "--out", "o"], "--resume and --overwrite contradict"),
    (["inspect", "--model", "m.safetensors"], "unrecognized arguments: --model"),
    (["profile", "resnet20", "--conv", "paper"], "unrecognized arguments: --conv"),
], ids=["train-kwargs", "profile-kwargs", "freeze-no-pretrained", "resume-overwrite", "inspect-model", "abbrev"])
def test_contradictory_or_ineffective_flags_are_one_line(tmp_path, args, match):
    line = one_line_exit_2(cli(tmp_path, *args, timeout=120))
    assert match in line
    assert list(tmp_path.iterdir()) == []


def test_attention_settings_for_a_models_own_attention_are_allowed():
    from excite.core.combinations import check_attention_settings

    check_attention_settings("efficientnet_b0", None, {"reduction": 8})  # its published SE takes them
    with pytest.raises(ExciteError, match="--attention none removes every attention module"):
        check_attention_settings("efficientnet_b0", "none", {"reduction": 8})


# --- the Python API and the messages -------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: excite.attach("resnet18", "se"),
    lambda: excite.load_checkpoint("resnet18", "x.pth"),
    lambda: excite.optimize_for_inference("resnet18"),
], ids=["attach", "load_checkpoint", "optimize_for_inference"])
def test_a_name_where_a_model_is_expected_is_one_line(call):
    with pytest.raises(TypeError, match=r"expected a torch nn.Module, got str 'resnet18'; build the model first"):
        call()
    with pytest.raises(ExciteError):
        call()


def test_profile_input_size_and_channels_are_one_line():
    model = excite.create_model("resnet20")
    with pytest.raises(ExciteError, match="input size 'abc' is not N, HxW or CxHxW"):
        excite.profile(model, input_size="abc")
    with pytest.raises(ExciteError, match="cannot run on an input of shape 1x1x32x32 .its first layer takes 3 channels"):
        excite.profile(model, input_size=(1, 32, 32))


def test_messages_name_the_real_problem(tmp_path):
    from excite.training.engine import make_config

    with pytest.raises(ExciteError, match=r"momentum=-1 is out of range; expected a number in \[0, 1\)"):
        make_config({"momentum": -1})
    with pytest.raises(ExciteError, match=r"channels=-8 is out of range"):
        excite.create_attention("se", -8)
    from excite.study.spec import load_study

    with pytest.raises(ExciteError, match="is a folder, not a study file"):
        load_study(tmp_path)
    (tmp_path / "my_models.py").write_text("x = 1\n")
    with pytest.raises(ExciteError, match=r"is Python code, not weights; .*my_models.py:NAME"):
        excite.resolve_model(str(tmp_path / "my_models.py"))


def test_a_code_running_raw_pickle_is_refused_by_name(tmp_path):
    """A raw (not zip) pickle whose object would call os.system: one line saying refused, no torch warning."""
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=4))
    line = one_line_exit_2(cli(tmp_path, "profile", "evil.pth"))
    assert "refused, the file is a pickle that would import and call" in line and "system" in line
    assert not marker.exists()


def test_model_spec_round_trip_still_loads(tmp_path):
    """What excite writes for registered models loads without any grant."""
    model = excite.create_model("resnet20", attention="eca", attention_kwargs={"k_size": 3})
    path = excite.save_model(model, tmp_path / "m.safetensors")
    back = excite.load_model(path)
    assert back.excite_spec == ModelSpec.from_dict(model.excite_spec.to_dict())
