"""Inference benchmark: excite's PyTorch paths against ONNX Runtime (and OpenVINO), with a method that cannot flatter.

    python benchmarks/inference.py                      # ResNet-50 +none/eca/se/cbam at 224px, batch 1 and 16
    python benchmarks/inference.py --batches 1 --backends jit
    python benchmarks/inference.py --smoke              # ResNet-50 at 32px, batch 1 and 2: checks the script
    python benchmarks/inference.py --extra              # also bf16, int8 agreement, compiled training step

Method (``excite.deploy.timing``): every variant warmed the same (compiles are paid before and reported
apart as ``compile_s``), >= 9 rounds with the order rotated between them (three times as many at batch
1), medians and quartiles; a target's ratio is the median of its rounds' ratios (both variants timed
in the same round), and "not measured: too noisy" when their IQR exceeds 10% of it. ONNX Runtime
runs with intra-op spinning off, so that its idle threads take no CPU from the variant after it. The
eager baseline is cross-checked against an independent torchvision-style ResNet-50 (``lookalike.py``)
with the same weights. Every variant's output is compared with eager's. OpenVINO, when installed,
runs in a subprocess (in-process it crashed a later torch test), timed by the same method there.
The default path keeps freed memory during its calls; what that is worth needs a fresh process per
sample (the setting is process-wide), so ``memory_kept.py`` measures it.

Writes benchmarks/results/inference-<cpu|smoke>-<date>.json with the machine, load average, every
timing with its quartiles, the attention overhead broken down by operator, and each target's verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import excite  # noqa: E402
from excite.deploy.bench import save_results  # noqa: E402
from excite.deploy.machine import machine_label  # noqa: E402
from excite.deploy.onnx_export import export_onnx  # noqa: E402
from excite.deploy.runtimes import openvino_timing  # noqa: E402
from excite.deploy.threads import auto_threads  # noqa: E402
from excite.deploy.timing import MIN_REPS, compare, ort_session, summarize, time_rotated  # noqa: E402
from lookalike import ResNet50  # noqa: E402

GOALS = {"se": 1.02, "eca": 1.02, "cbam": 1.05}  # optimized attention model / optimized plain model
# A batch-1 round is short (ResNet-50: about 1 s for every variant), shorter than this VM's slow spells
# are long: three times the rounds at batch 1, for the price of a third of one batch-16 round each.
BATCH1_ROUNDS = 3


def _infer(m, x):
    with torch.inference_mode():
        return m(x)


def _rel_err(ref: torch.Tensor, got) -> float:
    got = torch.as_tensor(got)
    return float((got - ref).abs().max() / ref.abs().max())


def _model_steps(a: str, x: torch.Tensor, onnx_dir: str, backends: list[str], threads: int, full: bool):
    """``({label: step}, {label: output}, {label: compile seconds})`` for ResNet-50 with attention ``a``:
    the optimized default path always; eager, the look-alike, compiled paths and ONNX Runtime when ``full``."""
    torch.manual_seed(0)
    m = excite.create_model("resnet50", attention=None if a == "none" else a).eval()
    steps, outs, build = {}, {}, {}
    t0 = time.perf_counter()
    opt = excite.optimize_for_inference(m)  # default arguments, as a user calls it
    build["excite optimized"] = time.perf_counter() - t0
    steps["excite optimized"] = lambda: _infer(opt, x)
    if full:
        steps["pytorch eager"] = lambda: _infer(m, x)
        if a in ("none", "eca"):
            look = ResNet50(eca=a == "eca").eval()
            look.load_state_dict(m.state_dict())
            steps["look-alike eager"] = lambda: _infer(look, x)
        for b in backends:
            t0 = time.perf_counter()
            c = excite.optimize_for_inference(m, compile=b, example_input=x)  # compiles now, for this shape
            build[f"excite optimized, {b}"] = time.perf_counter() - t0
            steps[f"excite optimized, {b}"] = lambda c=c: _infer(c, x)
        fp = os.path.join(onnx_dir, f"{a}.onnx")
        if not os.path.exists(fp):
            export_onnx(m, fp, input_size=tuple(x.shape[1:]), dynamic_batch=True)
        sess, xn = ort_session(fp, threads), x.numpy()
        steps["onnxruntime fp32"] = lambda: sess.run(None, {"input": xn})[0]
    ref = _infer(m, x)
    for k, step in steps.items():
        outs[k] = _rel_err(ref, step())
    return steps, outs, build, opt


def _overhead_breakdown(opt_none, opt_attn, x, reps: int = 3) -> dict:
    """Where an attention model's extra time goes: self CPU time per operator, attention model minus
    plain model, from ``torch.profiler`` (a separate pass; the timed runs carry no profiler)."""
    from torch.profiler import ProfilerActivity, profile

    def per_op(m):
        _infer(m, x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                _infer(m, x)
        return {e.key: e.self_cpu_time_total / reps / 1e6 for e in prof.key_averages()}

    a, b = per_op(opt_none), per_op(opt_attn)
    diff = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}
    top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:8]
    return dict(total_plain_s=sum(a.values()), total_attention_s=sum(b.values()),
                extra_by_op_s={k: round(v, 6) for k, v in top})


def _pooled_modules(opt_attn) -> list:
    """``(module, where)`` for each attention's squeeze: the 1x1 convolution a rewritten bottleneck pools
    through (``excite.models.rewrite.pool_through_conv``: ``"conv"``), or the block, whose output the
    attended activation has the size of (``"output"``)."""
    from excite.models.rewrite import pool_through_conv

    found = []
    for m in opt_attn.modules():
        if not (hasattr(m, "attn_position") and getattr(m, "attn", None) is not None):
            continue
        pools = [n for n in m.graph.nodes if n.target is pool_through_conv] if hasattr(m, "graph") else []
        if pools:
            found += [(m.get_submodule(p.args[2].target.rpartition(".")[0]), "conv") for p in pools]
        else:
            found.append((m, "output"))
    return found


def _pool_floor(opt_attn, x, plain_s: float) -> dict:
    """The memory-traffic floor of the attention: one extra read of what its squeeze pools (the
    activation, or the narrower input of the 1x1 convolution before it plus that convolution's weight,
    whichever is smaller, as ``pool_through_conv`` chooses; the rescale rides on the residual addition,
    which reads the activation anyway), at this machine's measured read bandwidth, as a fraction of the
    plain model's time."""
    nbytes = []

    def read(mod, args, out, where):
        if where == "conv":
            n = min(args[0].numel() + mod.weight.numel(), out.numel())
        else:
            n = out.numel()
        nbytes.append(n * out.element_size())

    hooks = [m.register_forward_hook(lambda mod, args, out, where=where: read(mod, args, out, where))
             for m, where in _pooled_modules(opt_attn)]
    try:
        _infer(opt_attn, x)
    finally:
        for h in hooks:
            h.remove()
    big = torch.randn(16 << 20)  # 64 MB, beyond the caches
    bw = summarize([_timed(lambda: big.sum()) for _ in range(MIN_REPS)])
    read_bw = big.numel() * 4 / bw["median_s"]
    floor = sum(nbytes) / read_bw
    return dict(extra_read_bytes=sum(nbytes), read_bandwidth_bytes_per_s=read_bw, bandwidth_iqr_rel=bw["iqr_rel"],
                floor_s=floor, floor_fraction_of_plain=floor / plain_s)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _targets(t: dict, batch: int, backends: list[str]) -> list[dict]:
    """Every target of one batch size, from the timings ``t`` (``{"<attn> | <variant>": summary}``)."""
    out = []
    for a in ("none", "eca"):
        ort = t[f"{a} | onnxruntime fp32"]
        out.append(compare(f"resnet50+{a}: onnxruntime fp32 time / excite default path time, batch {batch}",
                           ort, t[f"{a} | excite optimized"], 1.0, higher_is_better=True,
                           note="default path: optimize_for_inference(model), no compile"))
        for b in backends:
            out.append(compare(f"resnet50+{a}: onnxruntime fp32 time / excite optimized {b} time, batch {batch}",
                               ort, t[f"{a} | excite optimized, {b}"], 1.0, higher_is_better=True))
    for a, goal in GOALS.items():
        if f"{a} | excite optimized" in t:
            out.append(compare(f"resnet50+{a} optimized / resnet50 optimized time, batch {batch}",
                               t[f"{a} | excite optimized"], t["none | excite optimized"], goal, higher_is_better=False))
    for b in backends:
        out.append(compare(f"resnet50+eca optimized {b} / resnet50 optimized {b} time, batch {batch}",
                           t[f"eca | excite optimized, {b}"], t[f"none | excite optimized, {b}"], GOALS["eca"],
                           higher_is_better=False))
    for a in ("none", "eca"):  # the cross-check: two eager implementations of one function must agree
        c = compare(f"resnet50+{a}: excite eager / look-alike eager time, batch {batch} (cross-check)",
                    t[f"{a} | pytorch eager"], t[f"{a} | look-alike eager"], 1.05, higher_is_better=False,
                    note="independent torchvision-style model with the same weights; agreement means within 5%")
        if c["met"] is not None:
            c["met"] = abs(c["ratio"] - 1) <= 0.05
            c["verdict"] = "agree" if c["met"] else "DISAGREE: the eager baseline is suspect"
        out.append(c)
    return out


