"""The benchmark scripts run end to end at tiny sizes and write their result files (no timing asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_throughput_writes_results(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert _load("train_throughput").main(["--models", "resnet20", "--attention", "none", "eca", "--batch-size", "4",
                                           "--runs", "2", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["machine"]["torch"] and [v["label"] for v in d["results"][0]["variants"]] == ["none", "eca"]
    assert all(v["img_per_s"] > 0 for v in d["results"][0]["variants"])


def test_profile_speed_writes_results(tmp_path):
    out = tmp_path / "p.json"
    assert _load("profile_speed").main(["--models", "resnet20", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "resnet20" and row["profile_s"] > 0 and row["forward_s"] > 0


def test_inference_suite_smoke(tmp_path):
    out = tmp_path / "i.json"
    assert _load("inference").main(["--smoke", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert {t["target"].split(":")[0] for t in d["targets"]} and all("ratio" in t for t in d["targets"])


def test_cli_startup_writes_results(tmp_path):
    out = tmp_path / "c.json"
    assert _load("cli_startup").main(["--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["command"] for r in rows} >= {"excite --help", "excite list models"}
    assert all(r["median_s"] > 0 for r in rows)
