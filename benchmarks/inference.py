"""Inference benchmark: each target measured as a ratio of interleaved variants in one process.

    python benchmarks/inference.py                 # issue 17 suite, ~10 minutes on 2 busy cores
    python benchmarks/inference.py --smoke         # tiny sizes, checks the script end to end
    python benchmarks/inference.py --extra         # also the issue 7 sections (bf16, int8 agreement, compiled step)

Peers side by side in one process, on ECA-ResNet-50 and ResNet-50 at batch 1 and 16: PyTorch eager,
timm's equivalent when importable, ``excite.optimize_for_inference`` with default arguments (and
forced contiguous: the memory-format evidence), ONNX Runtime fp32 and static int8, and OpenVINO when
installed (``pip install excite[openvino]``). Every peer runs with the same thread count (excite's
default: the cores free now). Writes benchmarks/results/inference-<cpu|smoke>-<date>.json with the
machine, the load average before and after, runs, medians and quartiles, and each target met / missed
with the measured ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

import excite
from excite.data import load_digits, normalize
from excite.deploy.bench import bench_variants, machine_info, matmul_peak, save_results, time_interleaved
from excite.deploy.onnx_export import export_onnx, quantize_int8
from excite.deploy.threads import auto_threads


def _variants(model_name, attns, size, batch, optimized=True, num_classes=None):
    """Eager and optimized variants (default arguments: one memory format for all, by rule)."""
    out = []
    for a in attns:
        m = excite.create_model(model_name, attention=a, num_classes=num_classes).eval()
        out.append((f"{a} eager", m))
        if optimized:
            out.append((f"{a} optimized", excite.optimize_for_inference(m)))
    return out


def _trained_on_digits(model_name, epochs):
    """``model_name`` + ECA trained on the embedded digits (32x32), its test split and top-1."""
    _, test = load_digits()
    res = excite.train(model=model_name, attention="eca", dataset="digits", epochs=epochs, progress=False)
    return res["model"].eval(), test, res["top1"]


def _median(r, label):
    return next(v for v in r.variants if v.label == label).median_s


def _target(name, ratio, goal, higher_is_better, evidence, note=""):
    met = ratio >= goal if higher_is_better else ratio <= goal
    gap = "" if met else (f"missed by {100 * abs(ratio - goal) / goal:.1f}% of the goal")
    return dict(target=name, ratio=round(ratio, 4), goal=goal, met=met, gap=gap, evidence=evidence, note=note)


def _peers(model, x, onnx_dir, tag, threads, with_int8=True, timm_name="resnet50", timm_attn=None):
    """``{label: step}`` for one model at one input: every runtime the user could pick. The ONNX
    files (dynamic batch) are exported and quantized once per model and reused for every batch."""
    steps, skipped = {}, {}
    opt = excite.optimize_for_inference(model)  # default arguments, as a user calls it
    contig = excite.optimize_for_inference(model, channels_last=False)
    steps["pytorch eager"] = lambda: _infer(model, x)
    steps["excite optimized"] = lambda: _infer(opt, x)
    steps["excite optimized, contiguous"] = lambda: _infer(contig, x)
    if x.shape[0] == 1:  # what grad mode costs: the same call without torch.no_grad / inference_mode
        steps["excite optimized, grad mode on"] = lambda: opt(x)
    try:
        import timm

        # timm's ResNet-50 with ECA in every bottleneck (the same placement as excite's), random weights.
        kw = {} if timm_attn is None else dict(block_args=dict(attn_layer=timm_attn))
        tm = timm.create_model(timm_name, pretrained=False, **kw).eval()
        steps["timm eager"] = lambda: _infer(tm, x)
    except Exception as e:  # timm does not import on this machine, or lacks the model
        skipped["timm"] = f"not available ({type(e).__name__}: {str(e)[:80]})"
    fp = os.path.join(onnx_dir, f"{tag}.onnx")
    if not os.path.exists(fp):
        export_onnx(model, fp, input_size=tuple(x.shape[1:]), batch_size=1, dynamic_batch=True)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s32 = ort.InferenceSession(fp, so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    steps["onnxruntime fp32"] = lambda: s32.run(None, {"input": xn})
    if with_int8:
        q8 = os.path.join(onnx_dir, f"{tag}.int8.onnx")
        if not os.path.exists(q8):
            quantize_int8(fp, q8, input_size=x.shape[-1], num_calibration=8, num_eval=2, reps=1, threads=threads)
        s8 = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])
        steps["onnxruntime int8"] = lambda: s8.run(None, {"input": xn})
    try:
        import openvino as ov

        core = ov.Core()
        cm = core.compile_model(core.read_model(fp), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "PERFORMANCE_HINT": "LATENCY"})
        req = cm.create_infer_request()
        steps["openvino fp32"] = lambda: req.infer({0: xn})
    except ImportError:
        skipped["openvino fp32"] = "openvino not installed (pip install excite[openvino])"
    return steps, skipped, opt


def _infer(m, x):
    with torch.inference_mode():
        return m(x)


def run(smoke: bool, runs: int, budget=(100, 300), train: bool = True, save=None) -> dict:
    """The issue 17 suite; ``budget``: seconds for the timed rounds at batch 1 and at batch 16."""
    size = 64 if smoke else 224
    r50 = "resnet18" if smoke else "resnet50"
    threads = torch.get_num_threads()
    load = [os.getloadavg()]
    peak = matmul_peak(torch.float32)
    results, targets, skipped = {}, [], {}
    macs = {a: int(excite.profile(excite.create_model(r50, attention=None if a == "none" else a),
                                  input_size=(3, size, size)).macs) for a in ("none", "eca")}
    with tempfile.TemporaryDirectory() as d:
        for batch in (1, 2 if smoke else 16):
            torch.manual_seed(0)
            x = torch.randn(batch, 3, size, size)
            steps, fmts = {}, {}
            for a in ("none", "eca"):
                m = excite.create_model(r50, attention=None if a == "none" else a).eval()
                st, sk, opt = _peers(m, x, d, a, threads, with_int8=a == "eca", timm_name=r50,
                                     timm_attn=None if a == "none" else a)
                fmts[a] = opt.excite_channels_last
                steps.update({f"{a} | {k}": v for k, v in st.items()})
                skipped.update({f"{a} | {k}": v for k, v in sk.items()})
            if batch > 1 and not smoke:
                # One batch-16 call of ResNet-50 takes 1-2 s on 2 idle cores and ~20 s on 1 busy one: the
                # plain model keeps only the variant the ECA-vs-plain target needs (int8 is timed at batch 1).
                # On a loaded machine (~20 s a call) only the variants the targets need, no warm-up call
                # (first-call costs are small against a 1-2 s call), at least 2 rounds.
                keep = ("eca | pytorch eager", "eca | excite optimized", "none | excite optimized", "eca | onnxruntime fp32")
                steps = {k: steps[k] for k in keep}
            # Up to `runs` rounds, fewer where a loaded machine makes a round slow.
            big = batch > 1 and not smoke
            t = time_interleaved(steps, runs=3 if big else runs, warmup=0 if big else 1,
                                 budget_s=None if smoke else budget[big], min_runs=2 if big else 3)
            n = next(iter(t.values()))["runs"]
            for k, r in t.items():
                a = k.split(" | ")[0]
                r["img_per_s"] = batch / r["median_s"]
                r["mac_rate"] = macs[a] * batch / r["median_s"]
                r["peak_fraction"] = r["mac_rate"] / peak
                if f"{a} | pytorch eager" in t:
                    r["x_eager"] = t[f"{a} | pytorch eager"]["median_s"] / r["median_s"]
            results[f"peers_batch{batch}"] = dict(batch=batch, runs=n, formats=fmts, timings=t)
            if save:  # a partial file: on a loaded machine the batch-16 section can outlast a deadline
                save(dict(smoke=smoke, runs=runs, threads=threads, partial=True, loadavg_start_mid_end=load + [os.getloadavg()],
                          skipped=skipped, targets=targets, results=results))
            med = {k: r["median_s"] for k, r in t.items()}
            if "eca | excite optimized, contiguous" not in med:
                med["eca | excite optimized, contiguous"] = float("inf")
            goal = 1.2 if batch == 1 else 1.5
            targets.append(_target(f"{r50}+eca optimized (defaults) / eager speedup, batch {batch}",
                                   med["eca | pytorch eager"] / med["eca | excite optimized"], goal, True,
                                   dict(channels_last=fmts["eca"], peak_fraction=t["eca | excite optimized"]["peak_fraction"])))
            targets.append(_target(f"{r50}+eca optimized / {r50} optimized time, batch {batch}",
                                   med["eca | excite optimized"] / med["none | excite optimized"], 1.03, False,
                                   dict(same_format=fmts["eca"] == fmts["none"], macs_increase=macs["eca"] / macs["none"] - 1),
                                   "floor: one extra read of each attended activation (global pooling)"))
            best = min(med["eca | excite optimized"], med["eca | excite optimized, contiguous"])
            targets.append(_target(f"onnxruntime fp32 time / best excite time, {r50}+eca, batch {batch}",
                                   med["eca | onnxruntime fp32"] / best, 1.0, True,
                                   {k.split(" | ")[1]: round(v, 5) for k, v in med.items() if k.startswith("eca |")}))
            targets.append(_target(f"share of the sgemm peak, {r50}+eca optimized, batch {batch}",
                                   t["eca | excite optimized"]["peak_fraction"], 0.9, True,
                                   dict(peak_macs_per_s=peak, mac_rate=t["eca | excite optimized"]["mac_rate"]),
                                   "peak: best of 5 1024x1024 fp32 matmuls at the same thread count"))
            if med["eca | excite optimized, contiguous"] != float("inf"):
                targets.append(dict(target=f"channels-last / contiguous time, {r50}+eca optimized, batch {batch} (the rule's evidence)",
                                    ratio=round(med["eca | excite optimized"] / med["eca | excite optimized, contiguous"], 4),
                                    met=None, evidence=dict(none=round(med["none | excite optimized"] / med["none | excite optimized, contiguous"], 4)
                                                            if "none | excite optimized, contiguous" in med else None)))
            if batch == 1:
                targets.append(dict(target=f"grad mode on / inference mode time, {r50}+eca optimized, batch 1",
                                    ratio=round(med["eca | excite optimized, grad mode on"] / med["eca | excite optimized"], 4),
                                    met=None, evidence={}))
    load.append(os.getloadavg())
    if train:
        targets += _train_targets(smoke, runs, results)
        load.append(os.getloadavg())
    return dict(smoke=smoke, runs=runs, threads=threads, loadavg_start_mid_end=load, skipped=skipped, targets=targets,
                results=results)


def _train_targets(smoke, runs, results):
    """Training step, CIFAR ResNet-56 batch 128, ECA vs plain, contiguous and channels-last."""
    targets = []
    # Training step, CIFAR ResNet-56 batch 128, ECA vs plain, contiguous and channels-last.
    tb, tsize = (8, 32) if smoke else (128, 32)
    tv = []
    for cl in (False, True):
        for a in ("none", "eca"):
            m = excite.create_model("resnet56", attention=None if a == "none" else a)
            if cl:
                m.to(memory_format=torch.channels_last)
                m.excite_channels_last = True  # bench_variants feeds it a channels-last batch
            tv.append((f"{a}{' channels-last' if cl else ''}", m))
    rt = bench_variants(tv, batch_size=tb, input_size=tsize, runs=max(3, runs // 3), mode="train", model_name="resnet56",
                        measure_peak=False)
    results["train_resnet56"] = rt.to_dict()
    tm = {v.label: v.median_s for v in rt.variants}
    p0 = excite.profile(excite.create_model("resnet56"), (3, tsize, tsize), tb)
    p1 = excite.profile(excite.create_model("resnet56", attention="eca"), (3, tsize, tsize), tb)
    ev = dict(forward_memory_traffic_increase=round(p1.memory / p0.memory - 1, 4),
              attention_share={v.label: v.attention_share for v in rt.variants},
              channels_last_vs_contiguous_none=round(tm["none channels-last"] / tm["none"], 4))
    targets.append(_target("resnet56 train step eca / none", tm["eca"] / tm["none"], 1.05, False, ev))
    targets.append(_target("resnet56 train step eca / none, channels-last", tm["eca channels-last"] / tm["none channels-last"],
                           1.05, False, ev))
    return targets


def run_extra(smoke: bool, runs: int) -> dict:
    """The issue 7 sections (bf16, int8 agreement, compiled training step): ``--extra``."""
    size, batch = (64, 2) if smoke else (224, 16)
    r50 = "resnet18" if smoke else "resnet50"
    results, targets = {}, []

    # 1. optimized vs eager, ECA vs plain, SE / CBAM overheads: one interleaved run.
    r = bench_variants(_variants(r50, ["none", "eca", "se", "cbam"], size, batch), batch_size=batch, input_size=size,
                       runs=runs, model_name=r50)
    results["resnet50_fp32"] = r.to_dict()
    share = {v.label: v.attention_share for v in r.variants}
    ev = dict(attention_share=share, peak_fraction={v.label: v.peak_fraction for v in r.variants})
    targets.append(_target(f"{r50}+eca optimized / eager speedup", _median(r, "eca eager") / _median(r, "eca optimized"),
                           1.2, True, ev))
    targets.append(_target(f"{r50}+eca optimized time / {r50} optimized time",
                           _median(r, "eca optimized") / _median(r, "none optimized"), 1.03, False, ev,
                           "floor: one extra read of each attended activation (global pooling)"))
    for a in ("se", "cbam"):
        ratio = _median(r, f"{a} optimized") / _median(r, "none optimized")
        targets.append(dict(target=f"{a} overhead over optimized backbone (reported, no goal)", ratio=round(ratio, 4),
                            met=None, evidence=dict(attention_share=share[f"{a} optimized"])))

    # 2-3. bf16 and int8 need trained weights for a meaningful top-1 agreement: the same ECA model,
    # trained briefly on the embedded digits at 32x32 (fully convolutional, so it also runs at 224).
    m, test, top1 = _trained_on_digits(r50, epochs=1 if smoke else 3)
    x32 = normalize(test.images, test.mean, test.std)
    with torch.inference_mode():
        p32 = m(x32).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = m(x32).argmax(1)
    bf16_agree = float((p32 == p16).float().mean())
    # Without native bf16 (avx512_bf16 / AMX) oneDNN emulates it, ~20x slower than fp32: a few runs suffice.
    bf16_native = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)())
    rf = bench_variants([("fp32", m)], batch_size=batch, input_size=size, runs=runs, dtype="fp32", measure_peak=False)
    rb = bench_variants([("bf16", m)], batch_size=batch, input_size=size, runs=runs if bf16_native else 3,
                        warmup=2 if bf16_native else 1, dtype="bf16")
    results["bf16"] = dict(fp32=rf.to_dict(), bf16=rb.to_dict(), top1_agreement=bf16_agree, num_eval=len(test),
                           model_top1=top1)
    targets.append(_target("bf16 / fp32 eager speedup", rf.variants[0].median_s / rb.variants[0].median_s, 1.8, True,
                           dict(avx512_bf16=machine_info()["avx512_bf16"], amx=machine_info()["amx"],
                                onednn_bf16_supported=bf16_native, bf16_top1_agreement=bf16_agree),
                           "" if bf16_native else "this CPU has no native bf16 (no avx512_bf16, no AMX; oneDNN reports "
                           "bf16 unsupported), so bf16 is emulated: a target for CPUs that have it"))

    # ONNX Runtime static int8: speed at the benchmark size; agreement on the digits test set at 32x32,
    # calibrated on training images (disjoint from the test set).
    with tempfile.TemporaryDirectory() as d:
        fp = os.path.join(d, "m.onnx")
        rep = export_onnx(m, fp, input_size=(3, size, size), batch_size=batch)
        q = quantize_int8(fp, os.path.join(d, "m8.onnx"), input_size=size, num_calibration=2 * batch,
                          num_eval=2 * batch, reps=runs)
        train, _ = load_digits()
        calib = torch.cat([normalize(train.images[:64], test.mean, test.std), x32]).numpy()
        npy = os.path.join(d, "digits32.npy")
        np.save(npy, calib)
        fp32 = os.path.join(d, "m32.onnx")
        export_onnx(m, fp32, input_size=(3, 32, 32), batch_size=10)
        n_eval = len(test) // 10 * 10
        qa = quantize_int8(fp32, os.path.join(d, "m32_8.onnx"), calibration=npy, input_size=32, num_calibration=64,
                           num_eval=n_eval, reps=1)
    eager = rf.variants[0].median_s
    results["onnx"] = dict(export_max_abs_err=rep.max_abs_err, export_max_rel_err=rep.max_rel_err, speed=q,
                           agreement=qa, model_top1=top1)
    targets.append(_target("ORT int8 / fp32 eager speedup", eager / q["int8_s"], 2.5, True,
                           dict(ort_fp32_s=q["fp32_s"], int8_s=q["int8_s"], eager_fp32_s=eager)))
    targets.append(_target("ORT int8 top-1 agreement", qa["top1_agreement"], 0.99, True, {},
                           f"{qa['num_eval']} digits test images, model trained to {top1:.1f}% top-1"))

    # 4. Training step, CIFAR ResNet-56 batch 128, ECA vs plain.
    tb, tsize = (8, 32) if smoke else (128, 32)
    rt = bench_variants([("none", excite.create_model("resnet56")), ("eca", excite.create_model("resnet56", attention="eca"))],
                        batch_size=tb, input_size=tsize, runs=runs, mode="train", model_name="resnet56")
    results["train_resnet56"] = rt.to_dict()
    p0 = excite.profile(excite.create_model("resnet56"), (3, tsize, tsize), tb)
    p1 = excite.profile(excite.create_model("resnet56", attention="eca"), (3, tsize, tsize), tb)
    targets.append(_target("resnet56 train step eca / none", rt.variants[1].ratio, 1.05, False,
                           dict(forward_memory_traffic_increase=round(p1.memory / p0.memory - 1, 4),
                                forward_macs_increase=round(p1.macs / p0.macs - 1, 6)),
                           "ResNet-56's layers are narrow (16-64 channels at 32x32, 0.13 GMACs an image), so the "
                           "memory-bound passes of the gate (forward: pool, rescale; backward: the rescale's two "
                           "gradients and the pool's) weigh more against the convolutions than in ResNet-50"))
    # The same step through torch.compile: Inductor fuses the gate's elementwise passes (pool, sigmoid,
    # rescale, residual add, ReLU and their gradients) into a few loops, which eager PyTorch cannot.
    rc = bench_variants([("none", excite.create_model("resnet56")), ("eca", excite.create_model("resnet56", attention="eca"))],
                        batch_size=tb, input_size=tsize, runs=runs, mode="train", model_name="resnet56", compile=True)
    results["train_resnet56_compiled"] = rc.to_dict()
    targets.append(_target("resnet56 train step eca / none, torch.compile", rc.variants[1].ratio, 1.05, False,
                           dict(compiled_none_vs_eager_none=round(rc.variants[0].median_s / rt.variants[0].median_s, 4)),
                           "both models compiled (Inductor, default mode), compile time excluded"))
    return dict(smoke=smoke, runs=runs, targets=targets, results=results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the machine")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--train", action="store_true", help="also the ResNet-56 training step (eca / none, both formats)")
    ap.add_argument("--extra", action="store_true", help="also the issue 7 sections (bf16, int8 agreement, compiled step)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads or auto_threads())  # excite's default: the cores free now
    runs = a.runs or (2 if a.smoke else 9)
    rdir = os.path.join(os.path.dirname(__file__), "results")
    name = f"inference-{'smoke' if a.smoke else 'cpu'}"
    res = run(a.smoke, runs, train=a.smoke or a.train, save=lambda r: save_results(r, name, a.out, results_dir=rdir))
    if a.extra:
        extra = run_extra(a.smoke, runs)
        res["targets"] += extra["targets"]
        res["results"].update(extra["results"])
    out = save_results(res, f"inference-{'smoke' if a.smoke else 'cpu'}", a.out,
                       results_dir=os.path.join(os.path.dirname(__file__), "results"))
    for t in res["targets"]:
        flag = {True: "met", False: "MISSED", None: "info"}[t["met"]]
        print(f"{flag:>6}  {t['target']}: {t['ratio']}" + (f" (goal {t['goal']})" if "goal" in t else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
