"""``excite bench`` and ``excite export onnx``: thin wrappers over :mod:`excite.deploy`."""

from __future__ import annotations

import json
import os

from excite.cli.args import add_model_args, attentions, cleanup_on_failure, int_in, merge, model_from_args, threads
from excite.core.errors import ExciteError


def _square(args, default=None) -> int | None:
    """The side of ``--input-size`` (its channels are checked against the model where it is built)."""
    if args.input_size is None:
        return default
    h, w = args.input_size[-2:]
    if h != w:
        raise ExciteError(f"--input-size {'x'.join(map(str, args.input_size))}: this command takes square inputs "
                          "(N or CxNxN)")
    return h


def cmd_bench(args) -> int:
    from excite.deploy.bench import bench  # torch-free start-up

    attns = attentions(args)
    if args.runtimes:
        return _bench_runtimes(args, attns)
    _square(args)
    r = bench(args.model, attention=attns, optimized=args.optimized, batch_size=args.batch_size,
              input_size=args.input_size, mode=args.mode, dtype=args.dtype, runs=args.runs, warmup=args.warmup,
              threads=args.threads, compile=args.compile, num_classes=args.num_classes,
              attention_kwargs=merge(args.attention_kwargs), options=merge(args.model_option))
    print(json.dumps(r.to_dict(), indent=2) if args.format == "json" else r.table())
    return 0


def _bench_runtimes(args, attns) -> int:
    """``--runtimes``: every way to run the model here, side by side, and which one to deploy with."""
    from excite.deploy.runtimes import compare_runtimes, runtimes_table  # torch-free CLI start-up
    from excite.deploy.timing import MIN_REPS  # torch-free CLI start-up

    if args.mode != "infer" or args.dtype != "fp32":
        raise ExciteError("--runtimes compares fp32 inference runtimes; drop --mode train / --dtype bf16")
    if args.runs < MIN_REPS:
        raise ExciteError(f"--runtimes needs --runs >= {MIN_REPS} (got {args.runs}): fewer rounds cannot tell noise apart")
    backends = ("jit", "inductor") if args.compile else ("jit",)
    for a in attns:
        model = model_from_args(args, attention=a).eval()
        r = compare_runtimes(model, batch_size=args.batch_size, input_size=_square(args), threads=args.threads,
                             reps=args.runs, backends=backends)
        if args.format == "json":
            print(json.dumps(r, indent=2, default=str))
        else:
            print(f"{args.model} + {a or 'default attention'}: " + runtimes_table(r))
    return 0


def cmd_export_onnx(args) -> int:
    if args.int8 and args.calibration != "digits" and not args.calibration.endswith(".npy"):
        raise ExciteError(f"--calibration {args.calibration!r}: expected 'digits' or an .npy file of NCHW images")
    if not args.out.endswith(".onnx"):
        raise ExciteError(f"output {args.out!r}: expected a path ending in .onnx")
    model = model_from_args(args).eval()
    chans = model.default_input_size[0]
    size = _square(args, model.default_input_size[-1])
    if args.int8 and args.calibration == "digits" and chans != 3:
        raise ExciteError(f"--calibration digits gives 3-channel images and the model takes {chans}; "
                          "pass an .npy file of NCHW images")
    if args.int8 and args.calibration != "digits":  # a bad calibration file is one line before anything is written
        from excite.deploy.onnx_export import _load_calibration  # torch-free start-up

        if not os.path.isfile(args.calibration):
            raise ExciteError(f"--calibration {args.calibration}: no such file")
        _load_calibration(args.calibration, size, args.num_calibration + args.num_eval, 0)
    with cleanup_on_failure(args.out, args.out[:-5] + ".int8.onnx" if args.int8 else None):
        return _export(args, model, size)


