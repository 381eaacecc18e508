"""``excite bench`` and ``excite export onnx``: thin wrappers over :mod:`excite.deploy`."""

from __future__ import annotations

import json


def cmd_bench(args) -> int:
    from .bench import bench

    r = bench(args.model, attention=args.attention, optimized=args.optimized, batch_size=args.batch_size,
              input_size=args.input_size, mode=args.mode, dtype=args.dtype, runs=args.runs, warmup=args.warmup,
              threads=args.threads, compile=args.compile)
    print(json.dumps(r.to_dict(), indent=2) if args.format == "json" else r.table())
    return 0


def cmd_export_onnx(args) -> int:
    from .onnx_export import export_onnx, load_model_arg, quantize_int8

    model = load_model_arg(args.model, attention=args.attention)
    size = args.input_size or model.default_input_size[-1]
    report = export_onnx(model, args.out, input_size=(3, size, size), batch_size=args.batch_size,
                         dynamic_batch=args.dynamic_batch)
    print(report.summary())
    if args.int8:
        out8 = args.out[:-5] + ".int8.onnx" if args.out.endswith(".onnx") else args.out + ".int8"
        q = quantize_int8(args.out, out8, calibration=args.calibration, input_size=size,
                          num_calibration=args.num_calibration, num_eval=args.num_eval,
                          method=args.calibration_method)
        print(f"wrote {out8} (static int8, {q['method']} ranges from {q['num_calibration']} {q['calibration']} images); "
              f"top-1 agreement with fp32 {100 * q['top1_agreement']:.1f}% on {q['num_eval']} held-out images; "
              f"ONNX Runtime int8 {1e3 * q['int8_s']:.2f} ms vs fp32 {1e3 * q['fp32_s']:.2f} ms ({q['speedup']:.2f}x)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time a model with several attention modules, interleaved")
    p.add_argument("model", help="registered model name")
    p.add_argument("--attention", nargs="+", default=None, help="attention names to compare (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--optimized", action="store_true", help="also time excite.optimize_for_inference of each variant")
    p.add_argument("--compile", action="store_true", help="run every variant through torch.compile (compiled in the warm-up)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", type=int, default=10, help="timed rounds per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="export a model (ONNX), checked in ONNX Runtime")
    esub = e.add_subparsers(dest="format_", metavar="FORMAT", required=True)
    o = esub.add_parser("onnx", help="export to ONNX and compare ONNX Runtime with PyTorch")
    o.add_argument("model", help="registered model name or a .safetensors checkpoint with its .json beside it")
    o.add_argument("out", help="output .onnx path")
    o.add_argument("--attention", default=None, help="attention for a model name")
    o.add_argument("--input-size", type=int, default=None)
    o.add_argument("--batch-size", type=int, default=1)
    o.add_argument("--dynamic-batch", action="store_true")
    o.add_argument("--int8", action="store_true", help="also write a static int8 model (ONNX Runtime quantization)")
    o.add_argument("--calibration", default="digits", help="calibration images: 'digits' or an NCHW .npy file")
    o.add_argument("--num-calibration", type=int, default=32)
    o.add_argument("--calibration-method", default="moving-average",
                   choices=["moving-average", "minmax", "percentile", "entropy"],
                   help="how activation ranges are set from the calibration images (default: moving-average)")
    o.add_argument("--num-eval", type=int, default=64)
    o.set_defaults(func=cmd_export_onnx)

    from .openvino_export import register_export_openvino  # issue 17: the OpenVINO peer

    register_export_openvino(esub)
