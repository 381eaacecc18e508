"""Core commands: ``excite list``."""

from __future__ import annotations

import torch

from .registry import create_model, list_attention, list_models, model_entry


def count_params(name: str) -> int:
    """Parameters of a registered model, built on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def cmd_list(args) -> int:
    what = args.what
    if what in ("models", "all"):
        names = list_models(args.pattern)
        print(f"{'model':<22} {'family':<14} {'params':>13}  input")
        for name in names:
            e = model_entry(name)
            size = "x".join(str(s) for s in e.default_input_size[1:])
            print(f"{name:<22} {e.family:<14} {count_params(name):>13,}  {size}")
    if what in ("attention", "all"):
        if what == "all":
            print()
        from .registry import attention_class

        for name in list_attention():
            doc = (attention_class(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<10} {doc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list models (with parameter counts) or attention modules")
    p.add_argument("what", nargs="?", choices=("models", "attention", "all"), default="all")
    p.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)