def _export(args, model, size) -> int:
    from excite.deploy.onnx_export import export_onnx, quantize_int8  # torch-free start-up

    report = export_onnx(model, args.out, input_size=(model.default_input_size[0], size, size),
                         batch_size=args.batch_size, dynamic_batch=args.dynamic_batch)
    print(report.summary())
    print(f"which runtime is fastest on this machine: excite bench {args.model} --runtimes --batch-size {args.batch_size} "
          "(ONNX Runtime beside excite's optimized PyTorch paths and OpenVINO)")
    if args.int8:
        out8 = args.out[:-5] + ".int8.onnx"
        q = quantize_int8(args.out, out8, calibration=args.calibration, input_size=size,
                          num_calibration=args.num_calibration, num_eval=args.num_eval,
                          method=args.calibration_method)
        print(f"wrote {out8} (static int8, {q['method']} ranges from {q['num_calibration']} {q['calibration']} images); "
              f"top-1 agreement with fp32 {100 * q['top1_agreement']:.1f}% on {q['num_eval']} held-out images; "
              f"ONNX Runtime int8 {1e3 * q['int8_s']:.2f} ms vs fp32 {1e3 * q['fp32_s']:.2f} ms ({q['speedup']:.2f}x)")
    return 0


def cmd_export_openvino(args) -> int:
    from excite.deploy.openvino_export import export_openvino  # torch-free start-up

    if not args.out.endswith(".xml"):
        raise ExciteError(f"output {args.out!r}: expected a path ending in .xml (OpenVINO IR)")
    model = model_from_args(args).eval()
    chans = model.default_input_size[0]
    size = _square(args, model.default_input_size[-1])
    report = export_openvino(model, args.out, input_size=(chans, size, size), batch_size=args.batch_size,
                             dynamic_batch=args.dynamic_batch)
    print(report.summary().replace("ONNX Runtime", "OpenVINO"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time a model with several attention modules, interleaved")
    add_model_args(p, compare=True)
    p.add_argument("--batch-size", type=int_in(1, 1 << 14), default=16)
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--optimized", action="store_true", help="also time excite.optimize_for_inference of each variant")
    p.add_argument("--compile", action="store_true", help="run every variant through torch.compile (compiled in the warm-up); "
                   "with --runtimes: also time the Inductor path")
    p.add_argument("--runtimes", action="store_true", help="time eager, excite's optimized paths, ONNX Runtime and "
                   "OpenVINO (if installed) side by side, and name the fastest")
    p.add_argument("--threads", type=threads, default=None, help="torch threads (at most the CPU cores)")
    p.add_argument("--runs", type=int_in(1, 100_000), default=10, help="timed rounds per variant")
    p.add_argument("--warmup", type=int_in(0, 100_000), default=2)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="export a model (ONNX), checked in ONNX Runtime")
    esub = e.add_subparsers(dest="format_", metavar="FORMAT", required=True)
    o = esub.add_parser("onnx", help="export to ONNX and compare ONNX Runtime with PyTorch")
    add_model_args(o)
    o.add_argument("out", help="output .onnx path (its folder is created)")
    o.add_argument("--batch-size", type=int_in(1, 1 << 14), default=1)
    o.add_argument("--dynamic-batch", action="store_true")
    o.add_argument("--int8", action="store_true", help="also write a static int8 model (ONNX Runtime quantization)")
    o.add_argument("--calibration", default="digits", help="calibration images: 'digits' or an NCHW .npy file")
    o.add_argument("--num-calibration", type=int_in(1, 100_000), default=32)
    o.add_argument("--calibration-method", default="moving-average",
                   choices=["moving-average", "minmax", "percentile", "entropy"],
                   help="how activation ranges are set from the calibration images (default: moving-average)")
    o.add_argument("--num-eval", type=int_in(1, 100_000), default=64)
    o.set_defaults(func=cmd_export_onnx)

    v = esub.add_parser("openvino", help="export to OpenVINO IR (.xml/.bin) and compare OpenVINO Runtime with PyTorch "
                                         "(needs: pip install 'excite[openvino]')")
    add_model_args(v)
    v.add_argument("out", help="output .xml path (weights beside it in .bin; its folder is created)")
    v.add_argument("--batch-size", type=int_in(1, 1 << 14), default=1)
    v.add_argument("--dynamic-batch", action="store_true")
    v.set_defaults(func=cmd_export_openvino)
