"""Benchmarks that hold on a noisy machine: variants interleaved in one process (A B A B ...),
warm-up first, medians with spread, and the achieved MAC rate against a measured matmul peak.

Ratios between variants measured this way survive background load far better than absolute
numbers: a burst of load slows the neighbouring A and B runs alike.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from excite.attention import find_attention
from excite.deploy.machine import machine_info
from excite.core.errors import ExciteError, check_range
from excite.core.spec import ModelSpec
import datetime
import json
from excite.profiling.accounting import profile
from excite.deploy.onnx_export import digits_calibration
from excite.factory import resolve_model
from excite.models.optimize import optimize_for_inference
from excite.deploy.threads import auto_threads

__all__ = ["VariantResult", "BenchResult", "machine_info", "save_results", "matmul_peak", "attention_modules", "attention_share",
           "bench", "bench_variants", "bf16_agreement", "time_interleaved"]


@dataclass
class VariantResult:
    """Timing of one model variant; times are seconds per batch."""

    label: str
    median_s: float
    q25_s: float
    q75_s: float
    runs: int
    batch_size: int
    img_per_s: float
    latency_ms: float
    attention_share: float | None = None  # fraction of forward time inside attention modules
    macs: int | None = None  # per image, from excite.profile
    mac_rate: float | None = None  # achieved MAC/s
    peak_fraction: float | None = None  # mac_rate / measured matmul peak
    ratio: float = 1.0  # this variant's median time / the first variant's (>1: slower)
    bf16_top1_agreement: float | None = None  # bf16 runs: share of top-1 predictions equal to fp32's


@dataclass
class BenchResult:
    model: str
    mode: str
    dtype: str
    input_size: int
    threads: int
    variants: list[VariantResult]
    peak_macs_per_s: float | None
    machine: dict = field(default_factory=dict)
    compiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        head = f"{self.model} {self.mode} {self.dtype} batch {self.variants[0].batch_size} {self.input_size}px, {self.threads} threads"
        if self.compiled:
            head += ", torch.compile"
        if self.peak_macs_per_s:
            head += f"; matmul peak {self.peak_macs_per_s / 1e9:.1f} GMAC/s"
        share_of = "attn % = share of forward+backward time" if self.mode == "train" else "attn % = share of forward time"
        head += f"\n{share_of}; % peak = MAC rate / best measured fp32{'/bf16' if self.dtype == 'bf16' else ''} matmul rate"
        rows = [head, f"{'variant':<24} {'img/s':>9} {'latency ms':>11} {'IQR ms':>13} {'x first':>8} {'attn %':>7} {'% peak':>7}"]
        for v in self.variants:
            share = "-" if v.attention_share is None else f"{100 * v.attention_share:.1f}"
            peak = "-" if v.peak_fraction is None else f"{100 * v.peak_fraction:.1f}"
            iqr = f"{1e3 * v.q25_s:.1f}-{1e3 * v.q75_s:.1f}"
            rows.append(f"{v.label:<24} {v.img_per_s:>9.1f} {v.latency_ms:>11.2f} {iqr:>13} {v.ratio:>8.3f} {share:>7} {peak:>7}"
                        + ("" if v.bf16_top1_agreement is None else f"  bf16 top-1 = fp32: {100 * v.bf16_top1_agreement:.0f}%"))
        return "\n".join(rows)


def _dated_path(results_dir: Path, name: str, date, cpu: str) -> Path:
    """``<name>-<date>.json``, or ``<name>-<date>-<cpu>.json`` when the former holds another machine's
    results (the same day on a different CPU must not overwrite them)."""
    path = results_dir / f"{name}-{date}.json"
    try:
        other = json.loads(path.read_text()).get("machine", {}).get("cpu", cpu)
    except (OSError, ValueError, AttributeError):
        return path
    if other == cpu:
        return path
    slug = "-".join("".join(c if c.isalnum() else " " for c in cpu.lower()).split())
    return results_dir / f"{name}-{date}-{slug}.json"


def save_results(payload: dict, name: str, out=None, *, results_dir=None) -> Path:
    """Write a benchmark's ``payload`` as JSON with this machine (``machine_info``, torch version
    included) and the UTC time, to ``out`` or ``results_dir/<name>-<date>.json`` (with the CPU's name
    after the date when that file holds another machine's results). Returns the path."""

    now = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    path = Path(out) if out else _dated_path(Path(results_dir), name, now.date(), machine["cpu"])
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(machine=machine, date=now.isoformat(timespec="seconds"), **payload)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 5) -> float:
    """This machine's achievable MAC/s: the best of ``reps`` ``n x n`` matrix products (n^3 MACs each)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return n ** 3 / best


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost attention modules of ``model`` (:func:`excite.attention.find_attention`)."""
    return [m for _, m in find_attention(model)]


