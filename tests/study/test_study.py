"""Studies: grid expansion, crash-safe runner (kill and rerun), statistics, reports."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import excite
from excite.core.errors import ExciteError
from excite.files.modelfile import read_model_file
from excite.study import builtin_studies, load_study, paired_ttest, summarize
from excite.study.report import write_report
from excite.study.runner import run_study

TINY = """
name = "tiny"
models = ["resnet20"]
seeds = [0, 1, 2]
dataset = "digits"
recipe = {{ toy_sleep = {sleep} }}
baseline = "none"

[[variant]]
label = "none"
attention = "none"
published = 75.20

[[variant]]
label = "eca"
attention = "eca"
attention_kwargs = {{ k_size = 3 }}
published = 77.43
"""


def _tiny(tmp_path, sleep=0.0) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(sleep=sleep))
    return p


def test_builtin_studies_expand_to_the_papers_rows():
    assert set(builtin_studies()) >= {"eca-table2", "eca-kernel", "se-reduction", "resnext-cardinality", "cbam-arrangement"}
    eca = load_study("eca-table2")
    # ECA-Net Table 2 has ten rows; its ImageNet top-1 column (published_numbers.md).
    assert [v.published for v in eca.variants] == [75.20, 76.71, 76.00, 77.07, 77.42, 76.95, 76.98, 76.96, 77.35, 77.43]
    assert len(eca.runs()) == 10 * len(eca.seeds)
    assert [v.attention_kwargs["k_size"] for v in load_study("eca-kernel").variants] == [3, 5, 7, 9, "adaptive"]
    assert [v.attention_kwargs["reduction"] for v in load_study("se-reduction").variants] == [2, 4, 8, 16, 32]
    # ResNeXt Table 2: C x d at the complexity of ResNet-50.
    card = [(v.options["groups"], v.options["width_per_group"]) for v in load_study("resnext-cardinality").variants]
    assert card == [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)]
    assert {v.attention_kwargs["arrangement"] for v in load_study("cbam-arrangement").variants} == {
        "channel", "spatial", "channel-spatial", "spatial-channel", "parallel"}


def test_every_builtin_variant_builds_its_model():
    """Each row's settings are accepted by create_model (meta device: no memory, no time)."""
    import torch

    from excite import create_model

    for name in builtin_studies():
        s = load_study(name)
        for v in s.variants:
            with torch.device("meta"):
                create_model(s.models[0], attention=v.attention, attention_kwargs=v.attention_kwargs, num_classes=10,
                             **v.options)


def test_bad_study_is_one_clear_error(tmp_path):
    with pytest.raises(ExciteError, match="unknown study"):
        load_study("eca-tabel2")
    p = tmp_path / "bad.toml"
    p.write_text('baseline = "x"\n[[variant]]\nlabel = "a"\n')
    with pytest.raises(ExciteError, match="baseline 'x'"):
        load_study(p)


def test_statistics_match_a_hand_computed_example():
    s = summarize([70.0, 72.0, 74.0], bounds=None)
    assert s.mean == 72.0 and s.std == pytest.approx(2.0)
    # Student t, 2 degrees of freedom: closed form t_p = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975 -> 4.30265.
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert s.ci_high - s.mean == pytest.approx(t * 2.0 / math.sqrt(3), rel=1e-6)
    # Paired differences 2, 3, 1: mean 2, sd 1, t = 2 / (1 / sqrt 3) = sqrt 12; with 2 degrees of freedom
    # the CDF is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - sqrt(12) / sqrt(14) = 0.07418.
    delta, p, n = paired_ttest({0: 72, 1: 74, 2: 73, 9: 50}, {0: 70, 1: 71, 2: 72})
    assert (delta, n) == (2.0, 3)
    assert p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)
    # Accuracies over 450 images: every seed 1/450 worse, equal up to float rounding -> no t statistic.
    a, b = {0: 447 / 4.5, 1: 448 / 4.5, 2: 446 / 4.5}, {0: 448 / 4.5, 1: 449 / 4.5, 2: 447 / 4.5}
    assert len({a[s] - b[s] for s in a}) > 1  # the float differences really are not identical
    delta, p, n = paired_ttest(a, b)
    assert delta == pytest.approx(-100 / 450) and math.isnan(p) and n == 3


