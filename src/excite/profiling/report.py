"""Formatting a ``Profile`` (or several, side by side) as a table, markdown, CSV or JSON."""

from __future__ import annotations

import json

from excite.profiling.conventions import fmt, get_convention


def module_rows(p, depth: int = 2, convention=None):
    """(name, type, params, complexity, elementwise, memory) for modules down to ``depth`` dots; the
    complexity column is raw MACs, or the figure of ``convention`` (e.g. thop's extra terms included),
    so that the model row equals the headline."""
    c = get_convention(convention) if convention is not None else None
    rows = []
    for name, d in p.modules.items():
        level = 0 if name == "" else name.count(".") + 1
        if level <= depth and name in p.module_types:
            value = d["macs"] if c is None else c.factor * (d["macs"] + (d.get("thop_extra", 0) if c.terms == "thop" else 0))
            rows.append((name or "(model)", p.module_types[name], d.get("params", 0), value,
                         d["elementwise"], d["memory"]))
    order = {n: i for i, n in enumerate(p.module_types)}
    rows.sort(key=lambda r: order.get("" if r[0] == "(model)" else r[0], 0))
    return rows


def _table(header, rows, fmt_name="table"):
    if fmt_name == "csv":
        return "\n".join(",".join(str(c) for c in r) for r in [header, *rows])
    if fmt_name == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def format_profile(p, convention="paper", units=None, depth: int = 1, fmt_name: str = "table") -> str:
    """The summary, the per-module tree down to ``depth`` and the per-op table."""
    c = get_convention(convention, units)
    u = c.units
    if fmt_name == "json":
        return json.dumps(profile_dict(p, c), indent=2)
    head = (f"input {p.batch_size}x{'x'.join(map(str, p.input_size))}  convention {c.name} ({c.description})\n"
            f"params {p.params:,} ({fmt(p.params, u)}; trainable {p.trainable:,}, buffers {p.buffers:,})\n"
            f"{c.label} {fmt(p.complexity(c), u)}  (MACs {p.macs:,}; FLOPs = 2 x MACs {p.flops:,})\n"
            f"elementwise {fmt(p.elementwise, u)}  memory {fmt(p.memory, u)}B read+written")
    if p.unsupported:
        head += f"\nUNSUPPORTED (not counted): {', '.join(f'{k} x{v}' for k, v in sorted(p.unsupported.items()))}"
    mods = [(n, t, fmt(pa, u), fmt(m, u), fmt(e, u), fmt(me, u) + "B")
            for n, t, pa, m, e, me in module_rows(p, depth, c if c.terms == "thop" or c.factor != 1 else None)]
    # Per-module attention terms (the senet convention) are not split by module: the column stays MACs.
    col = c.label if c.terms == "thop" or c.factor != 1 else "MACs"
    ops = sorted(p.ops.items(), key=lambda kv: -(kv[1]["macs"] + kv[1]["elementwise"] + kv[1]["memory"]))
    op_rows = [(k, v["calls"], fmt(v["macs"], u), fmt(v["elementwise"], u), fmt(v["memory"], u) + "B") for k, v in ops]
    parts = [head, "", _table(("module", "type", "params", col, "elementwise", "memory"), mods, fmt_name),
             "", _table(("op", "calls", "MACs", "elementwise", "memory"), op_rows, fmt_name)]
    if fmt_name == "csv":
        return _table(("module", "type", "params", "macs", "elementwise", "memory"), module_rows(p, depth), "csv")
    return "\n".join(parts)


def profile_dict(p, c) -> dict:
    """A JSON-ready dict of a profile with its convention."""
    return {"input": [p.batch_size, *p.input_size], "convention": c.name, "units": c.units,
            "params": p.params, "trainable": p.trainable, "buffers": p.buffers, "macs": p.macs,
            "flops": p.flops, "elementwise": p.elementwise, "memory_bytes": p.memory,
            "complexity": p.complexity(c), "unsupported": p.unsupported, "ops": p.ops,
            "modules": {k or "(model)": v for k, v in p.modules.items()}}


def format_comparison(named, convention="paper", units=None, fmt_name="table") -> str:
    """Several profiles side by side; each row after the first shows what its attention adds."""
    c = get_convention(convention, units)
    u = c.units
    base = named[0][1]
    if fmt_name == "json":
        return json.dumps({n: profile_dict(p, c) for n, p in named}, indent=2)
    rows = []
    for name, p in named:
        def add(a, b, unit=""):
            d = a - b
            sign = "+" if d >= 0 else "-"
            return "" if p is base else f"{sign}{fmt(abs(d), u)}{unit} ({100 * d / b:+.2f}%)" if b else ""
        rows.append((name, fmt(p.params, u), add(p.params, base.params), fmt(p.complexity(c), u),
                     add(p.complexity(c), base.complexity(c)), fmt(p.elementwise, u),
                     add(p.elementwise, base.elementwise), fmt(p.memory, u) + "B", add(p.memory, base.memory, "B")))
    header = ("model", "params", "+params", c.label, f"+{c.label}", "elementwise", "+elementwise", "memory", "+memory")
    return _table(header, rows, fmt_name)
