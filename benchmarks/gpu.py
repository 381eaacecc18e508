"""GPU benchmark, ready for the next lent GPU: ResNet-50 with none / SE / ECA / CBAM, inference in
eager fp32, channels-last, fp16 and bf16 autocast, torch.compile and CUDA graphs; attention overhead
in time beside its overhead in MACs; training throughput. One short run (a few minutes).

    python benchmarks/gpu.py                       # on a CUDA machine: the full run
    python benchmarks/gpu.py --device cpu --dry-run   # seconds on CPU: checks the script (the tests run this)

Defaults: batch 256, 9 rotated runs of 3 steps, no new compile after 240 s (a skipped compile is
recorded): the whole run fits in 5 minutes of an H100/H200-class GPU. The result holds timm's published
SE/ECA overheads (+13-16% eager, +23-28% compiled) beside excite's and the <= 3% goal's verdicts.

Variants of one model are interleaved round by round (A B C A B C ...) and reported as medians with
quartiles; each timed call runs ``--inner`` steps and synchronizes once (GPU launches are
asynchronous). Writes benchmarks/results/gpu-<device>-<date>.json with the GPU name, CUDA, cuDNN and
torch versions. Settings that cannot run here (CUDA graphs and fp16 on CPU, a failed compile) are
recorded as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import excite  # noqa: E402
from excite.deploy.bench import save_results  # noqa: E402

ATTENTIONS = ["none", "se", "eca", "cbam"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, dtype, cache=True):
    if dtype is None:
        return contextlib.nullcontext()
    # cache=False for CUDA graph capture: autocast's cast-weight cache must not outlive the capture.
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def _infer_step(model, x, device, dtype, setting):
    """A zero-argument callable running one inference step in ``setting``."""
    if setting == "cuda_graph":
        static_x = x.clone()
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s), torch.no_grad(), _autocast(device, dtype, cache=False):
            for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                model(static_x)
        torch.cuda.current_stream(device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.no_grad(), _autocast(device, dtype, cache=False):
            model(static_x)
        return g.replay
    if setting == "excite":  # BN folded, rescale fused into the residual add, Inductor with freezing
        run = excite.optimize_for_inference(model, compile="inductor")
    else:
        run = torch.compile(model) if setting == "compile" else model

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            run(x)

    return step


def _settings(device):
    """(label, channels_last, autocast dtype, how): the inference settings this device can run."""
    half = torch.float16 if device.type == "cuda" else None
    rows = [("eager fp32", False, None, "eager"), ("channels-last fp32", True, None, "eager"),
            ("channels-last bf16 autocast", True, torch.bfloat16, "eager")]
    rows.append(("channels-last fp16 autocast", True, half, "eager") if half else
                ("channels-last fp16 autocast", True, None, "skip: fp16 autocast is a GPU setting"))
    amp = half or torch.bfloat16
    rows.append(("compile channels-last fp32", True, None, "compile"))
    rows.append((f"compile channels-last {'fp16' if half else 'bf16'}", True, amp, "compile"))
    # excite's fused attention path: the rewrite puts pool -> gate -> rescale -> add in one graph, and
    # Inductor turns the pointwise chain into generated kernels (Triton on a GPU, C++ on a CPU).
    rows.append((f"excite optimized compile {'fp16' if half else 'bf16'}", True, amp, "excite"))
    rows.append(("CUDA graph channels-last fp16", True, amp, "cuda_graph") if device.type == "cuda" else
                ("CUDA graph channels-last fp16", True, None, "skip: CUDA graphs need a CUDA device"))
    return rows


def _time(steps: dict, runs: int, inner: int, device) -> dict:
    """Rotated timing (round r starts at step r mod n): per round, each step ``inner`` times then one
    synchronize; every step was warmed the same before. Medians, quartiles, and the too-noisy flag of
    ``excite.deploy.timing`` (IQR over 10% of the median)."""
    from excite.deploy.timing import NOISE_LIMIT

    times = {k: [] for k in steps}
    keys = list(steps)
    for r in range(runs):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            step = steps[k]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / inner)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        med = statistics.median(ts)
        out[k] = dict(median_s=med, q25_s=q[0], q75_s=q[2], runs=len(ts), too_noisy=(q[2] - q[0]) > NOISE_LIMIT * med)
    return out


def run(model_name: str, device: torch.device, batch: int, size: int, train_batch: int, runs: int, inner: int,
        compile: bool, budget_s: float = float("inf")) -> dict:
    infer, train, skipped, macs = {}, {}, {}, {}
    started = time.perf_counter()
    for attn in ATTENTIONS:
        torch.manual_seed(0)
        base = excite.create_model(model_name, attention=None if attn == "none" else attn)
        macs[attn] = int(excite.profile(base, input_size=(3, size, size)).macs)
        x = torch.randn(batch, 3, size, size, device=device)
        steps = {}
        for label, cl, dtype, how in _settings(device):
            if how.startswith("skip") or (how in ("compile", "excite") and not compile):
                skipped[f"{attn} {label}"] = how[6:] if how.startswith("skip") else "--no-compile"
                continue
            if how in ("compile", "excite") and time.perf_counter() - started > budget_s:
                skipped[f"{attn} {label}"] = f"time budget ({budget_s:.0f} s) spent before this compile"
                continue
            fmt = torch.channels_last if cl else torch.contiguous_format
            m = excite.create_model(model_name, attention=None if attn == "none" else attn).to(device).eval()
            m.load_state_dict(base.state_dict())
            m = m.to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            try:
                step = _infer_step(m, xi, device, dtype, how)
                for _ in range(2):  # warm-up (compiles, picks kernels)
                    step()
                steps[label] = step
            except Exception as e:  # a setting this machine cannot run is reported, not fatal
                skipped[f"{attn} {label}"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        for label, r in _time(steps, runs, inner, device).items():
            r["img_per_s"] = batch / r["median_s"]
            infer.setdefault(label, {})[attn] = r

        # Training: one SGD step, eager fp32 and channels-last with mixed precision (the usual GPU recipe).
        amp = torch.float16 if device.type == "cuda" else torch.bfloat16
        tsteps = {}
        for label, cl, dtype in (("train eager fp32", False, None), (f"train channels-last {'fp16' if amp == torch.float16 else 'bf16'} autocast", True, amp)):
            fmt = torch.channels_last if cl else torch.contiguous_format
            m = excite.create_model(model_name, attention=None if attn == "none" else attn).to(device).to(memory_format=fmt)
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            xt = torch.randn(train_batch, 3, size, size, device=device).contiguous(memory_format=fmt)
            yt = torch.randint(0, 1000, (train_batch,), device=device)

            def tstep(m=m, opt=opt, scaler=scaler, xt=xt, yt=yt, dtype=dtype):
                opt.zero_grad(set_to_none=True)
                with _autocast(device, dtype):
                    loss = nn.functional.cross_entropy(m(xt).float(), yt)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            tstep()
            tsteps[label] = tstep
        for label, r in _time(tsteps, runs, 1, device).items():
            r["img_per_s"] = train_batch / r["median_s"]
            train.setdefault(label, {})[attn] = r

    # Attention overhead: time over the plain model's, beside MACs over the plain model's.
    overhead = {}
    for label, per in list(infer.items()) + list(train.items()):
        if "none" in per:
            overhead[label] = {a: dict(time=per[a]["median_s"] / per["none"]["median_s"] - 1,
                                       macs=macs[a] / macs["none"] - 1) for a in per if a != "none"}
    return dict(model=model_name, batch=batch, train_batch=train_batch, input_size=size, runs=runs, inner=inner,
                macs_per_image=macs, inference=infer, training=train, attention_overhead=overhead, skipped=skipped,
                reference=REFERENCE, goal=GOAL, verdicts=_verdicts(overhead, infer))


# timm's published GPU benchmark files: SE / ECA ResNet-50 over the plain ResNet-50's inference time.
REFERENCE = {"timm eager": (0.13, 0.16), "timm torch.compile": (0.23, 0.28)}
GOAL = 0.03  # excite's goal for SE and ECA on its fused path


def _verdicts(overhead: dict, infer: dict) -> dict:
    """SE / ECA time overhead against :data:`GOAL` per setting: met, missed, or too noisy."""
    out = {}
    for label, per in overhead.items():
        for a in ("se", "eca"):
            if a in per and label in infer:
                noisy = infer[label][a].get("too_noisy") or infer[label]["none"].get("too_noisy")
                out[f"{label} {a}"] = ("not measured: too noisy" if noisy else
                                       "met" if per[a]["time"] <= GOAL else f"missed: +{100 * per[a]['time']:.1f}%")
    return out


def device_info(device) -> dict:
    info = dict(device=str(device), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                    driver=getattr(torch.cuda, "driver_version", lambda: None)() if hasattr(torch.cuda, "driver_version") else None)
    return info


def table(res: dict) -> str:
    lines = [f"{res['model']} batch {res['batch']} {res['input_size']}px on {res['device'].get('gpu', res['device']['device'])}",
             f"{'setting':<34}" + "".join(f"{a + ' img/s':>14}" for a in ATTENTIONS) + "".join(f"{a + ' +time/+MACs':>22}" for a in ATTENTIONS[1:])]
    for label, per in list(res["inference"].items()) + list(res["training"].items()):
        cells = "".join(f"{per[a]['img_per_s']:>14.1f}" if a in per else f"{'-':>14}" for a in ATTENTIONS)
        ov = res["attention_overhead"].get(label, {})
        cells += "".join(f"{100 * ov[a]['time']:>+11.1f}%/{100 * ov[a]['macs']:>+7.2f}%  " if a in ov else f"{'-':>22}"
                         for a in ATTENTIONS[1:])
        lines.append(f"{label:<34}{cells}")
    for k, v in res["verdicts"].items():
        lines.append(f"goal <= +{100 * res['goal']:.0f}% ({k}): {v}")
    for k, why in res["skipped"].items():
        lines.append(f"skipped {k}: {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", "--dry-run", action="store_true",
                    help="resnet18 at 32px, batch 2, 9 runs: checks the script (on CPU in seconds)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train-batch-size", type=int, default=128)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--inner", type=int, default=3, help="steps per timed call (one synchronize each)")
    ap.add_argument("--budget-s", type=float, default=240,
                    help="no new compile after this many seconds, so that the whole run stays under 5 minutes")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (the slowest part to set up)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if a.tiny:
        name, size, batch, tbatch, runs, inner = "resnet18", 32, 2, 2, 9, 1
    else:
        name, size, batch, tbatch, runs, inner = "resnet50", 224, a.batch_size, a.train_batch_size, a.runs, a.inner
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest kernels per shape (fixed shapes here)
    t0 = time.perf_counter()
    res = run(name, device, batch, size, tbatch, runs, inner, compile=not a.no_compile, budget_s=a.budget_s)
    res["device"] = device_info(device)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(table(res))
    out = save_results(dict(tiny=a.tiny, **res), f"gpu-{'tiny' if a.tiny else device.type}", a.out,
                       results_dir=HERE / "results")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