def test_bounded_interval_is_the_t_interval_of_the_logits_and_stays_inside_0_100():
    from scipy import stats
    from scipy.special import expit, logit

    # The example: 99.56 +- 0.22 over 3 seeds; the plain t interval is [99.01, 100.11].
    vals = [99.34, 99.56, 99.78]
    plain = summarize(vals, bounds=None)
    assert plain.ci_high > 100
    s = summarize(vals)
    lg = logit([v / 100 for v in vals])
    lo, hi = stats.t.interval(0.95, 2, loc=lg.mean(), scale=stats.sem(lg))
    assert (s.ci_low, s.ci_high) == pytest.approx((100 * expit(lo), 100 * expit(hi)), rel=1e-12)
    assert 98 < s.ci_low < s.mean < s.ci_high < 100
    assert summarize([100.0, 100.0, 99.8]).ci_high <= 100 and summarize([0.0, 0.2, 0.1]).ci_low >= 0
    # In the middle of the range the two intervals nearly agree (the logit is nearly linear there).
    mid, mid_plain = summarize([49.0, 50.0, 51.0]), summarize([49.0, 50.0, 51.0], bounds=None)
    assert mid.ci_low == pytest.approx(mid_plain.ci_low, abs=0.05) and mid.ci_high == pytest.approx(mid_plain.ci_high, abs=0.05)
    one = summarize([99.33])
    assert one.n == 1 and math.isnan(one.ci_low) and math.isnan(one.std)


def test_detectable_difference_has_80_percent_power():
    import numpy as np
    from scipy import stats

    from excite.study.stats import detectable_difference, paired_difference_sd, paired_power

    # Cohen's d_z = 1 with 10 pairs at alpha 0.05 two-sided: power 0.8031 (G*Power's paired t-test value).
    assert paired_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert paired_power(0.0, 1.0, 5) == pytest.approx(0.05)
    # Many pairs: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n).
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert detectable_difference(1.0, 2000) == pytest.approx(z / math.sqrt(2000), rel=2e-3)
    # Scales with the spread; needs two pairs and some spread.
    assert detectable_difference(0.5, 3) == pytest.approx(0.5 * detectable_difference(1.0, 3), rel=1e-8)
    assert math.isnan(detectable_difference(1.0, 1)) and math.isnan(detectable_difference(0.0, 3))
    # A simulation, independent of scipy's noncentral t: 3 and 5 pairs at the detectable difference
    # are rejected 80% of the time (200,000 studies each: standard error 0.0009).
    rng = np.random.default_rng(0)
    for n in (3, 5):
        d = detectable_difference(1.0, n)
        p = stats.ttest_1samp(rng.normal(d, 1.0, (200_000, n)), 0.0, axis=1).pvalue
        assert (p < 0.05).mean() == pytest.approx(0.80, abs=0.004)
    assert paired_difference_sd({0: 72, 1: 74, 2: 73, 9: 50}, {0: 70, 1: 71, 2: 72}) == pytest.approx(1.0)


