"""``excite scale``: EfficientNet's compound-scaling table for a base network (a thin wrapper over
(:mod:`excite.profiling.scaling`)."""

from __future__ import annotations

import json

from excite.core.errors import ExciteError

DEFAULT_BASES = ("efficientnet_b0", "resnet20")


def cmd_scale(args) -> int:
    from excite.profiling.scaling import (  # torch-free start-up
        check_constraint,
        compound_scale,
        format_scaling_table,
        scaling_table,
    )

    try:
        phis = [float(p) for p in str(args.phi).split(",") if p.strip()]
    except ValueError:
        raise ExciteError(f"--phi {args.phi!r} is not valid; expected comma-separated numbers, e.g. 0,1,2,3") from None
    coef = dict(alpha=args.alpha, beta=args.beta, gamma=args.gamma)
    single = {k: v for k, v in (("depth", args.depth), ("width", args.width), ("resolution", args.resolution))
              if v is not None}
    for i, base in enumerate(args.base or DEFAULT_BASES):
        if single:  # one row: the factors given, the others 1 (single-dimension scaling)
            rows = [compound_scale(base, None, build=False, **coef, **single)]
        else:
            rows = scaling_table(base, phis, **coef)
        if args.format != "json":
            if i:
                print()
            print(f"{base}: d = {args.alpha}^phi, w = {args.beta}^phi, r = {args.gamma}^phi "
                  f"(alpha beta^2 gamma^2 = {check_constraint(**coef):.3f}); cost x = MACs / base MACs")
            print(format_scaling_table(rows, args.format))
        else:
            print(json.dumps([{k: v for k, v in r.__dict__.items() if k != "model"} for r in rows], indent=2))
    return 0


def register(sub) -> None:
    """Add ``excite scale`` to the CLI's sub-parsers."""
    ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # models.scaling's (tested equal); read here without importing torch

    p = sub.add_parser("scale", help="compound scaling (EfficientNet): d, w, r and cost growth against 2^phi")
    p.add_argument("base", nargs="*", help=f"base networks: efficientnet_b*, CIFAR resnet* (default: {' '.join(DEFAULT_BASES)})")
    p.add_argument("--phi", default="0,1,2,3,4", help="comma-separated compound coefficients (default 0,1,2,3,4)")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"depth base (default {ALPHA})")
    p.add_argument("--beta", type=float, default=BETA, help=f"width base (default {BETA})")
    p.add_argument("--gamma", type=float, default=GAMMA, help=f"resolution base (default {GAMMA})")
    p.add_argument("--depth", type=float, help="scale depth alone by this factor (one row)")
    p.add_argument("--width", type=float, help="scale width alone by this factor (one row)")
    p.add_argument("--resolution", type=float, help="scale resolution alone by this factor (one row)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=cmd_scale)
