"""``excite profile``, ``excite explain`` and ``excite paper-table``: thin wrappers over the library."""

from __future__ import annotations

from .conventions import CONVENTIONS


def cmd_profile(args) -> int:
    from ..registry import create_model, model_entry
    from . import profile
    from .report import format_comparison, format_profile

    entry = model_entry(args.model)
    size = (3, args.input_size, args.input_size) if args.input_size else tuple(entry.default_input_size)
    attns = args.attention or [None]
    named = []
    for a in attns:
        model = _meta_model(create_model, args.model, a)
        named.append((f"{args.model}" + (f" +{a}" if a else ""), profile(model, size, args.batch_size)))
    if len(named) == 1:
        print(format_profile(named[0][1], args.convention, args.units, args.depth, args.format))
    else:
        print(format_comparison(named, args.convention, args.units, args.format))
    return 0


def cmd_explain(args) -> int:
    from ..registry import create_model, model_entry
    from .explain import explain

    entry = model_entry(args.model)
    size = (3, args.input_size, args.input_size) if args.input_size else tuple(entry.default_input_size)
    model = _meta_model(create_model, args.model, args.attention)
    print(explain(model, size, name=args.model + (f" +{args.attention}" if args.attention else "")).format(args.format))
    return 0


def cmd_paper_table(args) -> int:
    from .papers import format_paper_table

    print(format_paper_table(args.name, args.format))
    return 0


def _meta_model(create_model, name, attention):
    # Building on the meta device skips weight initialisation: counting needs only shapes.
    import torch

    with torch.device("meta"):
        return create_model(name, attention=attention)


def register(sub) -> None:
    p = sub.add_parser("profile", help="parameters, MACs, elementwise ops and memory traffic of a model")
    p.add_argument("model")
    p.add_argument("--attention", action="append", help="attention to add (repeat to compare side by side)")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="paper")
    p.add_argument("--units", choices=("decimal", "binary"), default=None)
    p.add_argument("--depth", type=int, default=1, help="module tree depth to show")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("explain", help="the parameter count derived layer by layer, with formulas and stage subtotals")
    p.add_argument("model")
    p.add_argument("--attention", default=None, help="attention to add before explaining")
    p.add_argument("--input-size", type=int, default=None, help="square input side for the MACs (default: the model's)")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.set_defaults(func=cmd_explain)

    from .papers import PAPER_TABLES

    p = sub.add_parser("paper-table", help="a paper's published complexity columns beside our counts")
    p.add_argument("name", help="one of: " + ", ".join(PAPER_TABLES))
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=cmd_paper_table)