def test_small_study_end_to_end_with_report(tmp_path):
    """Real models trained on generated data; then the report in all three formats."""
    import torch
    from safetensors.torch import load_file

    from excite import create_model
    from excite.study.db import load_results
    from excite.study.runner import cpu_model

    study = load_study(_tiny(tmp_path), overrides=dict(seeds=[0, 1]))
    counts = run_study(study, tmp_path / "s", trainer="excite.study.runner:toy_trainer", log=None)
    assert counts == dict(total=4, skipped=0, done=4)
    rows = load_results(tmp_path / "s")
    # Every run kept its final weights in the study folder, named in its row, loadable by create_model.
    for r in rows:
        ckpt = tmp_path / "s" / r["checkpoint"]
        assert ckpt.parent.parent == tmp_path / "s" / "runs" and ckpt.is_file()
        mf = read_model_file(ckpt)  # a model file: its header describes the model and names the run
        assert mf.header["provenance"]["study_key"] == r["key"]
        assert mf.spec.attention == r["run"]["variant"]["attention"]
        model = excite.load_model(ckpt)
        saved = load_file(str(ckpt))
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not list((tmp_path / "s" / "runs").glob("*.partial"))
    stamps = {r["checkpoint"]: (tmp_path / "s" / r["checkpoint"]).stat().st_mtime_ns for r in rows}
    assert run_study(study, tmp_path / "s", trainer="excite.study.runner:toy_trainer", log=None)["done"] == 0
    assert stamps == {c: (tmp_path / "s" / c).stat().st_mtime_ns for c in stamps}  # finished runs untouched
    paths = write_report(tmp_path / "s", profile=False)
    md = paths["markdown"].read_text()
    assert "| resnet20 | eca | 77.43 |" in md and "| resnet20 | none | 75.20 |" in md
    # The header names the run count and the machine (CPU model and cores, torch version).
    assert f"**4 runs on {cpu_model()} ({os.cpu_count()} cores)" in md and f"torch {torch.__version__}" in md
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].split(",")[:3] == ["model", "variant", "published"] and len(rows) == 3
    page = paths["html"].read_text()
    # Offline: every image is inline, nothing is fetched from elsewhere.
    assert page.count('src="data:image/png;base64,') >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    import base64

    first = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"


