"""Write the documentation's result tables and pictures from the committed files in benchmarks/results/.

    python docs/gen_results.py           # rewrite docs/_generated/*.md and docs/img/ (results part)
    python docs/gen_results.py --check   # exit 1 if a generated table differs from its source file

Every table names the file it was read from, the machine and the date, and says when the machine
was shared with other jobs (load average above its core count), so no number on a page stands
without its evidence. The pages include the tables with ``--8<-- "NAME.md"`` (pymdownx.snippets).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "_generated"
IMG = ROOT / "docs" / "img"

# Folders whose files carry no date of their own: the date of the run, as recorded when the
# results were committed (the commit that added each report).
UNDATED = {"study-eca-table2-digits": "2026-11-24", "study-resnet-v2-activations-digits": "2026-11-29",
           "study-stn-rts": "2026-11-29"}


NO_LOAD = "the machine's load was not recorded"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _source(path: Path, machine: str, date: str, load: str = "") -> str:
    """The evidence line under every table."""
    tail = f"; {load}" if load else ""
    return f"Source: `{_rel(path)}` ({machine}; {date}{tail})."


def _machine(m: dict) -> str:
    """``AMD EPYC, 2 cores, torch 2.13.0+cpu, Python 3.11.7`` from a result file's ``machine``."""
    parts = [m.get("cpu") or m.get("cpu_model", "?")]
    cores = m.get("cores") or m.get("cpu_count")
    if cores:
        parts.append(f"{cores} cores")
    parts.append(f"torch {m.get('torch', '?')}")
    if m.get("python"):
        parts.append(f"Python {m['python']}")
    return ", ".join(parts)


def _load(loads, cores) -> str:
    """Say whether the machine was shared: a 1-minute load average well above the core count (a
    benchmark's own threads count in it, as in ``excite.deploy.machine.machine_label``)."""
    loads = [x for x in loads if x is not None]
    if not loads or not cores:
        return ""
    lo, hi = min(loads), max(loads)
    shared = hi > cores + 0.5
    span = f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}-{hi:.1f}"
    return (f"load average {span} on {cores} cores: **a shared, loaded machine**" if shared
            else f"load average {span} on {cores} cores: a quiet machine")


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _f(x, nd=2, signed=False) -> str:
    if x in (None, "", "nan") or (isinstance(x, float) and x != x):
        return "-"
    x = float(x)
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


# -- the demo --------------------------------------------------------------------------------------

def demo(folder: str) -> str:
    path = RESULTS / folder
    rows = list(csv.DictReader(open(path / "summary.csv")))
    info = next((path / n for n in ("MACHINE.txt", "machine.txt") if (path / n).exists()))
    text = info.read_text()
    body = []
    for r in rows:
        ci = f"[{_f(r['ci95_low'])}, {_f(r['ci95_high'])}]"
        body.append([r["attention"], f"{int(r['params']):,}", f"{int(r['macs']):,}",
                     f"{float(r['img_per_s_mean']):.0f} +- {float(r['img_per_s_std']):.0f}",
                     f"{float(r['top1_mean']):.2f} +- {float(r['top1_std']):.2f}", ci,
                     _f(r["delta_vs_none"], signed=True), _f(r["p_paired"], 3), _f(r["detectable_80"]),
                     r["separated"]])
    table = _table(["attention", "params", "MACs (32x32)", "train img/s", f"top-1 (%), {rows[0]['runs']} seeds",
                    "95% CI", "vs none (pp)", "p (paired t)", "detectable at 80% power (pp)", "separated?"], body)
    if "H200" in text:
        machine = "one NVIDIA H200, 16-core Intel Xeon host, torch 2.11.0+cu130, Python 3.12.3"
        date = re.search(r"Nov (\d+) .* (\d{4})", text)
        date = f"{date.group(2)}-11-{int(date.group(1)):02d}" if date else folder[5:15]
        load = ""
    else:
        machine = text.split("\n", 1)[0].removeprefix("machine: ").replace("Python Python", "Python")
        date = folder[5:15]
        wall = re.search(r"wall time: ([^,\n]+)(, (.*))?", text)
        load = f"wall time {wall.group(1)}, {wall.group(3)}" if wall and wall.group(3) else ""
    return table + "\n\n" + _source(path / "summary.csv", machine, date, load) + "\n"


# -- training and profiling speed --------------------------------------------------------------------

