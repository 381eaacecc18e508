"""``excite convert`` and ``excite attach``: thin wrappers of :func:`excite.keymap.convert` and
:func:`excite.attach`."""

from __future__ import annotations

import json

from ..errors import ExciteError


def _kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExciteError(f"--attention-kwargs {text!r} is not JSON ({e.msg}); e.g. '{{\"k_size\": [3, 5, 5, 7]}}'") from None
    if not isinstance(value, dict):
        raise ExciteError(f"--attention-kwargs must be a JSON object, got {text!r}")
    return value


def cmd_convert(args) -> int:
    from ..keymap import convert

    info = convert(args.src, args.dst, model=args.model, source=args.source, attention=args.attention,
                   attention_kwargs=_kwargs(args.attention_kwargs), num_classes=args.num_classes)
    print(f"loaded {info['loaded']} tensors from {args.src} (source {info['source']}) into {args.model}")
    print(f"wrote {info['weights']} and {info['metadata']}")
    return 0


def build_model(spec: str):
    """A registered model name (built without attention), or ``module:factory`` / ``file.py:factory``.

    The second form lets ``excite attach`` report on a user's own network: ``factory()`` must return an
    ``nn.Module``.
    """
    import importlib
    import importlib.util
    from pathlib import Path

    from torch import nn

    import excite

    if ":" not in spec:
        return excite.create_model(spec, attention="none")
    where, _, attr = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise FileNotFoundError(2, "No such file or directory", where)
            loader = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise ExciteError(f"model {spec!r}: cannot import {where!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ExciteError(f"model {spec!r}: {where!r} has no callable {attr!r}; "
                          "expected MODULE:FACTORY returning an nn.Module")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ExciteError(f"model {spec!r}: {attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def cmd_attach(args) -> int:
    import excite

    model = build_model(args.model)
    size = tuple(int(s) for s in args.input_size.split("x")) if args.input_size else None
    if size is not None and len(size) == 2:
        size = (3, *size)
    where = args.where.split(",") if "," in args.where else args.where
    report = excite.attach(model, args.attention, where=where, init=args.init, input_size=size,
                           **_kwargs(args.attention_kwargs))
    print(report.table())
    return 0


def register(sub) -> None:
    from ..keymap import SOURCES

    p = sub.add_parser("convert", help="convert a torchvision/timm/ECA/CIFAR checkpoint to safetensors + JSON")
    p.add_argument("src", help="checkpoint to read (.pth, .pth.tar, .th, .pt, .safetensors)")
    p.add_argument("dst", help="output .safetensors path (a .json with the settings is written beside it)")
    p.add_argument("--model", required=True, help="registered model name the weights belong to, e.g. resnet50")
    p.add_argument("--source", choices=SOURCES, default="auto", help="naming of the checkpoint (default: guess)")
    p.add_argument("--attention", default=None, help="attention the checkpoint contains (se, eca, cbam ...)")
    p.add_argument("--attention-kwargs", default=None, help="JSON object, e.g. '{\"k_size\": [3, 5, 5, 7]}'")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: from the checkpoint)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("attach", help="show where attention would be attached to a model, and what it costs")
    p.add_argument("model", help="registered model name (built without attention), or MODULE:FACTORY / FILE.py:FACTORY"
                                 " for your own network")
    p.add_argument("attention", help="attention name (se, eca, cbam ...)")
    p.add_argument("--where", default="residual", help="'residual' or module-name patterns, comma separated")
    p.add_argument("--init", choices=("default", "identity"), default="default")
    p.add_argument("--input-size", default=None, help="HxW or CxHxW for MACs and memory, e.g. 224x224")
    p.add_argument("--attention-kwargs", default=None, help="JSON object, e.g. '{\"k_size\": 3}'")
    p.set_defaults(func=cmd_attach)