def test_kill_and_rerun_loses_and_duplicates_nothing(tmp_path):
    toml = _tiny(tmp_path, sleep=0.3)
    folder = tmp_path / "k"
    cmd = [sys.executable, "-m", "excite", "study", "run", str(toml), "--out", str(folder),
           "--trainer", "excite.study.runner:synthetic_trainer"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = folder / "results.sqlite"
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                n = 0
        if n >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= n < 6, f"the kill came too late to test anything ({n} runs stored)"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(db)
    keys = [k for (k,) in con.execute("SELECT key FROM runs")]
    con.close()
    study = load_study(toml)
    assert sorted(keys) == sorted(r.key for r in study.runs())  # all 6, each once
    # The first process's finished runs were kept, not redone.
    assert "already finished" in out.stderr and "6 runs" in out.stderr  # progress goes to stderr
    # One weights folder per run, none left half-written, each holding its own run's result.
    from safetensors.torch import load_file

    from excite.study.db import load_results
    from excite.study.runner import run_id

    assert sorted(p.name for p in (folder / "runs").iterdir()) == sorted(run_id(r) for r in study.runs())
    for r in load_results(folder):
        assert load_file(str(folder / r["checkpoint"]))["top1"].item() == r["result"]["top1"]


def test_unfinished_run_folders_are_replaced_and_finished_ones_kept(tmp_path):
    """A killed run leaves a .partial folder, or a complete folder whose row was never committed:
    both are replaced when the run is redone; a folder with a row is never touched."""
    from safetensors.torch import load_file

    from excite.study.db import load_results
    from excite.study.runner import RUNS_DIR, run_id

    study = load_study(_tiny(tmp_path), overrides=dict(seeds=[0]))
    a, b = study.runs()
    folder = tmp_path / "u"
    first = load_study(_tiny(tmp_path), overrides=dict(seeds=[0]))
    first.variants = first.variants[:1]  # finish run a only
    run_study(first, folder, trainer="excite.study.runner:synthetic_trainer", log=None)
    kept = folder / RUNS_DIR / run_id(a) / "marker"
    kept.write_text("finished run")
    stale_partial = folder / RUNS_DIR / f"{run_id(b)}.partial"
    stale_partial.mkdir()
    (stale_partial / "model.safetensors").write_bytes(b"half a file")
    stale_final = folder / RUNS_DIR / run_id(b)
    stale_final.mkdir()
    (stale_final / "junk").write_text("killed before the commit")
    assert run_study(study, folder, trainer="excite.study.runner:synthetic_trainer", log=None)["done"] == 1
    assert kept.read_text() == "finished run"
    assert not stale_partial.exists() and not (stale_final / "junk").exists()
    rows = {r["key"]: r for r in load_results(folder)}
    assert rows[b.key]["checkpoint"] == f"{RUNS_DIR}/{run_id(b)}/model.safetensors"
    assert load_file(str(folder / rows[b.key]["checkpoint"]))["top1"].item() == rows[b.key]["result"]["top1"]


def test_a_second_study_in_the_same_folder_is_refused(tmp_path):
    """Two studies in one folder would clear each other's unfinished runs: the second gets one line."""
    import fcntl

    from excite.core.errors import ExciteError

    folder = tmp_path / "busy"
    folder.mkdir()
    with open(folder / ".lock", "w") as held:  # another process's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ExciteError, match="in use by another running study"):
            run_study(load_study(_tiny(tmp_path)), folder, trainer="excite.study.runner:synthetic_trainer", log=None)
    # released (as when the other process ends or is killed): the study runs
    assert run_study(load_study(_tiny(tmp_path)), folder, trainer="excite.study.runner:synthetic_trainer",
                     log=None)["done"] > 0


def test_report_header_counts_runs_and_names_every_machine(tmp_path):
    from excite.study import db
    from excite.study.report import header, table

    study = load_study(_tiny(tmp_path), overrides=dict(seeds=[0]))
    half = load_study(_tiny(tmp_path), overrides=dict(seeds=[0]))
    half.variants = half.variants[:1]
    run_study(half, tmp_path / "h", trainer="excite.study.runner:synthetic_trainer", log=None)
    con = db.connect(tmp_path / "h")
    db.set_meta(con, "study", study.to_dict())  # the full grid has 2 runs, 1 is done
    db.add_machine(con, dict(cpu_model="Test CPU 9000", cpu_count=64, torch="9.9", gpus=["Test GPU"]))
    con.close()
    text = header(table(tmp_path / "h", profile=False)[0])
    assert text.startswith("1 runs (1 of the 2 in the study's grid) on ")
    assert " and Test CPU 9000 (64 cores), Test GPU, torch 9.9" in text


def test_parallel_jobs_store_every_run_once(tmp_path):
    study = load_study(_tiny(tmp_path))
    run_study(study, tmp_path / "p", jobs=2, trainer="excite.study.runner:synthetic_trainer", log=None)
    con = sqlite3.connect(tmp_path / "p" / "results.sqlite")
    assert con.execute("SELECT COUNT(DISTINCT key), COUNT(*) FROM runs").fetchone() == (6, 6)
    con.close()


def test_inspect_records_the_eca_excitation(tmp_path):
    """The recorded gain of an ECA module equals sigmoid(conv1d(global average pool)) computed by hand."""
    from collections import OrderedDict

    import torch
    import torch.nn.functional as F

    from excite.attention import create_attention
    from excite.study.inspect import eca_kernels, plot_inspection, record_attention

    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(attn=create_attention("eca", 8, k_size=3)))
    x, y = torch.randn(6, 8, 4, 4), torch.tensor([0, 1, 0, 1, 1, 1])
    gains = record_attention(model, x, y, 2, batch_size=4)
    w = eca_kernels(model)["attn"]
    s = torch.sigmoid(F.conv1d(x.mean((2, 3))[:, None], torch.tensor(w)[None, None], padding=1))[:, 0]
    assert torch.allclose(gains["attn"][0], s[y == 0].mean(0), atol=1e-5)
    assert torch.allclose(gains["attn"][1], s[y == 1].mean(0), atol=1e-5)
    page = plot_inspection(gains, {"attn": w}, tmp_path)
    # The per-stage summary, one plot per block, the kernels.
    assert page.read_text().count("data:image/png;base64,") == 3


