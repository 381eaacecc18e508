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
    assert _load("train_throughput").main(["--models", "resnet20", "--attention", "none", "eca", "--batch-sizes", "4",
                                           "--input-size", "16", "--no-channels-last", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    r = d["results"][0]
    assert d["machine"]["torch"] and list(r["timings"]) == ["none", "eca", "eca plain ops"]
    assert all(t["img_per_s"] > 0 and t["runs"] >= 9 for t in r["timings"].values())
    assert {t["target"] for t in d["targets"]} >= {"resnet20 train step eca / none, batch 4"}
    assert all(t["met"] is None or t["verdict"] in ("met",) or t["verdict"].startswith("missed") for t in d["targets"])


def test_profile_speed_writes_results(tmp_path):
    out = tmp_path / "p.json"
    assert _load("profile_speed").main(["--models", "resnet20", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "resnet20" and row["profile_s"] > 0 and row["forward_s"] > 0


def test_inference_suite_smoke(tmp_path):
    out = tmp_path / "i.json"
    assert _load("inference").main(["--smoke", "--batches", "1", "--attention", "none", "eca", "--backends",
                                    "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    b = d["batches"]["1"]
    assert {"eca | pytorch eager", "eca | look-alike eager", "eca | excite optimized",
            "eca | onnxruntime fp32"} <= set(b["timings"])
    assert all(t["runs"] >= 9 and t["q25_s"] <= t["median_s"] <= t["q75_s"] for t in b["timings"].values())
    assert all(e < 1e-4 for e in b["max_rel_err_vs_eager"].values())  # every path computes the same function
    assert all(t["verdict"] == "met" or t["verdict"].startswith(("missed", "not measured", "agree", "DISAGREE"))
               for t in d["targets"])
    assert b["overhead"]["eca"]["floor"]["extra_read_bytes"] > 0
    assert "skipped" in b["openvino"]["eca"] or "median_s" in b["openvino"]["eca"]


def test_gpu_script_runs_on_cpu(tmp_path):
    out = tmp_path / "g.json"
    assert _load("gpu").main(["--device", "cpu", "--dry-run", "--no-compile", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["device"]["torch"] and set(d["macs_per_image"]) == {"none", "se", "eca", "cbam"}
    assert d["macs_per_image"]["eca"] > d["macs_per_image"]["none"]
    assert {"eager fp32", "channels-last fp32"} <= set(d["inference"])
    assert all(r["img_per_s"] > 0 for per in d["inference"].values() for r in per.values())
    assert any("CUDA graphs need a CUDA device" in why for why in d["skipped"].values())  # recorded, not dropped
    assert set(d["attention_overhead"]["eager fp32"]) == {"se", "eca", "cbam"}
    assert d["reference"]["timm eager"] == [0.13, 0.16] and d["goal"] == 0.03
    assert set(d["verdicts"]) >= {"eager fp32 se", "eager fp32 eca"}
    assert all(r["runs"] == 9 for per in d["inference"].values() for r in per.values())


def test_under_load_script_runs(tmp_path, monkeypatch):
    mod = _load("under_load")
    monkeypatch.setattr(mod, "SETTINGS", mod.SETTINGS[2:3])  # 1 thread only: seconds, not minutes
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


def test_conv_gap_matches_every_convolution(tmp_path):
    out = tmp_path / "c.json"
    assert _load("conv_gap").main(["--smoke", "--reps", "2", "--out", str(out)]) == 0
    b = json.loads(out.read_text())["batches"]["1"]
    assert b["matched_convs"] == len(b["rows"]) == 23  # ResNet-50's distinct convolution shapes
    assert b["onnxruntime_conv_s"] > 0 and b["pytorch_conv_s"] > 0 and b["pytorch_rest_s"] > 0


def test_prepack_threshold_times_both_calls(tmp_path):
    out = tmp_path / "p.json"
    assert _load("prepack_threshold").main(["--reps", "9", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["rule"]["min_weight_bytes"] == 512 * 1024
    rows = {r["case"]: r for r in d["rows"]}
    assert rows["ResNet-50 layer4 3x3 512, batch 1"]["rule_packs"] and not rows["SE fc1, ResNet-50 layer1, batch 1"]["rule_packs"]
    assert all(r["plain"]["runs"] >= 9 and r["packed"]["median_s"] > 0 for r in d["rows"])


def test_post_ops_times_each_fused_form_against_its_unfused_one(tmp_path):
    out = tmp_path / "p.json"
    assert _load("post_ops").main(["--smoke", "--reps", "9", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [(r["stage"], r["batch"]) for r in d["rows"]] == [("small", 1), ("small", 2)]
    for r in d["rows"]:
        assert len(r["timings"]) == 6 and all(t["runs"] == 9 for t in r["timings"].values())
        assert len(r["ratios"]) == 3 and all(c["paired"] and c["ratio"] > 0 for c in r["ratios"])


def test_memory_kept_samples_each_variant_in_a_fresh_process(tmp_path):
    out = tmp_path / "m.json"
    assert _load("memory_kept").main(["--smoke", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    (case,) = d["cases"]
    assert set(case["timings"]) == {"kept (default)", "not kept"}
    assert all(t["runs"] >= 9 and t["q25_s"] <= t["median_s"] <= t["q75_s"] for t in case["timings"].values())
    assert case["target"]["verdict"] == "met" or case["target"]["verdict"].startswith(("missed", "not measured"))