def train_throughput(name: str) -> str:
    path = RESULTS / name
    d = json.load(open(path))
    body = []
    for res in d["results"]:
        for v in res["variants"]:
            iqr = (v["q75_s"] - v["q25_s"]) / v["median_s"]
            body.append([res["model"], v["label"], f"{v['img_per_s']:.0f}", f"{v['ratio']:.3f}",
                         f"{iqr:.0%}" + (" (too noisy)" if iqr > 0.10 else "")])
    table = _table(["model", "attention", "train img/s", "time x plain", "IQR / median"], body)
    what = (f"One SGD step of batch {d['batch_size']} at {d['input_size']}x{d['input_size']}, the variants "
            f"interleaved, median of {d['runs']} rounds, {d['machine']['threads']} threads.")
    return what + "\n\n" + table + "\n\n" + _source(path, _machine(d["machine"]), d["date"][:10], NO_LOAD) + "\n"


def profile_speed(name: str) -> str:
    path = RESULTS / name
    d = json.load(open(path))
    body = [[r["model"], "x".join(map(str, r["input"][1:])), f"{r['profile_s']:.3f}", f"{r['forward_s']:.3f}",
             f"{r['profile_over_forward']:.2f}"] for r in d["rows"]]
    table = _table(["model", "input", "profile (s)", "one real forward pass (s)", "profile / forward"], body)
    what = (f"`python benchmarks/profile_speed.py`: the time to profile a model against one real forward "
            f"pass of it (best of {d['repeats']}).")
    return what + "\n\n" + table + "\n\n" + _source(path, _machine(d["machine"]), d["date"][:10], NO_LOAD) + "\n"


def cli_startup(name: str) -> str:
    path = RESULTS / name
    d = json.load(open(path))
    body = [[f"`{r['command']}`", f"{r['median_s']:.2f}", f"{r['min_s']:.2f}"] for r in d["rows"]]
    table = _table(["command", "median (s)", "fastest (s)"], body)
    load = _load(d.get("loadavg", []), d["machine"].get("cores"))
    return (f"`python benchmarks/cli_startup.py`, {d['repeats']} interleaved runs of each:\n\n" + table + "\n\n"
            + _source(path, _machine(d["machine"]), d["date"][:10], load) + "\n")


# -- inference ---------------------------------------------------------------------------------------

_RUNTIMES = ("pytorch eager", "excite optimized", "excite optimized, memory kept", "excite optimized, jit",
             "excite optimized, inductor", "onnxruntime fp32")


def _rounds(d: dict) -> str:
    per_batch = {b: v.get("rounds", d["reps"]) for b, v in d["batches"].items()}
    if len(set(per_batch.values())) == 1:
        return f"{d['reps']} rounds"
    return "rounds " + ", ".join(f"{n} at batch {b}" for b, n in per_batch.items())


def inference(name: str) -> str:
    """Each runtime of ``benchmarks/inference.py``'s file for ResNet-50 and ECA-ResNet-50, against eager."""
    path = RESULTS / name
    d = json.load(open(path))
    body = []
    for batch, b in d["batches"].items():
        t = b["timings"]
        for model in ("none", "eca"):
            eager = t[f"{model} | pytorch eager"]["median_s"]
            for runtime in _RUNTIMES:
                r = t.get(f"{model} | {runtime}")
                if r is None:
                    continue
                body.append([batch, model, runtime, f"{r['median_s'] * 1000:.1f}",
                             f"{r['q25_s'] * 1000:.1f}-{r['q75_s'] * 1000:.1f}" + (" (too noisy)" if r["too_noisy"] else ""),
                             f"{eager / r['median_s']:.2f}x"])
    table = _table(["batch", "model", "runtime", "median ms", "IQR ms", "x eager"], body)
    loads = [x[0] for x in d.get("loadavg_per_batch", [])]
    load = _load(loads, d["machine"].get("cores"))
    return (f"ResNet-50 (`none`) and ECA-ResNet-50 (`eca`) at {d['input_size']}x{d['input_size']}, random weights, "
            f"{d['threads']} thread(s), {_rounds(d)} with every runtime interleaved in one process.\n\n"
            + table + "\n\n" + _source(path, _machine(d["machine"]), d["date"][:10], load) + "\n")