ENGINE_STUDY = """
name = "inspect-me"
models = ["resnet20"]
seeds = [0]
dataset = "digits"
# The real training engine, cut to a few optimizer steps: seconds, but a genuine training checkpoint.
recipe = { name = "digits-short", epochs = 1, stop_after_steps = 2, batch_size = 16, warmup_epochs = 0 }

[[variant]]
label = "eca"
attention = "eca"

[[variant]]
label = "se"
attention = "se"
attention_kwargs = { reduction = 4 }
"""


@pytest.fixture(scope="module")
def engine_study(tmp_path_factory):
    """resnet20 + ECA and + SE trained on digits by the training engine through ``study run``."""
    folder = tmp_path_factory.mktemp("engine")
    toml = folder / "s.toml"
    toml.write_text(ENGINE_STUDY)
    assert run_study(load_study(toml), folder / "study", log=None)["done"] == 2
    from excite.study.db import load_results

    return {r["label"]: folder / "study" / r["checkpoint"] for r in load_results(folder / "study")}


def _hand_gates(model, images, name, fn):
    """Per-image gates of one module computed by hand from its input (a hook captures the input)."""
    import torch

    seen = []
    mod = dict(model.named_modules())[name]
    h = mod.register_forward_hook(lambda m, inp, out: seen.append(fn(inp[0])))
    with torch.no_grad():
        for i in range(0, len(images), 64):
            model(images[i:i + 64])
    h.remove()
    return torch.cat(seen)