def attention_share(model: nn.Module, x: torch.Tensor, reps: int = 3, mode: str = "infer") -> float | None:
    """Fraction of time spent inside attention modules, timed with hooks in a separate pass (so the
    hooks never touch the timed runs). ``None`` when there is no attention.

    ``mode="infer"``: of the eval-mode forward. ``mode="train"``: of a train-mode forward and
    backward, the backward of each attention module timed between its full backward pre-hook and
    hook (autograd runs the backward of one module after another on CPU)."""
    mods = attention_modules(model)
    if not mods:
        return None
    spent = [0.0]
    start = {}

    def pre(m, *_):
        start[id(m)] = time.perf_counter()

    def post(m, *_):
        spent[0] += time.perf_counter() - start.pop(id(m))

    train = mode == "train"
    handles = [h for m in mods for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    if train:
        handles += [h for m in mods for h in (m.register_full_backward_pre_hook(pre), m.register_full_backward_hook(post))]
    was = model.training
    model.train(train)
    try:
        def step():
            if train:
                model(x).float().sum().backward()
            else:
                with torch.inference_mode():
                    model(x)

        step()
        shares = []
        for _ in range(reps):
            spent[0] = 0.0
            t0 = time.perf_counter()
            step()
            shares.append(spent[0] / (time.perf_counter() - t0))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        if train:
            model.zero_grad(set_to_none=True)
    return statistics.median(shares)


def _step_fn(model: nn.Module, x: torch.Tensor, mode: str, dtype: str, compile: bool = False):
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    # The module itself keeps its parameters for the optimizer. dynamic=False: every call has this one
    # shape; a process that compiled the same forward at another batch size would otherwise get
    # shape-generic kernels (dynamo marks a shape dynamic once it has seen two), slower here.
    run = torch.compile(model, dynamic=False) if compile else model
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                run(x)

        return step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.randint(0, max(1, _num_outputs(model, x)), (x.shape[0],))

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(run(x).float(), target)
        loss.backward()
        opt.step()

    return step


def _num_outputs(model, x) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        n = model(x[:1]).shape[1]
        model.train(was)
    return n


def _macs(model: nn.Module, input_size: tuple) -> int:
    return int(profile(model, input_size=input_size).macs)


def bf16_agreement(model: nn.Module, input_size: int, n: int = 32) -> float:
    """Share of ``n`` real images (the embedded digits, upsampled) whose top-1 prediction under bf16
    autocast equals the fp32 one. With untrained weights the logits are nearly tied, so this is a
    pessimistic bound; a trained model (``benchmarks/inference.py``) gives the meaningful figure."""
    x = torch.from_numpy(digits_calibration(input_size, n))
    if getattr(model, "excite_channels_last", False):
        x = x.to(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode():
        p32 = model(x).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = model(x).argmax(1)
    return float((p32 == p16).float().mean())


def time_interleaved(steps: dict, *, runs: int = 10, warmup: int = 1, budget_s: float | None = None,
                     min_runs: int = 3) -> dict:
    """Time zero-argument callables (any runtime: PyTorch, ONNX Runtime, OpenVINO) interleaved:
    ``warmup`` untimed calls each, then ``runs`` rounds of one call per callable in turn. Returns
    ``{label: {"median_s", "q25_s", "q75_s", "runs"}}``.

    ``budget_s`` stops starting new rounds once the timed rounds so far plus one more would exceed
    it (after at least ``min_runs``): on a loaded machine a fixed count can take many times longer."""
    check_range("runs", runs, low=1)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {k: [] for k in steps}
    start = time.perf_counter()
    for i in range(runs):
        r0 = time.perf_counter()
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
        now = time.perf_counter()
        if budget_s is not None and i + 1 >= min_runs and (now - start) + (now - r0) > budget_s:
            break
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[k] = dict(median_s=statistics.median(ts), q25_s=q[0], q75_s=q[2], runs=len(ts))
    return out


def bench_variants(variants: list[tuple[str, nn.Module]], *, batch_size: int = 16, input_size: int = 224,
                   mode: str = "infer", dtype: str = "fp32", runs: int = 10, warmup: int = 2,
                   threads: int | None = None, measure_peak: bool = True, model_name: str = "",
                   compile: bool = False) -> BenchResult:
    """Time several ``(label, model)`` variants interleaved: ``warmup`` untimed steps each, then
    ``runs`` rounds of one step per variant in turn. Returns medians, quartiles and derived rates.

    ``compile`` runs every variant through ``torch.compile`` (compiled during the warm-up, which is
    then at least 2 steps: the first compiles, the second checks nothing recompiles)."""
    if mode not in ("infer", "train"):
        raise ExciteError(f"mode={mode!r} is invalid; expected 'infer' or 'train'")
    if dtype not in ("fp32", "bf16"):
        raise ExciteError(f"dtype={dtype!r} is invalid; expected 'fp32' or 'bf16'")
    check_range("batch_size", batch_size, low=1)
    check_range("runs", runs, low=1, integer=True)
    check_range("warmup", warmup, low=0, integer=True)
    check_range("input_size", input_size, low=8)
    if threads is not None:
        # More threads than cores only adds contention, and torch crashes on absurd counts.
        check_range("threads", threads, low=1, high=os.cpu_count() or 1, integer=True)
        torch.set_num_threads(threads)
    chans = getattr(variants[0][1], "default_input_size", (3,))[0]
    x = torch.randn(batch_size, chans, input_size, input_size)
    steps = []
    for label, m in variants:
        xi = x.to(memory_format=torch.channels_last) if getattr(m, "excite_channels_last", False) else x
        steps.append(_step_fn(m, xi, mode, dtype, compile))
    for step in steps:
        for _ in range(max(warmup, 2) if compile else warmup):
            try:
                step()
            except Exception as e:  # a missing C++ compiler or an unsupported op: the environment, not a bug here
                if not compile:
                    raise
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise ExciteError(f"torch.compile failed ({type(e).__name__}: {first}); run without --compile") from e
    times = [[] for _ in steps]
    for _ in range(runs):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - t0)
    peak = None
    if measure_peak:
        # bf16 runs: the best of the fp32 and bf16 peaks. Without native bf16 (no avx512_bf16 / AMX) a
        # bf16 matmul is emulated at a fraction of fp32's rate, and oneDNN's convolutions may not take
        # that path, so a bf16-only peak would report "% peak" far above 100.
        peak = matmul_peak(torch.float32)
        if dtype == "bf16":
            peak = max(peak, matmul_peak(torch.bfloat16))
    out = []
    for (label, m), ts in zip(variants, times):
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [med, med, med]
        try:
            share = attention_share(m, x[:min(batch_size, 4)], reps=2, mode=mode)
        except RuntimeError:  # a backward hook the model's in-place ops refuse: report no share
            share = None
        macs = _macs(m, (chans, input_size, input_size))
        rate = macs * batch_size / med * (3 if mode == "train" else 1) if macs else None  # backward ~ 2x forward
        agree = bf16_agreement(m, input_size) if dtype == "bf16" and mode == "infer" and chans == 3 else None
        out.append(VariantResult(label, med, q[0], q[2], len(ts), batch_size, batch_size / med, 1e3 * med, share,
                                 macs, rate, rate / peak if rate and peak else None, bf16_top1_agreement=agree))
    for v in out:
        v.ratio = v.median_s / out[0].median_s
    return BenchResult(model_name, mode, dtype, input_size, torch.get_num_threads(), out, peak, machine_info(), compile)


def bench(model: str | ModelSpec, *, attention: list[str] | None = None, optimized: bool = False, batch_size: int = 16,
          input_size=None, mode: str = "infer", dtype: str = "fp32", runs: int = 10,
          warmup: int = 2, threads: int | None = None, num_classes: int | None = None,
          compile: bool = False, attention_kwargs: dict | None = None, options: dict | None = None) -> BenchResult:
    """Benchmark ``model`` (any model reference: a name, a model file, ``file.py:Class`` ..., or a
    :class:`~excite.ModelSpec`) with each attention in ``attention`` (default: as published, or the
    spec's), eager, or eager and optimized
    (:func:`excite.optimize_for_inference`, default arguments) when ``optimized``; ``compile`` runs every
    variant through ``torch.compile``.

    ``input_size``: N, ``(H, W)`` or ``(C, H, W)`` (square; default: the model's). ``threads`` defaults
    to :func:`excite.deploy.threads.auto_threads` (the cores free now), the
    same default as training. Every optimized variant runs in the same memory format (the rule of
    :func:`excite.models.optimize.channels_last_rule`, recorded per variant), so that attention
    modules are compared like for like."""

    attns = list(attention or [None])
    name = model.arch if isinstance(model, ModelSpec) else model
    variants = []
    for a in attns:
        m = resolve_model(model, attention=a, num_classes=num_classes, attention_kwargs=attention_kwargs,
                          options=options, input_size=input_size)
        side = m.default_input_size[-1]
        label = a or getattr(model, "attention", None) or "default"
        if optimized and mode == "infer":
            variants.append((f"{label} eager", m))
            variants.append((f"{label} optimized", optimize_for_inference(m)))
        else:
            variants.append((label, m))
    formats = {getattr(m, "excite_channels_last", None) for _, m in variants if hasattr(m, "excite_folded_bn")}
    if len(formats) > 1:  # the rule depends on the architecture only; a mix would compare formats, not attention
        raise ExciteError(f"optimized variants of {name} ended up in different memory formats; pass one attention at a time")
    return bench_variants(variants, batch_size=batch_size, input_size=side, mode=mode, dtype=dtype, runs=runs,
                          warmup=warmup, threads=threads or auto_threads(), model_name=name, compile=compile)
