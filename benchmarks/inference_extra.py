"""The extra inference sections (bf16, int8 agreement, compiled training step): ``inference.py --extra``."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

import excite
from excite.data import load_digits, normalize
from excite.deploy.bench import bench_variants, machine_info
from excite.deploy.onnx_export import export_onnx, quantize_int8


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


def run_extra(smoke: bool, runs: int) -> dict:
    """The extra sections (bf16, int8 agreement, compiled training step): ``--extra``."""
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

    targets += _extra_train(smoke, runs, results)
    return dict(smoke=smoke, runs=runs, targets=targets, results=results)



def _extra_train(smoke: bool, runs: int, results: dict) -> list:
    """The ResNet-56 training step, ECA vs plain, eager and compiled."""
    targets = []
    # Training step, CIFAR ResNet-56 batch 128, ECA vs plain.
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
    return targets