def test_inspect_a_trained_eca_checkpoint(engine_study, tmp_path):
    import base64

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from excite.study.inspect import inspect_checkpoint

    ckpt = engine_study["eca"]
    res = inspect_checkpoint(ckpt, dataset="digits", limit=100, out=tmp_path / "eca")
    stats, labels = res["stats"], res["labels"]
    names = [f"layer{s}.{b}.attn" for s in (1, 2, 3) for b in range(3)]
    assert list(stats["mean"]) == names
    for name in names:
        c = {"layer1": 16, "layer2": 32, "layer3": 64}[stats["stage"][name]]  # resnet20's stage widths
        assert stats["mean"][name].shape == stats["std"][name].shape == (10, c)
        assert stats["kind"][name] == "gate"
    present = sorted(set(labels.tolist()))
    assert present == list(range(10))  # the first 100 digits test images hold every class
    assert stats["counts"].tolist() == torch.bincount(labels, minlength=10).float().tolist()
    for name in names:
        m = stats["mean"][name][present]
        assert bool(((m > 0) & (m < 1)).all())  # sigmoid excitations
    # ECA's kernels, per stage, are exactly the checkpoint's conv weights.
    saved = load_file(str(ckpt))
    assert list(res["eca_kernels"]) == ["layer1", "layer2", "layer3"]
    for stage, mods in res["eca_kernels"].items():
        assert list(mods) == [n for n in names if n.startswith(stage + ".")]
        for name, w in mods.items():
            assert torch.equal(torch.tensor(w), saved[f"{name}.conv.weight"].flatten())
    # Per-class means equal sigmoid(conv1d(GAP(x))) by hand with the checkpoint's kernel, class by class.
    name = "layer3.2.attn"
    wt = saved[f"{name}.conv.weight"]
    from excite.data import load_dataset, normalize

    _, test = load_dataset("digits", None)
    images = normalize(test.images[:100], test.mean, test.std)
    s = _hand_gates(res["model"], images, name,
                    lambda x: torch.sigmoid(F.conv1d(x.mean((2, 3))[:, None], wt, padding=(wt.shape[-1] - 1) // 2))[:, 0])
    for c in present:
        assert torch.allclose(stats["mean"][name][c], s[labels == c].mean(0), atol=1e-5)
        assert torch.allclose(stats["std"][name][c], s[labels == c].std(0, unbiased=False), atol=1e-4)
    # The plots: one page (offline PNGs: per-stage summary, one per block, the kernels) and a PNG file.
    page = res["page"].read_text()
    imgs = page.split('src="data:image/png;base64,')[1:]
    assert len(imgs) == 1 + len(names) + 1
    assert all(base64.b64decode(i.split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert (tmp_path / "eca" / "excitation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(res["json"].read_text())
    assert doc["eca_kernels"]["layer2"]["layer2.0.attn"] == res["eca_kernels"]["layer2"]["layer2.0.attn"]


def test_inspect_a_trained_se_checkpoint_from_the_cli(engine_study, tmp_path, capsys):
    import torch

    from excite.cli import main

    ckpt = engine_study["se"]
    # The model's settings come from the JSON beside the study run's weights: no --model needed.
    assert main(["inspect", str(ckpt), "--dataset", "digits", "--limit", "80", "--out", str(tmp_path / "se")]) == 0
    assert "9 attention modules over 80 images" in capsys.readouterr().out
    doc = json.loads((tmp_path / "se" / "attention.json").read_text())
    assert doc["eca_kernels"] == {} and set(doc["kind"].values()) == {"gate"}
    counts = torch.tensor(doc["counts"])
    for name, mean in doc["mean"].items():
        m = torch.tensor(mean)[counts > 0]
        assert m.shape[1] == {"layer1": 16, "layer2": 32, "layer3": 64}[doc["stage"][name]]
        assert bool(((m > 0) & (m < 1)).all())
    assert (tmp_path / "se" / "excitation.png").is_file() and (tmp_path / "se" / "inspect.html").is_file()
    assert main(["inspect", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")]) == 2


def test_report_reads_like_a_papers_table(tmp_path):
    """Named columns with units in Markdown and HTML (raw keys only in the CSV), one seed without a
    fake spread, and each comparison's detectable difference and verdict."""
    study = load_study("fashion-mnist-attention", overrides=dict(seeds=[0]))
    run_study(study, tmp_path / "one", trainer="excite.study.runner:synthetic_trainer", log=None)
    paths = write_report(tmp_path / "one", profile=False)
    page, md = paths["html"].read_text(), paths["markdown"].read_text()
    for heading in ("difference vs baseline (pp)", "p (paired t)", "detectable at 80% power (pp)", "training images/s"):
        assert heading in page and heading in md
    assert "ci95_low" not in page and "p_paired" not in page and "img_per_s" not in page
    assert "(1 run, no spread)" in md and "+- -" not in md and "needs 2+ seeds" in md
    assert "no (cannot test: fewer than 2 seeds or no spread)" in md
    study3 = load_study("fashion-mnist-attention")
    run_study(study3, tmp_path / "three", trainer="excite.study.runner:synthetic_trainer", log=None)
    from excite.study.report import table

    _, rows, _ = table(tmp_path / "three", profile=False)
    for r in rows[1:]:
        assert r["separated"].startswith("yes") == (r["p_paired"] < 0.05) and r["detectable_80"] > 0
        assert 0 <= r["ci95_low"] < r["mean"] < r["ci95_high"] <= 100


def test_a_variant_is_a_patch_of_a_model_spec(tmp_path):
    v = next(v for v in load_study("resnext-cardinality").variants if v.options)
    spec = v.spec("resnext50_32x4d")
    assert (spec.arch, spec.attention, spec.options) == ("resnext50_32x4d", v.attention, v.options)
    toml = tmp_path / "old.toml"
    toml.write_text('models = ["resnet20"]\nseeds = 1\n[[variant]]\nlabel = "a"\nmodel_kwargs = {groups = 2}\n')
    with pytest.raises(ExciteError, match="takes only attention, attention_kwargs, options, published"):
        load_study(toml)
