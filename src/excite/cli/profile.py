"""``excite profile``, ``excite explain`` and ``excite paper-table``: thin wrappers over the library."""

from __future__ import annotations

from excite.cli.args import add_model_args, attentions, int_in, model_from_args, model_label

CONVENTION_NAMES = ("eca-paper", "flops", "paper", "senet", "thop")  # profiling.conventions.CONVENTIONS (tested)


def cmd_profile(args) -> int:
    from excite.profiling.accounting import profile  # torch-free start-up
    from excite.profiling.report import format_comparison, format_profile  # torch-free start-up

    named = []
    for a in attentions(args):
        # Built on the meta device: counting needs shapes only (no memory, no weight initialisation).
        model = model_from_args(args, attention=a, device="meta")
        named.append((model_label(args, a), profile(model, model.default_input_size, args.batch_size)))
    if len(named) == 1:
        print(format_profile(named[0][1], args.convention, args.units, args.depth, args.format))
    else:
        print(format_comparison(named, args.convention, args.units, args.format))
    return 0


def cmd_explain(args) -> int:
    from excite.profiling.explain import explain  # torch-free start-up

    model = model_from_args(args, device="meta")
    print(explain(model, model.default_input_size, name=model_label(args, args.attention)).format(args.format))
    return 0


def cmd_paper_table(args) -> int:
    from excite.profiling.papers import format_paper_table  # torch-free start-up

    print(format_paper_table(args.name, args.format))
    return 0


def register(sub) -> None:
    p = sub.add_parser("profile", help="parameters, MACs, elementwise ops and memory traffic of a model")
    add_model_args(p, compare=True)
    p.add_argument("--batch-size", type=int_in(1, 1 << 16), default=1)
    p.add_argument("--convention", choices=CONVENTION_NAMES, default="paper")
    p.add_argument("--units", choices=("decimal", "binary"), default=None)
    p.add_argument("--depth", type=int_in(0, 64), default=1, help="module tree depth to show")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("explain", help="the parameter count derived layer by layer, with formulas and stage subtotals")
    add_model_args(p)
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("paper-table", help="a paper's published complexity columns beside our counts")
    p.add_argument("name", help="a paper table: resnet, resnet-cifar, resnext, senet, eca, mobilenetv2, efficientnet ...")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=cmd_paper_table)
