"""The built-in studies on the new networks: degradation (plain vs residual), ResNet v2 shortcuts with the
shortcut-only row, ResNeXt-29 cardinality at fixed complexity, ECA kernel size with per-stage adaptive k.
Each runs end to end through the training engine on digits, cut to one step per run."""

import pytest
import torch

import excite
from excite.profiling import profile
from excite.study import load_study
from excite.study.db import load_results
from excite.study.report import write_report
from excite.study.runner import run_study

# The real engine, one optimizer step per run on 32 images of each split: seconds, but real runs.
TINY = {"name": "digits-short", "epochs": 1, "stop_after_steps": 1, "batch_size": 16, "warmup_epochs": 0, "subset": 32}


@pytest.mark.parametrize("name", ["degradation", "resnet-v2-shortcuts", "resnext29-cardinality", "eca-kernel"])
def test_study_runs_end_to_end(name, tmp_path):
    study = load_study(name, overrides=dict(seeds=[0], recipe=TINY))
    n = len(study.runs())
    assert run_study(study, tmp_path / name, log=None) == dict(total=n, skipped=0, done=n)
    rows = load_results(tmp_path / name)
    assert {(r["model"], r["label"]) for r in rows} == {(m, v.label) for m in study.models for v in study.variants}
    assert all(0 <= r["result"]["top1"] <= 100 for r in rows), rows[0]["result"]
    md = write_report(tmp_path / name, profile=False)["markdown"].read_text()
    assert all(v.label in md for v in study.variants)


def _variant_model(study, v):
    with torch.device("meta"):
        return excite.create_model(study.models[0], attention=v.attention, attention_kwargs=v.attention_kwargs,
                                   num_classes=10, **v.options)


def test_degradation_compares_plain_and_residual_at_two_depths():
    s = load_study("degradation")
    assert s.models == ["resnet20", "resnet56"]
    assert {v.label: v.options["shortcut"] for v in s.variants} == {"residual": "identity", "plain": "none"}


def test_shortcut_study_has_the_shortcut_only_row():
    rows = {v.label: v for v in load_study("resnet-v2-shortcuts").variants}
    row = rows["shortcut-only scaling 0.5"]
    assert row.options == {"shortcut": "scale_shortcut"} and row.published is None  # "fails" in Table 1
    assert rows["constant scaling 0.5"].options == {"shortcut": "scale"}


def test_cardinality_study_holds_complexity_fixed():
    s = load_study("resnext29-cardinality")
    macs = {v.label: profile(_variant_model(s, v), (3, 32, 32)).macs for v in s.variants}
    base = macs[s.baseline]
    assert all(abs(m / base - 1) < 0.02 for m in macs.values()), macs  # within 2% of the ResNet's MACs
    forms = [v for v in s.variants if v.options.get("groups") == 8]
    assert sorted(v.options.get("block_form", "c") for v in forms) == ["a", "b", "c"]
    assert len({macs[v.label] for v in forms}) == 1  # the three forms are the same network
    assert {v.options["groups"] for v in s.variants} == {1, 2, 8}


def test_eca_kernel_study_adaptive_row_differs_per_stage():
    s = load_study("eca-kernel")
    ks = {}
    for v in s.variants:
        model = _variant_model(s, v)
        ks[v.label] = [[m.k_size for m in getattr(model, f"layer{i}").modules() if type(m).__name__ == "ECA"][0]
                       for i in (1, 2, 3)]
    assert ks["adaptive"] == [3, 3, 5]  # 32, 64, 128 channels: psi(C) = 3, 3, 5
    assert all(ks["adaptive"] != k for label, k in ks.items() if label != "adaptive")
    assert ks["k=7"] == [7, 7, 7]
