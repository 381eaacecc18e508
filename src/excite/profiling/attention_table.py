"""The attention comparison table (``excite list attention --compare``), in the form of ECA-Net's
Table 1: dimensionality reduction or not, cross-channel interaction, parameters per block (a formula,
and summed over ResNet-50's 16 blocks) and the MACs the modules add to ResNet-50 at 224 x 224.

Every column comes from the modules themselves: the class attributes ``kind``, ``dim_reduction``,
``interaction``, ``params_formula`` and ``paper`` that each module file sets, and the closed-form cost in
:data:`excite.profiling.formulas.ATTENTION_FORMULAS` evaluated on the modules built (on the meta
device: no memory, no init) for each block of ResNet-50. A newly registered module appears with no
code here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excite.attention import make_attention
from excite.core.registry import attention_class, list_attention
from excite.profiling.conventions import fmt
from excite.profiling.formulas import attention_cost

# ResNet-50 (torchvision v1.5) at 224 x 224: (channels, side, blocks) of each stage's attention slot.
RESNET50_SLOTS = ((256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 3))


@dataclass
class ComparisonRow:
    """One module's row of the comparison table."""

    name: str
    kind: str
    dim_reduction: bool | None
    interaction: str
    params_formula: str
    resnet50_params: int
    resnet50_macs: int
    paper: str


def resnet50_cost(name: str, **kwargs) -> tuple[int, int]:
    """``(params, MACs)`` that attention ``name`` adds in every block of ResNet-50 at 224 x 224."""
    params = macs = 0
    for stage, (c, side, blocks) in enumerate(RESNET50_SLOTS):
        with torch.device("meta"):
            m = make_attention(name, c, kwargs, stage=stage, num_stages=len(RESNET50_SLOTS))
        cost = attention_cost(name, m, c, side, side)
        params += blocks * cost.params
        macs += blocks * cost.macs
    return params, macs


def comparison_rows() -> list[ComparisonRow]:
    """A row for every registered attention module (``none`` excluded), in name order."""
    rows = []
    for name in list_attention():
        if name == "none":
            continue
        cls = attention_class(name)
        params, macs = resnet50_cost(name)
        rows.append(ComparisonRow(name, getattr(cls, "kind", "?"), getattr(cls, "dim_reduction", None),
                                  getattr(cls, "interaction", "?"), getattr(cls, "params_formula", "?"),
                                  params, macs, getattr(cls, "paper", "")))
    return rows


def format_comparison(rows: list[ComparisonRow] | None = None) -> str:
    """The table as text, one module a line, then the module's paper."""
    rows = comparison_rows() if rows is None else rows
    header = ("attention", "kind", "reduction", "interaction", "params / block", "ResNet-50 +params", "+MACs")
    body = [(r.name, r.kind, {True: "yes", False: "no", None: "?"}[r.dim_reduction], r.interaction, r.params_formula,
             f"{r.resnet50_params:,}", fmt(r.resnet50_macs)) for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    right = {5, 6}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), *(line(b) for b in body), "",
           "ResNet-50 at 224x224, the module in all 16 blocks with its defaults; MACs: conv, fc and matmul."]
    out += [f"{r.name}: {r.paper}" for r in rows]
    return "\n".join(out)
