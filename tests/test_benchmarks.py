"""The benchmark scripts run end to end at tiny sizes and write their result files (no timing asserted)."""

import importlib.util
import json
from pathlib import Path


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
    peers = {k.split(" | ")[1] for k in d["results"]["peers_batch1"]["timings"]}
    assert {"pytorch eager", "excite optimized", "onnxruntime fp32", "onnxruntime int8"} <= peers
    assert d["results"]["peers_batch1"]["formats"] == {"none": True, "eca": True}  # one format for both of a pair
    assert len(d["loadavg_start_mid_end"]) >= 2
    if importlib.util.find_spec("timm") is None:
        assert "eca | timm" in d["skipped"]  # an absent peer is recorded, not silently dropped


def test_gpu_script_runs_on_cpu(tmp_path):
    out = tmp_path / "g.json"
    assert _load("gpu").main(["--device", "cpu", "--tiny", "--no-compile", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["device"]["torch"] and set(d["macs_per_image"]) == {"none", "se", "eca", "cbam"}
    assert d["macs_per_image"]["eca"] > d["macs_per_image"]["none"]
    assert {"eager fp32", "channels-last fp32"} <= set(d["inference"])
    assert all(r["img_per_s"] > 0 for per in d["inference"].values() for r in per.values())
    assert any("CUDA graphs need a CUDA device" in why for why in d["skipped"].values())  # recorded, not dropped
    assert set(d["attention_overhead"]["eager fp32"]) == {"se", "eca", "cbam"}


def test_under_load_script_runs(tmp_path, monkeypatch):
    mod = _load("under_load")
    monkeypatch.setattr(mod, "SETTINGS", mod.SETTINGS[2:])  # 1 thread and auto only: seconds, not minutes
    out = tmp_path / "u.json"
    assert mod.main(["--tiny", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d["phases"]) == {"alone", "with competitor"}
    assert all(len(ph["load_before"]) == 3 for ph in d["phases"].values())
    row = d["phases"]["with competitor"]["settings"]["1 thread"]
    assert row["threads"] == 1 and row["train_img_s"] > 0 and row["infer_img_s"] > 0


def test_cli_startup_writes_results(tmp_path):
    out = tmp_path / "c.json"
    assert _load("cli_startup").main(["--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["command"] for r in rows} >= {"excite --help", "excite list models"}
    assert all(r["median_s"] > 0 for r in rows)
