"""Every way to run one model on this CPU, timed side by side: which one to deploy with.

PyTorch eager, :func:`excite.optimize_for_inference` (default, which keeps freed memory during its
calls, and compiled with TorchScript's oneDNN fusion or Inductor), ONNX Runtime fp32 (intra-op spinning off, so that its idle threads take no CPU
from the next variant) and OpenVINO when installed. OpenVINO runs in a subprocess: loaded into the
same process it crashed a later torch call. The timing method is :mod:`excite.deploy.timing` (rotated
order, the same warm-up, quartiles, "too noisy" when the IQR exceeds 10% of the median); a compile is
paid before the timing and reported apart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from excite.deploy.onnx_export import export_onnx
from excite.models.optimize import optimize_for_inference
from excite.deploy.threads import auto_threads
from excite.deploy.timing import MIN_REPS, ort_session, time_rotated

__all__ = ["compare_runtimes", "runtimes_table", "openvino_timing"]


def _infer(m: nn.Module, x: torch.Tensor):
    with torch.inference_mode():
        return m(x)


def openvino_timing(onnx_path: str, batch: int, size: int, threads: int, reps: int = MIN_REPS) -> dict:
    """OpenVINO fp32 timed in a subprocess by the same method, or ``{"skipped": why}``."""
    if importlib.util.find_spec("openvino") is None:
        return dict(skipped="openvino not installed (pip install excite[openvino])")
    cmd = [sys.executable, "-m", "excite.deploy.runtimes", onnx_path, str(batch), str(size), str(threads), str(reps)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode:
        return dict(skipped=f"openvino subprocess failed: {(p.stderr.strip().splitlines() or [''])[-1][:200]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _openvino_child(onnx_path: str, batch: int, size: int, threads: int, reps: int) -> None:
    import openvino as ov  # optional package

    core = ov.Core()
    cm = core.compile_model(core.read_model(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                 "PERFORMANCE_HINT": "LATENCY"})
    req = cm.create_infer_request()
    chans = cm.input(0).get_partial_shape()[1].get_length()  # the model's channels (the batch is free)
    x = np.random.default_rng(0).standard_normal((batch, chans, size, size), dtype=np.float32)
    print(json.dumps(time_rotated({"openvino fp32": lambda: req.infer({0: x})}, reps=reps)["openvino fp32"]))


def compare_runtimes(model: nn.Module, *, batch_size: int = 1, input_size: int | None = None, threads: int | None = None,
                     reps: int = MIN_REPS, backends: tuple[str, ...] = ("jit",)) -> dict:
    """Time ``model`` in every runtime above at one input shape. Returns ``{"timings", "build_s",
    "max_rel_err", "openvino", "fastest", "how"}``; ``fastest`` is ``None`` when the fastest variant's
    timing is too noisy to name it (or another is within its spread)."""
    threads = threads or auto_threads()
    torch.set_num_threads(threads)
    model = model.eval()
    size = input_size or model.default_input_size[-1]
    chans = model.default_input_size[0]
    x = torch.randn(batch_size, chans, size, size, generator=torch.Generator().manual_seed(0))
    steps, build = {"pytorch eager": lambda: _infer(model, x)}, {}
    t0 = time.perf_counter()
    opt = optimize_for_inference(model)
    build["excite optimized"] = time.perf_counter() - t0
    steps["excite optimized"] = lambda: _infer(opt, x)
    for b in backends:
        t0 = time.perf_counter()
        c = optimize_for_inference(model, compile=b, example_input=x)
        build[f"excite optimized, {b}"] = time.perf_counter() - t0
        steps[f"excite optimized, {b}"] = lambda c=c: _infer(c, x)
    with tempfile.TemporaryDirectory() as d:
        fp = os.path.join(d, "model.onnx")
        export_onnx(model, fp, input_size=(chans, size, size), dynamic_batch=True)
        sess, xn = ort_session(fp, threads), x.numpy()
        steps["onnxruntime fp32"] = lambda: torch.from_numpy(sess.run(None, {"input": xn})[0])
        ref = _infer(model, x)
        errs = {k: float((torch.as_tensor(s()) - ref).abs().max() / ref.abs().max()) for k, s in steps.items()}
        timings = time_rotated(steps, reps=reps, warmup=1)
        ov = openvino_timing(fp, batch_size, size, threads, reps)
    if "median_s" in ov:
        timings["openvino fp32 (subprocess)"] = ov
    return dict(batch_size=batch_size, input_size=size, threads=threads, timings=timings, build_s=build,
                max_rel_err=errs, openvino=ov, fastest=_fastest(timings))


def _fastest(timings: dict) -> str | None:
    """The fastest label, if its lead is outside the noise: its 75th percentile below every other's
    25th (quartiles apart, however noisy each is), else ``None``."""
    best = min(timings, key=lambda k: timings[k]["median_s"])
    b = timings[best]
    return best if all(b["q75_s"] < t["q25_s"] for k, t in timings.items() if k != best) else None


_HOW = {"pytorch eager": "the model as it is",
        "excite optimized": "excite.optimize_for_inference(model)",
        "excite optimized, jit": "excite.optimize_for_inference(model, compile='jit', example_input=x)",
        "excite optimized, inductor": "excite.optimize_for_inference(model, compile='inductor', example_input=x)",
        "onnxruntime fp32": "excite export onnx MODEL model.onnx, then an onnxruntime.InferenceSession",
        "openvino fp32 (subprocess)": "excite export openvino MODEL model.xml, then OpenVINO Runtime"}


def runtimes_table(r: dict) -> str:
    """The comparison as a table, ending with the fastest path and how to get it (or why none is named)."""
    rows = [f"batch {r['batch_size']}, {r['input_size']}px, {r['threads']} threads; "
            f"{r['timings'][next(iter(r['timings']))]['runs']} rotated rounds each, quartiles",
            f"{'runtime':<30} {'median ms':>10} {'IQR ms':>17} {'IQR/med':>8} {'max rel err':>12} {'build s':>8}"]
    for k, t in r["timings"].items():
        iqr = f"{1e3 * t['q25_s']:.1f}-{1e3 * t['q75_s']:.1f}"
        err = r["max_rel_err"].get(k)
        rows.append(f"{k:<30} {1e3 * t['median_s']:>10.1f} {iqr:>17} {100 * t['iqr_rel']:>7.0f}%"
                    f" {'-' if err is None else f'{err:.1e}':>12} {r['build_s'].get(k, 0):>8.1f}"
                    + ("  too noisy" if t["too_noisy"] else ""))
    if "skipped" in r["openvino"]:
        rows.append(f"openvino: {r['openvino']['skipped']}")
    f = r["fastest"]
    if f is None:
        best = min(r["timings"], key=lambda k: r["timings"][k]["median_s"])
        rows.append(f"fastest: not decided (the lowest median, {best}, is within another's quartiles); "
                    "rerun on a quieter machine")
    else:
        rows.append(f"fastest: {f}: {_HOW.get(f, f)}")
    return "\n".join(rows)


if __name__ == "__main__":  # the OpenVINO child: python -m excite.deploy.runtimes ONNX BATCH SIZE THREADS REPS
    _openvino_child(sys.argv[1], *map(int, sys.argv[2:6]))
