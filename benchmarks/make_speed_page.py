"""Write docs/speed.md from the committed result files (no number on that page is typed by hand).

    python benchmarks/make_speed_page.py           # regenerate docs/speed.md
    python benchmarks/make_speed_page.py --check   # exit 1 if docs/speed.md is not what the files give

Reads the newest ``inference-cpu*``, ``train-throughput*`` and ``gpu-cuda*`` files in
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "speed.md"


def _newest(pattern: str) -> list[Path]:
    """Result files matching ``pattern``, one per distinct name stem and machine (newest date wins),
    newest first: a file from another machine is kept beside the new one, not replaced by it. A
    machine is its CPU name and instruction set: hosts that report the same name ("AMD EPYC") with and
    without AVX-512 are different machines."""
    by_key = {}
    for p in sorted(RESULTS.glob(pattern)):
        stem = p.name.rsplit("-20", 1)[0]
        m = json.loads(p.read_text()).get("machine", {})
        by_key[stem, m.get("cpu"), bool(m.get("avx512_bf16")), bool(m.get("amx"))] = p  # by name: the last date is kept
    return sorted(by_key.values(), key=lambda p: (p.name.rsplit("-20", 1)[0], _date(p.name)), reverse=True)


def _date(name: str) -> str:
    found = re.search(r"\d{4}-\d{2}-\d{2}", name)
    return found.group(0) if found else ""


def _ms(t: dict) -> str:
    return f"{1e3 * t['median_s']:.0f} ({1e3 * t['q25_s']:.0f}-{1e3 * t['q75_s']:.0f})"


def _machine(d: dict) -> str:
    m = d["machine"]
    isa = "AVX-512 with bf16 and AMX" if m.get("amx") else "AVX-512 with bf16" if m.get("avx512_bf16") else "no AVX-512 bf16"
    return (f"{m['cpu']} ({isa}), {m['cores']} cores, torch {m['torch']}, {d.get('threads', m['threads'])} thread(s); "
            f"load average at start {m['loadavg_1_5_15min'][0]:.1f}; {d['date']}")


def _measured(t: dict) -> str:
    """The ratio, with the quartiles of its rounds when they were paired."""
    if not t.get("paired"):
        return f"{t['ratio']:.3f}"
    return f"{t['ratio']:.3f} ({t['ratio_q25']:.3f}-{t['ratio_q75']:.3f})"


def _targets(targets: list[dict]) -> list[str]:
    rows = ["| target | measured (round quartiles) | goal | verdict |", "|---|---|---|---|"]
    rows += [f"| {t['target']} | {_measured(t)} | {t['goal']} | {t['verdict']} |" for t in targets]
    return rows


def inference_section(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = [f"### `{path.name}`", "", f"{d.get('label', '')}. {_machine(d)}; input {d['input_size']}px, "
           f"{d['reps']} rotated rounds per variant (or as each batch says).", ""]
    for batch, b in d["batches"].items():
        rounds = f", {b['rounds']} rounds" if "rounds" in b else ""
        out += [f"**Batch {batch}**{rounds}: median ms (quartiles); `*` too noisy (IQR > 10% of the median)", "",
                "| model | variant | ms | IQR/median | max rel err vs eager | build s |", "|---|---|---|---|---|---|"]
        for k, t in b["timings"].items():
            a, v = k.split(" | ")
            out.append(f"| {a} | {v} | {_ms(t)}{' *' if t['too_noisy'] else ''} | {100 * t['iqr_rel']:.0f}% | "
                       f"{b['max_rel_err_vs_eager'].get(k, 0):.1e} | {b['build_s'].get(k, '-')} |")
        out += ["", f"Lowest median: {', '.join(b['fastest'].values())}.", ""]
        out += _overhead(b)
    out += ["**Targets**", ""] + _targets(d["targets"]) + [""]
    return out


def _overhead(b: dict) -> list[str]:
    if not b.get("overhead"):
        return []
    out = ["Where the attention's time goes (optimized model minus optimized plain model, `torch.profiler` self "
           "CPU time per operator, seconds per call) and its memory-traffic floor (one extra read of every "
           "attended activation at the measured read bandwidth):", "",
           "| attention | extra by operator | floor: extra bytes | floor: share of plain time |", "|---|---|---|---|"]
    for a, o in b["overhead"].items():
        ops = ", ".join(f"{k.replace('aten::', '')} {v:+.3f}" for k, v in list(o["breakdown"]["extra_by_op_s"].items())[:5])
        f = o["floor"]
        out.append(f"| {a} | {ops} | {f['extra_read_bytes'] / 1e6:.1f} MB | {100 * f['floor_fraction_of_plain']:.1f}% |")
    return out + [""]


def _header(path: Path, d: dict, how: str) -> list[str]:
    """A result file's heading and its machine line, ending with ``how`` it was measured."""
    return [f"### `{path.name}`", "", f"{d.get('label', '')}. {_machine(d)}; {how}.", ""]


