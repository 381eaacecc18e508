"""``excite list``: the registry's models (family, parameters, input size) and attention modules.

Reads the registry's index only, so it answers without importing torch.
"""

from __future__ import annotations

from excite.core.registry import attention_entry, list_attention, list_models, model_entry


def cmd_list(args) -> int:
    what = args.what
    if what in ("models", "all"):
        print(f"{'model':<22} {'family':<18} {'params':>13}  input")
        for name in list_models(args.pattern):
            e = model_entry(name)
            size = "x".join(str(s) for s in e.default_input_size[1:])
            params = f"{e.params:,}" if e.params is not None else "-"
            print(f"{name:<22} {e.family:<18} {params:>13}  {size}")
    if what in ("attention", "all"):
        if what == "all":
            print()
        for name in list_attention():
            print(f"{name:<10} {attention_entry(name).doc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list models (with parameter counts) or attention modules")
    p.add_argument("what", nargs="?", choices=("models", "attention", "all"), default="all")
    p.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)