def under_load(name: str) -> str:
    path = RESULTS / name
    d = json.load(open(path))
    body = []
    for phase, p in d["phases"].items():
        for setting, s in p["settings"].items():
            body.append([phase, setting, s["threads"], f"{s['train_img_s']:.1f}", f"{s['infer_img_s']:.1f}"])
    table = _table(["phase", "setting", "threads", "train img/s", "infer img/s"], body)
    loads = [x for p in d["phases"].values() for x in (p.get("load_before", [None])[0], p.get("load_after", [None])[0])]
    load = _load(loads, d["machine"].get("cores"))
    what = (f"{d['model']}, batch {d['batch']} at {d['input_size']}x{d['input_size']}, {d['steps']} steps, "
            f"{d['rounds']} round(s); the competitor: {d['competitor']}.")
    return what + "\n\n" + table + "\n\n" + _source(path, _machine(d["machine"]), d["date"][:10], load) + "\n"


def attach_coverage(name: str) -> str:
    path = RESULTS / name
    d = json.load(open(path))
    groups: dict[str, list[str]] = {}
    tracers: dict[str, int] = {}
    for key, m in d["models"].items():
        groups.setdefault(key.split("/", 1)[0], []).append(key.split("/", 1)[1])
        tracers[m["tracer"]] = tracers.get(m["tracer"], 0) + 1
    body = [[g, len(v), ", ".join(f"`{x}`" for x in v)] for g, v in groups.items()]
    table = _table(["group", "networks", "names"], body)
    c = d["counts"]
    return (f"**{c['ok']} of {d['total']}** attach correctly ({c['wrong']} wrong, {c['refused']} refused, "
            f"{c['error']} errors; read by " + ", ".join(f"{k}: {v}" for k, v in tracers.items()) + ").\n\n"
            + table + "\n\n" + _source(path, _machine(d["machine"]), d["date"][:10], NO_LOAD) + "\n")


# -- real data and studies ---------------------------------------------------------------------------

def fashion_mnist_plain(folder: str) -> str:
    path = RESULTS / folder / "plain-resnet20.json"
    d = json.load(open(path))
    lb = d["leaderboard"]
    body = [["**ResNet-20 (excite, 30 epochs, 1 run)**", f"**{d['params'] / 1e6:.2f}M**", f"**{d['top1']:.2f}**", "this run"]]
    for k, v in lb.items():
        if k == "source":
            continue
        params = re.search(r"\((.*?) params\)", k)
        body.append([re.sub(r" \(.*?\)", "", k), params.group(1) if params else "-", v, "Fashion-MNIST benchmark table"])
    m = d["machine"]
    gpu = m.get("gpus", ["?"])[0]
    gpu = gpu.get("name", gpu) if isinstance(gpu, dict) else gpu
    machine = f"{gpu}, {m['cpu_count']}-core {m['cpu_model']} host, torch {m['torch']}, Python {m['python']}"
    table = _table(["model", "parameters", "test top-1 (%)", "source"], body)
    return (f"`{d['command']}`\n\n" + table + "\n\n"
            + _source(path, machine, "2026-11-29", d.get("note", "")) + "\n")


def fashion_mnist_cpu(folder: str) -> str:
    path = RESULTS / folder / "cpu-epoch-time.json"
    d = json.load(open(path))
    body = [[k, v, f"{d['full_epoch_estimate_s'][k] / 60:.0f}"] for k, v in d["img_per_s"].items()]
    table = _table(["attention", "train img/s (1 thread)", "minutes an epoch (60,000 images)"], body)
    m = d["machine"]
    machine = f"{m['cpu_model']}, {m['cpu_count']} cores, torch {m['torch']}, Python {m['python']}"
    load = f"load average {m['load_average_at_start']} at the start, shared by {m['shared_by']}"
    return table + "\n\n" + _source(path, machine, d["date"][:10], load) + "\n"


def study(folder: str, date: str | None = None) -> str:
    """The table of a study's committed report.md, with its machine line and date."""
    path = RESULTS / folder / "report.md"
    text = path.read_text()
    machine = re.search(r"\*\*(\d+ runs on .*?)\.?\*\*", text).group(1)
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| model"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    date = date or UNDATED.get(folder) or re.search(r"\d{4}-\d{2}-\d{2}", folder).group(0)
    return "\n".join(lines[start:end]) + "\n\n" + _source(path, machine, date) + "\n"


