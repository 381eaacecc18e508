"""``excite paper-table``: the papers' complexity columns beside our counts under each paper's convention.

The published figures live in ``published.json`` (each table with its source). A printed figure is
reproduced when our count, written with the digits the paper printed, gives the same text: rounded
("rounds") or, for the tables marked ``"printed": "truncated"`` because their figures are cut rather
than rounded ("truncates": ResNet's 3.86G printed as 3.8), cut. Anything else is a gap, and a gap the
data file does not explain is reported as unexplained.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources

import torch

from excite.core.errors import unknown_name
from excite.core.registry import model_entry
from excite.profiling.accounting import profile
from excite.profiling.conventions import get_convention
from excite.profiling.report import _table

__all__ = ["PAPER_TABLES", "PaperRow", "paper_table", "format_paper_table", "compare_printed"]

_PRINTED = re.compile(r"^(\d+(?:\.(\d+))?)([KMGT]?)$")
_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def _load() -> dict:
    return json.loads(resources.files("excite.profiling").joinpath("published.json").read_text())


PAPER_TABLES: dict = _load()


def compare_printed(value: float, printed: str, units: str = "decimal", *, truncated: bool = False) -> tuple[str, float]:
    """``(status, relative difference)`` of a raw count against a printed figure like ``"3.86G"``.

    status: ``"rounds"``, ``"truncates"`` (only when the paper is known to cut, ``truncated=True``)
    or ``"gap"``; the difference is ours / printed - 1.
    """
    m = _PRINTED.match(printed)
    if m is None:
        raise ValueError(f"cannot parse the printed figure {printed!r}")
    shown, decimals, unit = float(m.group(1)), len(m.group(2) or ""), m.group(3)
    ours = value / (1024 if units == "binary" else 1000) ** _POWER[unit]
    diff = ours / shown - 1
    ulp = 10.0 ** -decimals
    if f"{ours:.{decimals}f}" == m.group(1):
        return "rounds", diff
    if truncated and abs(math.floor(ours / ulp + 1e-9) * ulp - shown) < ulp / 100:
        return "truncates", diff
    return "gap", diff


@dataclass
class PaperRow:
    label: str
    model: str
    input_size: int
    params: int
    complexity: int
    published_params: str | None
    published_complexity: str | None
    params_status: tuple | None
    complexity_status: tuple | None
    gap: str | None


def paper_table(name: str) -> tuple[dict, list[PaperRow]]:
    """Count every model of the published table ``name`` under that paper's convention."""
    if name not in PAPER_TABLES:
        raise unknown_name("paper table", name, PAPER_TABLES)
    table = PAPER_TABLES[name]
    conv = get_convention(table["convention"])
    cut = table.get("printed") == "truncated"
    rows = []
    for r in table["rows"]:
        kwargs = dict(r.get("kwargs", {}))
        side = r.get("input_size") or table.get("input_size") or model_entry(r["model"]).default_input_size[-1]
        with torch.device("meta"):  # counting needs shapes only: no weight initialisation
            model = model_entry(r["model"]).build(**kwargs)
        p = profile(model, (3, side, side))
        value = p.complexity(conv)
        rows.append(PaperRow(
            r["label"], r["model"], side, p.params, value, r.get("params"), r.get("complexity"),
            compare_printed(p.params, r["params"], conv.units, truncated=cut) if "params" in r else None,
            compare_printed(value, r["complexity"], conv.units, truncated=cut) if "complexity" in r else None,
            r.get("gap")))
    return table, rows


def _ours(value: int, printed: str | None, units: str) -> str:
    if printed is None:
        return f"{value:,}"
    m = _PRINTED.match(printed)
    decimals, unit = len(m.group(2) or ""), m.group(3)
    return f"{value / (1024 if units == 'binary' else 1000) ** _POWER[unit]:.{decimals + 2}f}{unit}"


def _status(s) -> str:
    if s is None:
        return ""
    status, diff = s
    return status if status != "gap" else f"gap {100 * diff:+.1f}%"


def format_paper_table(name: str, fmt_name: str = "table") -> str:

    table, rows = paper_table(name)
    conv = get_convention(table["convention"])
    u = conv.units
    if fmt_name == "json":
        return json.dumps({"table": name, **{k: table[k] for k in ("title", "source", "convention")},
                           "rows": [r.__dict__ for r in rows]}, indent=2, default=list)
    out = [(r.label, r.model, r.input_size, r.published_params or "", _ours(r.params, r.published_params, u),
            _status(r.params_status), r.published_complexity or "", _ours(r.complexity, r.published_complexity, u),
            _status(r.complexity_status)) for r in rows]
    header = ("model", "excite name", "input", "paper params", "ours", "check", f"paper {conv.label}", "ours", "check")
    parts = [table["title"], f"source: {table['source']}",
             f"convention: {conv.name}: {conv.description}", "",
             _table(header, out, "markdown" if fmt_name == "markdown" else fmt_name)]
    if table.get("notes"):
        parts += ["", table["notes"]]
    gaps = [(r.label, r.gap) for r in rows if r.gap]
    unexplained = [r.label for r in rows if not r.gap and "gap" in (_status(r.params_status) + _status(r.complexity_status))]
    parts += [f"gap, {label}: {text}" for label, text in gaps]
    if unexplained:
        parts.append("UNEXPLAINED gap: " + ", ".join(unexplained))
    return "\n".join(parts)