# Variants in this order within a round (a rotation keeps neighbours next to each other): the two sides
# of every target a few calls apart, so that a slow spell of the machine meets both.
_ORDER = ("excite optimized", "onnxruntime fp32", "excite optimized, jit", "excite optimized, inductor",
          "pytorch eager", "look-alike eager")


def _neighbours_first(steps: dict) -> dict:
    """``steps`` ("<attention> | <variant>") reordered by variant, then attention (see ``_ORDER``)."""
    def rank(key):
        a, v = key.split(" | ")
        return (_ORDER.index(v) if v in _ORDER else len(_ORDER), v, ["none", "eca", "se", "cbam"].index(a))
    return {k: steps[k] for k in sorted(steps, key=rank)}


def run_batch(batch: int, size: int, attentions: list[str], backends: list[str], reps: int, threads: int,
              onnx_dir: str) -> dict:
    """One batch size: build every variant, check outputs, time them rotated, break down the overhead."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    steps, errs, builds, opts = {}, {}, {}, {}
    for a in attentions:
        st, er, bu, opts[a] = _model_steps(a, x, onnx_dir, backends, threads, full=a in ("none", "eca"))
        steps.update({f"{a} | {k}": v for k, v in st.items()})
        errs.update({f"{a} | {k}": v for k, v in er.items()})
        builds.update({f"{a} | {k}": round(v, 2) for k, v in bu.items()})
    rounds = reps * (BATCH1_ROUNDS if batch == 1 else 1)
    t = time_rotated(_neighbours_first(steps), reps=rounds, warmup=1)
    ov = {a: openvino_timing(os.path.join(onnx_dir, f"{a}.onnx"), batch, size, threads, rounds) for a in ("none", "eca")}
    plain = t["none | excite optimized"]["median_s"]
    where = {a: dict(breakdown=_overhead_breakdown(opts["none"], opts[a], x), floor=_pool_floor(opts[a], x, plain))
             for a in attentions if a != "none"}
    fastest = {a: min((k for k in t if k.startswith(f"{a} |")), key=lambda k: t[k]["median_s"]) for a in ("none", "eca")}
    return dict(batch=batch, rounds=rounds, timings=t, max_rel_err_vs_eager=errs, build_s=builds, openvino=ov, overhead=where,
                fastest=fastest, targets=_targets(t, batch, backends))


def run(smoke: bool, reps: int, batches: list[int], attentions: list[str], backends: list[str], save=None) -> dict:
    """The whole suite; ``save`` is called with the partial result after each batch size."""
    size = 32 if smoke else 224
    threads = torch.get_num_threads()
    res = dict(smoke=smoke, reps=reps, threads=threads, input_size=size, backends=backends,
               loadavg_per_batch=[os.getloadavg()], batches={}, targets=[],
               label=machine_label())
    with tempfile.TemporaryDirectory() as d:
        for batch in batches:
            r = run_batch(batch, size, attentions, backends, reps, threads, d)
            res["batches"][str(batch)] = r
            res["targets"] += r["targets"]
            res["loadavg_per_batch"].append(os.getloadavg())
            if save:
                save(res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="32px: checks the script, not the machine")
    ap.add_argument("--reps", type=int, default=MIN_REPS, help=f"timed rounds (at least {MIN_REPS})")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--attention", nargs="+", default=["none", "eca", "se", "cbam"])
    ap.add_argument("--backends", nargs="*", default=None, help="compiled paths to time: jit, inductor")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--extra", action="store_true", help="also bf16, int8 agreement and the compiled training step")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads or auto_threads())  # excite's default: the cores free now
    batches = a.batches or ([1, 2] if a.smoke else [1, 16])
    backends = a.backends if a.backends is not None else (["jit"] if a.smoke else ["jit", "inductor"])
    attns = sorted(set(a.attention) | {"none", "eca"}, key=["none", "eca", "se", "cbam"].index)
    name = f"inference-{'smoke' if a.smoke else 'cpu'}"
    rdir = os.path.join(HERE, "results")
    res = run(a.smoke, max(a.reps, MIN_REPS), batches, attns, backends,
              save=lambda r: save_results(r, name, a.out, results_dir=rdir))
    if a.extra:
        from inference_extra import run_extra

        extra = run_extra(a.smoke, a.reps)
        res["targets"] += extra["targets"]
        res["extra"] = extra["results"]
    out = save_results(res, name, a.out, results_dir=rdir)
    for t in res["targets"]:
        print(f"{t['verdict']:>28}  {t['target']}: {t['ratio']} (goal {t['goal']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
