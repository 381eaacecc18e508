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

from excite.errors import ExciteError
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
    card = [(v.model_kwargs["groups"], v.model_kwargs["width_per_group"]) for v in load_study("resnext-cardinality").variants]
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
                             **v.model_kwargs)


def test_bad_study_is_one_clear_error(tmp_path):
    with pytest.raises(ExciteError, match="unknown study"):
        load_study("eca-tabel2")
    p = tmp_path / "bad.toml"
    p.write_text('baseline = "x"\n[[variant]]\nlabel = "a"\n')
    with pytest.raises(ExciteError, match="baseline 'x'"):
        load_study(p)


def test_statistics_match_a_hand_computed_example():
    s = summarize([70.0, 72.0, 74.0])
    assert s.mean == 72.0 and s.std == pytest.approx(2.0)
    # Student t, 2 degrees of freedom: closed form t_p = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975 -> 4.30265.
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert s.ci_high - s.mean == pytest.approx(t * 2.0 / math.sqrt(3), rel=1e-6)
    # Paired differences 2, 3, 1: mean 2, sd 1, t = 2 / (1 / sqrt 3) = sqrt 12; with 2 degrees of freedom
    # the CDF is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - sqrt(12) / sqrt(14) = 0.07418.
    delta, p, n = paired_ttest({0: 72, 1: 74, 2: 73, 9: 50}, {0: 70, 1: 71, 2: 72})
    assert (delta, n) == (2.0, 3)
    assert p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)


def test_small_study_end_to_end_with_report(tmp_path):
    """Real models trained on generated data; then the report in all three formats."""
    study = load_study(_tiny(tmp_path), overrides=dict(seeds=[0, 1]))
    counts = run_study(study, tmp_path / "s", trainer="excite.study.runner:toy_trainer", log=None)
    assert counts == dict(total=4, skipped=0, done=4)
    assert run_study(study, tmp_path / "s", trainer="excite.study.runner:toy_trainer", log=None)["done"] == 0
    paths = write_report(tmp_path / "s", profile=False)
    md = paths["markdown"].read_text()
    assert "| resnet20 | eca | 77.43 |" in md and "| resnet20 | none | 75.20 |" in md
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
    assert "already finished" in out.stdout and "6 runs" in out.stdout


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

    from excite.registry import create_attention
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
    assert page.read_text().count("data:image/png;base64,") == 2