def memory_section(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = _header(path, d, f"each sample a fresh process (median of 3 calls after 2 untimed), {d['reps']} samples "
                           "per variant, order rotated") + [
           "| model | batch | variant | ms (quartiles) | IQR/median | page faults per call |", "|---|---|---|---|---|---|"]
    for c in d["cases"]:
        for k, t in c["timings"].items():
            out.append(f"| {c['model']}+{c['attention']} | {c['batch']} | {k} | {_ms(t)}{' *' if t['too_noisy'] else ''}"
                       f" | {100 * t['iqr_rel']:.0f}% | {t['faults_per_call']:.0f} |")
    return out + ["", "**Targets**", ""] + _targets([c["target"] for c in d["cases"]]) + [""]


def _fmt(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.2f}"


def conv_gap_section(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = _header(path, d, f"input {d['input_size']}px, {d['reps']} profiled calls")
    for batch, b in d["batches"].items():
        out += [f"**Batch {batch}**: ONNX Runtime's convolutions (activation and addition fused in) "
                f"{1e3 * b['onnxruntime_conv_s']:.1f} ms per call, PyTorch's (oneDNN) {1e3 * b['pytorch_conv_s']:.1f} ms "
                f"plus {1e3 * b['pytorch_rest_s']:.1f} ms of everything else; the ten largest:", "",
                "| input, weight | onnxruntime ms | pytorch ms (profiler) | pytorch / onnxruntime | pytorch ms "
                "(clocked calls) | clocked / onnxruntime |", "|---|---|---|---|---|---|"]
        for r in b["rows"][:10]:
            cells = [_fmt(r["pytorch_s"], 1e3), _fmt(r["ratio"]), _fmt(r.get("pytorch_timed_s"), 1e3), _fmt(r.get("timed_ratio"))]
            out.append(f"| {r['shapes']} | {1e3 * r['onnxruntime_s']:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def train_section(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    compiled = any("compile_s" in t for r in d["results"] for t in r["timings"].values())
    extra = (" compile s |", "---|") if compiled else ("", "")
    out = _header(path, d, f"{d['input_size']}px, {d['reps']} rotated rounds per variant") + [
           f"| model | batch | variant | img/s | step ms (quartiles) | IQR/median |{extra[0]}",
           f"|---|---|---|---|---|---|{extra[1]}"]
    for r in d["results"]:
        for k, t in r["timings"].items():
            build = (f" {t['compile_s']:.0f} |" if "compile_s" in t else " - |") if compiled else ""
            out.append(f"| {r['model']} | {r['batch']} | {k} | {t['img_per_s']:.1f} | {_ms(t)}"
                       f"{' *' if t['too_noisy'] else ''} | {100 * t['iqr_rel']:.0f}% |{build}")
    return out + ["", "**Targets**", ""] + _targets(d["targets"]) + [""]


def gpu_section(paths: list[Path]) -> list[str]:
    if not paths:
        return ["No GPU result yet: `benchmarks/gpu.py` is ready (`--dry-run` checks it on a CPU in the tests) and "
                "runs in under 5 minutes on a GPU; its result file will appear here.", ""]
    out = []
    for p in paths:
        d = json.loads(p.read_text())
        out += [f"### `{p.name}`", "", f"{d['device'].get('gpu', d['device']['device'])}, torch {d['device']['torch']}", "",
                "| setting | verdict |", "|---|---|"] + [f"| {k} | {v} |" for k, v in d["verdicts"].items()] + [""]
    return out


INTRO = """# Speed

Every number on this page comes from a result file in `benchmarks/results/`, written by a benchmark
script and turned into this page by `benchmarks/make_speed_page.py`.

## How it is measured

`excite.deploy.timing` holds the rules every benchmark here follows: every variant gets the same
warm-up (a compile is paid before and reported apart, as "build s"); at least 9 repetitions, the
order of the variants rotated between them; medians with quartiles. A target compares two variants
round by round (every round runs each variant once, back to back, so a slow spell of the machine,
which on this VM moves whole rounds by 10-30%, slows both sides of a round alike): its ratio is the
median of the rounds' ratios, shown with their quartiles, and when their interquartile range exceeds
10% of the median the target is "not measured: too noisy", never met. Files written before rounds were
paired (they show no quartiles) compare medians, and there either timing's spread above 10% makes the
target too noisy. ONNX Runtime runs with intra-op spinning off (its default keeps idle threads spinning
after each call, which slowed whatever ran next on two cores). The eager baseline is cross-checked
against an independent torchvision-style ResNet-50 (`benchmarks/lookalike.py`) with the same weights.

The files below were measured with no other job on the machine (each file's load average is in its
header line; about 2 on these 2 cores is the benchmark's own threads). Even so, many timings on this
virtual machine vary by more than 10% between repetitions, and those comparisons are reported as
"not measured: too noisy" rather than as met or missed; the ratios are shown either way.

Each benchmark keeps its newest file per machine, and a machine is its CPU name with its instruction
set: the project's 2-core VM has run on AMD EPYC hosts with AVX2 only and with AVX-512 (and bf16), and
on an Intel Xeon with AVX-512 and AMX. The AVX2 hosts are the slower ones (ResNet-50 at batch 16
about 1.0 s optimized, against 0.8 s with AVX-512), and the ones this project targets.

## Which path to use

`excite bench MODEL --runtimes` times PyTorch eager, `optimize_for_inference` (default, with
`keep_memory=False`, and compiled with `compile="jit"`; `--compile` adds `"inductor"`), ONNX Runtime and
OpenVINO (in a subprocess, when installed) side by side on this machine and names the fastest, or says
the noise does not allow it. `excite export onnx` points there.

```python
import torch
import excite

model = excite.create_model("resnet20", attention="eca").eval()
x = torch.randn(2, 3, 32, 32)
fast = excite.optimize_for_inference(model, compile="jit", example_input=x)  # traced and frozen now
with torch.no_grad():
    assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-5)
```

`optimize_for_inference(model)` with defaults stays an eager module: BatchNorm folded, the attention
rescale fused into the residual addition, the squeeze pooled through the 1x1 convolution before it,
each ReLU after a convolution computed by that convolution (a oneDNN post-op) and a plain block's last
addition and ReLU in one pass (graph rewrites of each residual block), channels-last, and every convolution weight of 512 KB or more
reordered for oneDNN once per input shape instead of on every call (`excite.models.prepack`; the
threshold is where `prepack-threshold-*.json` shows the packed call paying). It needs no example input
and no compile. `compile="inductor"` (freezing: prepacked oneDNN weights, fused pointwise tails)
compiles on the first call per input shape (tens of seconds on 2 cores); `compile="jit"`
(`torch.jit.freeze` + oneDNN fusion) is traced in seconds. Which one is fastest is the tables' to say.

An optimized model also keeps the memory its call frees for the call's later allocations and for the
next call (`keep_memory=True`, `excite.models.memory`): glibc maps every block above 32 MiB afresh and
PyTorch allocates each activation anew, so without it ResNet-50's 51 MB activations at batch 16 are
faulted in page by page on every call (`memory-kept-*.json`, below). After the call, large blocks are
mapped again as glibc does; what the call freed stays in the process, up to 1 GiB, as an arena's
blocks do. `excite.deploy.keep_freed_memory(False)` hands it back. In inference files written before
this was the default, "excite optimized" ran without it and their "memory kept" rows are what the
default does now.

## What stands in the way

Where a target below is missed, this is what the measurements show:

- **ONNX Runtime's lead is in the convolution kernels, and on the AVX2 host in all of them.** Matched
  convolution by convolution (`conv-gap-*.json`, below; prepacked weights), PyTorch's oneDNN
  convolutions, each clocked inside the model, take 1.14x ONNX Runtime's MLAS convolutions' time in
  all at batch 1 and 1.17x at batch 16 on the AVX2 EPYC (0.91-1.36x one by one; MLAS's include the
  ReLU and addition it fuses into them), where the AVX-512 hosts had most of them within about 5%.
  (`torch.profiler` charges the first stage's 1x1 expansion to 256 channels with 8.6x at batch 16;
  clocked, that convolution is 1.36x. Earlier pages read the profiler's figure as a slow kernel.) ONNX
  Runtime also fuses every ReLU and addition into its convolutions ("rest" in the table is PyTorch's
  separate passes for them). excite now does what PyTorch's kernels allow of that: a ReLU after a
  convolution is the convolution's oneDNN post-op, and a plain block's last addition and ReLU are one
  pass (ATen's `_add_relu_`); measured block by block (`post-ops-*.json`, below), a plain bottleneck's
  end takes 0.85-0.97 of the two passes and conv2 with its ReLU as a post-op 0.91-1.00 of the two.
  Writing the sum into the block's input, as ONNX Runtime does, would overwrite a tensor the caller
  may still hold. (An earlier attempt fused into new tensors and measured within noise.)
- **An attention block's end is one pass more than a plain block's.** The plain block now ends in one
  pass (addition and ReLU), an attention block in two (`addcmul`, then ReLU): PyTorch has no one-pass
  `relu(identity + y * gate)`, and the gate multiply as a oneDNN binary post-op of conv3 (the gate is
  known before conv3 runs, since the squeeze is pooled from conv3's input) measured up to 9% slower
  than conv3 followed by `addcmul` (`post-ops-*.json`). The ReLU fusion made the plain network faster
  by about that pass, so SE's and ECA's measured overhead on ResNet-50 did not fall with it.
- **At batch 1 the attention costs operator calls, not bytes.** The squeeze, gate and rescale of a
  block are about ten small operators; at 20-30 microseconds of dispatch each (`torch.profiler`
  self time), sixteen blocks add several percent to a 35-40 ms forward pass although their memory
  traffic is under 1% ("floor" column). Only a compiler that fuses them (Inductor) comes near the 2%
  goal there.
- **CBAM's spatial gate reads the whole activation twice** (channel max and mean) after writing the
  channel-gated tensor, three full passes in eager mode that no rewrite removes without a fused kernel.

## Training

What a gate costs in a training step on ResNet-20 and ResNet-56 is mostly small operators with a
forward and a backward each, and full-size passes over every attended activation, not arithmetic.
Several had slow paths in PyTorch's CPU kernels or autograd formulas, and the gates avoid them
(`excite.attention.fused`, tested against PyTorch's own operators, outputs and gradients):

- a 1x1 convolution on a pooled 1x1 map (SE's and CBAM's MLPs) runs as a matrix product;
- ECA's k taps run as an unfold and a product in training, faster than `Conv1d` on (B, 1, C) sequences;
- the average pool is a sum and a division in training: the sum's backward is a broadcast view that
  autograd adds in place, where the mean's divides a broadcast into a new tensor;
- the channel rescale of a large activation runs as batch normalization in evaluation mode on the
  (1, B*C, H, W) view, whose backward gets both gradients in one read;
- CBAM's max pools build their backward's tie mask in floating point (boolean kernels are several
  times slower);
- CBAM's and triplet attention's 2 -> 1 channel 7x7 convolution runs on 4x4 pixel blocks folded into
  channels, a dense 32 -> 16 channel 3x3 convolution on a 4x smaller grid, where that is faster;
- in a residual block, a channel gate's rescale and the addition are one `torch.addcmul` (a pass
  fewer forward, the same backward) on activations below 2M elements, where the rescale is the plain
  product anyway, when no hook watches the attention module (`excite.attention.gated_add`).

The "compiled" rows (a separate file, `--compile`) run each step through `torch.compile`, as
`excite train --compile` does; their compile is paid before the timing and shown in its own column.
Inductor fuses the pools, the gates and the rescales into the surrounding kernels, which eager
PyTorch cannot.

The "plain ops" rows time the same models with PyTorch's own operators
(`excite.attention.fused.plain_operators()`, which also turns `gated_add` back into the module call and
the addition), so the difference is what these functions save. What
remains is the pools, the gates' small operators and the rescale with their backward passes, which at
ResNet-20's widths (16-64 channels) weigh as much as a small share of the block's own convolutions,
batch normalizations and additions, and per-operator dispatch at batch 32; the tables say how far each
step stays from the goal.

"""


MEMORY = """`benchmarks/memory_kept.py` times `optimize_for_inference(model)` against `keep_memory=False`
with every sample in a fresh process: the setting is glibc's, for the whole process, so a process that
has run one variant no longer measures the other as a user would."""

POST_OPS = """`benchmarks/post_ops.py` times the one-pass forms of the inference rewrite against the two
passes they replace, on ResNet-50's four bottleneck widths (conv3 with a prepacked weight, channels-last):
a plain block's end (addition and ReLU), an attention block's end (the gate multiply as conv3's oneDNN
post-op, the form left out, against `addcmul` and ReLU) and conv2 with its ReLU. Each cell is fused time
/ unfused time, the median of paired rounds with their quartiles; `*` too noisy."""


def post_ops_section(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = [f"### `{path.name}`", "", f"{d.get('label', '')}. {_machine(d)}.", "",
           "| stage | conv3 | batch | plain end: one pass | attention end: gate post-op | conv2: ReLU post-op |",
           "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        cells = [f"{_measured(c)}{' *' if c['met'] is None else ''}" for c in r["ratios"]]
        out.append(f"| {r['stage']} | {r['conv3']} | {r['batch']} | " + " | ".join(cells) + " |")
    return out + [""]


CONV_GAP = """`benchmarks/conv_gap.py` profiles both runtimes on the same ResNet-50 and matches their
convolutions by shape. Profilers slow every call alike, so compare the ratios, not the totals with the
timed runs above. `torch.profiler`'s self time can also be charged to the wrong operator: files from
2026-12-06 on add each PyTorch convolution timed by a clock around its module call inside the model
("clocked calls", Python included), which is the figure to trust where the two disagree."""


def build() -> str:
    lines = [INTRO, "## Inference (CPU)", ""]
    for p in _newest("inference-cpu*.json"):
        if "batches" in json.loads(p.read_text()):  # older files used another layout
            lines += inference_section(p)
    lines += ["## Freed memory kept during a call", "", MEMORY, ""]
    for p in _newest("memory-kept-2*.json"):
        lines += memory_section(p)
    lines += ["## One-pass forms of the inference rewrite", "", POST_OPS, ""]
    for p in _newest("post-ops-2*.json"):
        lines += post_ops_section(p)
    lines += ["## Where ONNX Runtime's lead comes from", "", CONV_GAP, ""]
    for p in _newest("conv-gap-cpu*.json"):
        lines += conv_gap_section(p)
    lines += ["## Training throughput (CPU)", ""]
    for p in _newest("train-throughput-*.json"):
        if json.loads(p.read_text()).get("targets") is not None:
            lines += train_section(p)
    lines += ["## GPU", ""] + gpu_section(_newest("gpu-cuda*.json"))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    text = build()
    if a.check:
        same = PAGE.exists() and PAGE.read_text() == text
        print("docs/speed.md is up to date" if same else "docs/speed.md differs from the result files: regenerate it")
        return 0 if same else 1
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
