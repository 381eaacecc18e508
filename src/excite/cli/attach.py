"""``excite convert`` and ``excite attach``: thin wrappers of :func:`excite.factory.convert` and
:func:`excite.attach`."""

from __future__ import annotations

from excite.cli.args import MODEL_HELP, add_model_args, merge, model_from_args, settings
from excite.core.errors import ExciteError
from excite.core.registry import model_entry

SOURCES = ("auto", "excite", "torchvision", "timm", "eca-official", "cifar-resnet", "senet-fc")  # keymap.SOURCES (tested)


def cmd_convert(args) -> int:
    from excite.factory import convert  # torch-free start-up

    if ":" in args.model:
        raise ExciteError(f"--model {args.model!r}: convert maps other projects' checkpoints onto a registered "
                          "model; for your own network, load the weights in Python and call excite.save_model")
    model_entry(args.model)
    info = convert(args.src, args.dst, model=args.model, source=args.source, attention=args.attention,
                   attention_kwargs=merge(args.attention_kwargs), num_classes=args.num_classes,
                   **merge(args.model_option))
    print(f"loaded {info['loaded']} tensors from {args.src} (source {info['source']}) into {args.model}")
    print(f"wrote {info['weights']}")
    return 0


def cmd_attach(args) -> int:
    from excite.factory import is_model_file  # torch-free start-up
    from excite.files.modelfile import save_model  # torch-free start-up
    from excite.plug.attach import attach  # torch-free start-up

    if args.out is not None and not args.out.endswith(".safetensors"):
        raise ExciteError(f"--out {args.out!r}: model files are written as .safetensors")
    settings_ = merge(args.attention_kwargs)
    args.attention_kwargs = None  # they belong to the attached module, not to the model's build
    model = model_from_args(args, attention=None)
    size = model.default_input_size
    where = args.where.split(",") if "," in args.where else args.where
    report = attach(model, args.attach, where=where, init=args.init, input_size=size, **settings_)
    print(report.table())
    if args.out is not None:
        keep = getattr(model, "excite_file", {}) if is_model_file(args.model) else {}
        path = save_model(model, args.out, provenance={"attached_to": args.model, **({"from": keep.get("path")} if keep else {})})
        print(f"wrote {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a torchvision/timm/ECA/CIFAR checkpoint to an excite model file")
    p.add_argument("src", help="checkpoint to read (.pth, .pth.tar, .th, .pt, .safetensors); never unpickled with code")
    p.add_argument("dst", help="output model file (.safetensors; the model description goes in its header)")
    p.add_argument("--model", required=True, help="registered model name the weights belong to, e.g. resnet50")
    p.add_argument("--source", choices=SOURCES, default="auto", help="naming of the checkpoint (default: guess)")
    p.add_argument("--attention", default=None, help="attention the checkpoint contains (se, eca, cbam ...)")
    p.add_argument("--attention-kwargs", "--attention-kw", type=settings, action="append", default=None,
                   metavar="KEY=VALUE", help="attention setting, repeatable (k_size=[3,5,5,7]) or a JSON object")
    p.add_argument("--model-option", "-O", type=settings, action="append", default=None, metavar="KEY=VALUE",
                   help="model option, repeatable (variant=v1 ...)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: from the checkpoint)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("attach", help="attach attention to any model (yours too), show where and what it costs; "
                                      "--out saves the result as a model file")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("attach", metavar="ATTENTION", help="attention to attach (se, eca, cbam ...)")
    # Here --attention-kwargs are the settings of the attached module (the model is built as published).
    add_model_args(p, positional=False, attention=False)
    p.add_argument("--where", default="residual", help="'residual' or module-name patterns, comma separated")
    p.add_argument("--init", choices=("default", "identity"), default="default")
    p.add_argument("--out", default=None, help="write the attached model to this .safetensors model file")
    p.set_defaults(func=cmd_attach)
