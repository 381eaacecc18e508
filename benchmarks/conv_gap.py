"""Where ONNX Runtime's lead over excite's optimized PyTorch path comes from: kernel time per convolution.

    python benchmarks/conv_gap.py                   # ResNet-50 at 224px, batch 1 and 16
    python benchmarks/conv_gap.py --smoke           # 32px, batch 1: checks the script

Both runtimes profile the same ResNet-50 (same weights) for ``--reps`` calls after a warm-up:
ONNX Runtime's own profiler (per node, kernel time) and ``torch.profiler`` on
``excite.optimize_for_inference(model)`` (self CPU time of the convolution kernels: oneDNN's
``aten::mkldnn_convolution``, the prepacked ``mkldnn::_convolution_pointwise`` and the others PyTorch
picks for some shapes, grouped by input shape). Convolutions are matched by (input shape, weight
shape). ONNX Runtime's ``Conv`` nodes include the activation and residual addition it fused into them;
PyTorch's do not, so its ReLU and addition time is reported apart, as "rest". PyTorch runs with freed
memory kept (``excite.deploy.keep_freed_memory``), so that its times are kernels, not page faults.
Profilers add their own overhead to every call alike, so the per-call totals here are above the timed
runs of ``benchmarks/inference.py``: compare ratios.

Writes benchmarks/results/conv-gap-<cpu|smoke>-<date>.json with the machine and torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

import excite  # noqa: E402
from excite.deploy.bench import save_results  # noqa: E402
from excite.deploy.machine import machine_label  # noqa: E402
from excite.models.memory import memory_kept  # noqa: E402
from excite.deploy.onnx_export import export_onnx  # noqa: E402
from excite.deploy.threads import auto_threads  # noqa: E402
from excite.deploy.timing import ort_session  # noqa: E402


def _ort_profile(path: str, x, threads: int, reps: int) -> tuple[dict, float]:
    """``({(input shape, weight shape): seconds per call}, total kernel seconds per call)``."""
    sess = ort_session(path, threads, profile_prefix=os.path.join(os.path.dirname(path), "ort-profile"))
    xn = x.numpy()
    for _ in range(2 + reps):
        sess.run(None, {"input": xn})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per, total = defaultdict(float), 0.0
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    for e in nodes[len(nodes) * 2 // (2 + reps):]:  # the profiled calls after the warm-up
        total += e["dur"] / 1e6 / reps
        if e["args"]["op_name"] == "Conv":
            shapes = [tuple(next(iter(s.values()))) for s in e["args"]["input_type_shape"][:2]]
            per[str(tuple(shapes))] += e["dur"] / 1e6 / reps
    return dict(per), total


# The aten operators that run a 2-D convolution's kernel on the CPU (which one depends on the shape).
_CONV_KERNELS = {"aten::mkldnn_convolution", "mkldnn::_convolution_pointwise", "aten::_slow_conv2d_forward", "aten::_nnpack_spatial_convolution",
                 "aten::_mps_convolution", "aten::thnn_conv2d"}


def _torch_profile(model, x, reps: int) -> tuple[dict, float, float]:
    """``({(input shape, weight shape): seconds per call}, total self seconds, non-conv seconds)``."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(reps):
                model(x)
    per, total, conv = {}, 0.0, 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        t = e.self_cpu_time_total / 1e6 / reps
        total += t
        if e.key in _CONV_KERNELS:
            key = str(tuple(tuple(s) for s in e.input_shapes[:2]))
            per[key] = per.get(key, 0.0) + t
            conv += t
    return per, total, total - conv


def _torch_timed(model, x, reps: int) -> dict:
    """``{(input shape, weight shape): seconds per call}`` timed without the profiler: every convolution
    module's call (its ``forward``, or the ReLU-fused call of the rewrite) wrapped in a clock, Python
    included. A cross-check of the profiler, whose self times can be charged to the wrong operator."""
    per = defaultdict(float)

    def clocked(fn, weight):
        def call(inp, **kw):
            t0 = time.perf_counter()
            out = fn(inp, **kw)
            if out is not None:  # a fused call that declined runs the module's forward next
                per[str((tuple(inp.shape), tuple(weight.shape)))] += (time.perf_counter() - t0) / reps
            return out
        return call

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for m in convs:
        m.forward = clocked(m.forward, m.weight)
        if hasattr(m, "fused"):
            m.fused = clocked(m.fused, m.weight)
    try:
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            per.clear()
            for _ in range(reps):
                model(x)
    finally:
        for m in convs:
            vars(m).pop("forward", None)
            vars(m).pop("fused", None)
    return dict(per)


def run_batch(model, batch: int, size: int, threads: int, reps: int, onnx_path: str) -> dict:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    ort_per, ort_total = _ort_profile(onnx_path, x, threads, reps)
    opt = excite.optimize_for_inference(model)
    with memory_kept():  # kernels, not page faults: ONNX Runtime's arena pays none either
        pt_per, pt_total, pt_rest = _torch_profile(opt, x, reps)
        timed = _torch_timed(opt, x, reps)
    rows = [dict(shapes=k, onnxruntime_s=ort_per[k], pytorch_s=pt_per.get(k), ratio=pt_per[k] / ort_per[k] if k in pt_per else None,
                 pytorch_timed_s=timed.get(k), timed_ratio=timed[k] / ort_per[k] if k in timed else None)
            for k in sorted(ort_per, key=lambda k: -ort_per[k])]
    matched = [r for r in rows if r["pytorch_s"] is not None]
    return dict(batch=batch, onnxruntime_total_s=ort_total, pytorch_total_s=pt_total, pytorch_rest_s=pt_rest,
                onnxruntime_conv_s=sum(ort_per.values()), pytorch_conv_s=sum(pt_per.values()),
                matched_convs=len(matched), rows=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="32px, batch 1: checks the script, not the machine")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    threads = auto_threads()
    torch.set_num_threads(threads)
    size = 32 if a.smoke else 224
    batches = a.batches or ([1] if a.smoke else [1, 16])
    torch.manual_seed(0)
    model = excite.create_model("resnet50").eval()
    res = dict(smoke=a.smoke, threads=threads, input_size=size, reps=a.reps, label=machine_label(), batches={})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "resnet50.onnx")
        export_onnx(model, path, input_size=(3, size, size), dynamic_batch=True)
        for b in batches:
            res["batches"][str(b)] = r = run_batch(model, b, size, threads, a.reps, path)
            print(f"batch {b}: conv time pytorch {1e3 * r['pytorch_conv_s']:.1f} ms, onnxruntime "
                  f"{1e3 * r['onnxruntime_conv_s']:.1f} ms (fused activation and add included); "
                  f"pytorch rest {1e3 * r['pytorch_rest_s']:.1f} ms")
    out = save_results(res, f"conv-gap-{'smoke' if a.smoke else 'cpu'}", a.out,
                       results_dir=os.path.join(HERE, "results"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