def study_plot(folder: str, title: str = "accuracy vs parameters") -> bytes:
    """The PNG that ``excite study report`` embedded in the study's report.html."""
    html = (RESULTS / folder / "report.html").read_text()
    m = re.search(r'<img alt="' + re.escape(title) + r'" src="data:image/png;base64,([^"]+)"', html)
    return base64.b64decode(m.group(1))


def getting_started(folder: str) -> str:
    """The measured times of following docs/getting-started.md in a brand-new virtual environment."""
    path = RESULTS / folder / "timings.json"
    d = json.load(open(path))
    steps = [("install (`python3 -m pip install torch==2.13.0 -e .`)", "install_s"),
             ("`python3 -m excite demo --quick`", "quick_s"), ("`python3 -m excite demo`", "demo_s")]
    rows = []
    for label, key in steps:
        s = d["steps"].get(key)
        if s is None:
            rows.append([label, "not measured", "-"])
            continue
        load = f"{s['load_before']:.1f} -> {s['load_after']:.1f}"
        rows.append([label, f"{s['seconds'] // 60} min {s['seconds'] % 60} s", load])
    table = _table(["step", "wall time", "load average (1 min) before -> after"], rows)
    cores = d["machine"]["cores"]
    loads = [v for s in d["steps"].values() for v in (s["load_before"], s["load_after"])]
    return (table + "\n\n" + _source(path, _machine(d["machine"]), d["date"], _load(loads, cores)) + " "
            + d.get("note", "") + "\n")


def builtin_studies() -> str:
    """The built-in studies with the title their TOML gives them."""
    import tomllib

    rows = []
    for path in sorted((ROOT / "src" / "excite" / "study").glob("*.toml")):
        spec = tomllib.loads(path.read_text())
        rows.append([f"`{path.stem}`", spec.get("title", "")])
    return _table(["study", "what it compares (source)"], rows) + "\n"


# -- the whole set -----------------------------------------------------------------------------------

def tables() -> dict[str, str]:
    """Generated file name -> its Markdown."""
    return {
        "demo-cpu.md": demo("demo-2026-12-04-cpu"),
        "demo-gpu.md": demo("demo-2026-11-29"),
        "train-throughput.md": train_throughput("train-throughput-2026-11-24.json"),
        "profile-speed.md": profile_speed("profile-speed-2026-11-24.json"),
        "cli-startup.md": cli_startup("cli-startup-2026-11-29.json"),
        "inference.md": inference("inference-cpu-2026-12-06.json"),
        "under-load-cpu.md": under_load("under-load-cpu-2026-11-29.json"),
        "under-load-tiny.md": under_load("under-load-tiny-2026-11-29.json"),
        "attach-coverage.md": attach_coverage("attach-coverage-lookalikes-2026-12-02.json"),
        "fashion-mnist-plain.md": fashion_mnist_plain("fashion-mnist-2026-11-29"),
        "fashion-mnist-cpu.md": fashion_mnist_cpu("fashion-mnist-2026-11-29"),
        "study-fashion-mnist.md": study("fashion-mnist-2026-11-29/study", "2026-11-29"),
        "study-eca-table2.md": study("study-eca-table2-digits"),
        "study-resnet-v2-activations.md": study("study-resnet-v2-activations-digits"),
        "study-stn-rts.md": study("study-stn-rts"),
        "builtin-studies.md": builtin_studies(),
        "getting-started-timings.md": getting_started("getting-started-2026-12-02"),
    }


def pictures() -> dict[str, bytes]:
    """Picture file name (under docs/img) -> its bytes, each made by excite's own commands."""
    return {
        "demo-summary.png": (RESULTS / "demo-2026-12-04-cpu" / "summary.png").read_bytes(),
        "study-fashion-mnist.png": study_plot("fashion-mnist-2026-11-29/study", "per-seed results"),
        "study-eca-table2.png": study_plot("study-eca-table2-digits"),
        "study-resnet-v2-activations.png": study_plot("study-resnet-v2-activations-digits", "per-seed points"),
        "study-stn-rts.png": study_plot("study-stn-rts", "per-seed points"),
    }


def main(argv: list[str]) -> int:
    generated = {OUT / k: v.encode() for k, v in tables().items()}
    generated.update({IMG / k: v for k, v in pictures().items()})
    if "--check" in argv:
        stale = [_rel(p) for p, data in generated.items() if not p.exists() or p.read_bytes() != data]
        if stale:
            print("out of date (run python docs/gen_results.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    for p, data in generated.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    print(f"wrote {len(generated)} files under docs/_generated and docs/img")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
