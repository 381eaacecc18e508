"""``excite list``: the registry's models (family, parameters, input size) and attention modules.

Reads the registry's index only, so it answers without importing torch.
"""

from __future__ import annotations

from excite.core.errors import ExciteError
from excite.core.registry import attention_entry, list_attention, list_models, model_entry


def cmd_list(args) -> int:
    what = args.what
    if getattr(args, "compare", False):
        if what != "attention":
            raise ExciteError(f"--compare lists attention modules; use 'excite list attention --compare', not {what!r}")
        from excite.profiling.attention_table import format_comparison  # torch-free CLI start-up

        print(format_comparison())
        return 0
    if what in ("models", "all"):
        names = list_models(args.pattern)
        width = max(map(len, names), default=5)
        print(f"{'model':<{width}} {'family':<18} {'params':>13}  input")
        for name in names:
            e = model_entry(name)
            size = "x".join(str(s) for s in e.default_input_size[1:])
            params = f"{e.params:,}" if e.params is not None else "-"
            print(f"{name:<{width}} {e.family:<18} {params:>13}  {size}")
    if what in ("attention", "all"):
        if what == "all":
            print()
        names = list_attention()
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {attention_entry(name).doc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list models (with parameter counts) or attention modules")
    p.add_argument("what", nargs="?", choices=("models", "attention", "all"), default="all")
    p.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'resnet*'")
    p.add_argument("--compare", action="store_true",
                   help="with 'attention': the comparison table (reduction, interaction, params and MACs on ResNet-50)")
    p.set_defaults(func=cmd_list)
