"""Core commands: ``excite list``.

``excite list models`` reads a catalog of the registered models (``models/catalog.json``: family,
input size, parameter count) instead of building every model, so it answers without importing torch.
A test rebuilds the catalog from the registry and fails when it drifts; refresh it with
``python -m excite.cli.listing``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from importlib import resources
from pathlib import Path

CATALOG = "catalog.json"


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_catalog() -> dict:
    # Read through the top package: importing excite.models would build the registry (and import torch).
    return json.loads(resources.files("excite").joinpath("models", CATALOG).read_text())


def build_catalog() -> dict:
    """The catalog from the registry: every model built on the meta device (no memory, no init)."""
    import torch

    from excite.factory import create_model, list_attention, list_models
    from excite.core.registry import attention_class, model_entry

    models = {}
    for name in list_models():
        e = model_entry(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model(name).parameters())
        models[name] = {"family": e.family, "input_size": list(e.default_input_size), "params": params}
    attention = {n: (attention_class(n).__doc__ or "").strip().splitlines()[0] for n in list_attention()}
    return {"models": models, "attention": attention}


def cmd_list(args) -> int:
    what = args.what
    if getattr(args, "compare", False):
        if what != "attention":
            from excite.core.errors import ExciteError

            raise ExciteError(f"--compare lists attention modules; use 'excite list attention --compare', not {what!r}")
        from excite.profiling.attention_table import format_comparison  # imports torch: only for --compare

        print(format_comparison())
        return 0
    catalog = load_catalog()
    if what in ("models", "all"):
        names = sorted((n for n in catalog["models"] if fnmatch.fnmatchcase(n, args.pattern)), key=_natural_key)
        print(f"{'model':<22} {'family':<18} {'params':>13}  input")
        for name in names:
            e = catalog["models"][name]
            size = "x".join(str(s) for s in e["input_size"][1:])
            print(f"{name:<22} {e['family']:<18} {e['params']:>13,}  {size}")
    if what in ("attention", "all"):
        if what == "all":
            print()
        for name, doc in sorted(catalog["attention"].items()):
            print(f"{name:<10} {doc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list models (with parameter counts) or attention modules")
    p.add_argument("what", nargs="?", choices=("models", "attention", "all"), default="all")
    p.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'resnet*'")
    p.add_argument("--compare", action="store_true",
                   help="with 'attention': the comparison table (reduction, interaction, params and MACs on ResNet-50)")
    p.set_defaults(func=cmd_list)


if __name__ == "__main__":  # refresh the catalog after adding a model family
    path = Path(__file__).parent / "models" / CATALOG
    path.write_text(json.dumps(build_catalog(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
