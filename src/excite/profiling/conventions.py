"""Counting conventions (the "policy" layer): which terms make up the headline figure, and its units.

* ``paper``: MACs of convolutions and fully connected layers, decimal units. ResNet, ResNeXt,
  SENet, CBAM, MobileNetV2 and EfficientNet all report this and call it "FLOPs".
* ``thop``: MACs plus the terms the ``thop`` package adds through module hooks (the ECA-Net paper
  used it): BatchNorm 4 per element, ReLU 1 per element, adaptive average pooling
  (window + 1) per output element, 1 per output element for a convolution bias. Max pooling,
  fully connected layers beyond their MACs and functional ops (the residual addition, ``x * gate``,
  ``torch.sigmoid``) are invisible to it. Checked against thop's ``count_hooks.py`` of 2019 and the
  ECA paper's Table 3 (ResNet-50 3.86G, SE-ResNet-50 3.87G, ECA-ResNet-50 3.86G, binary units).
  One deliberate difference: a global average pool written as ``x.mean`` counts like
  ``nn.AdaptiveAvgPool2d`` (thop would count it 0), so the same computation counts the same
  whichever way a model writes it; the SE and ECA reference code use the module.
* ``eca-paper``: ``thop`` in binary units (M = 2^20, G = 2^30, parameters included): the ECA paper's
  "ResNet-50 24.37M" is 25,557,032 / 2^20.
* ``senet``: MACs plus every operation inside the attention modules (squeeze, gate, scale), decimal:
  the SENet paper counts the SE block whole (SE-ResNet-50 3.87 GFLOPs, "~0.26%" over ResNet-50's 3.86).
* ``flops``: 2 x MACs, as ``torch.utils.flop_counter`` and fvcore's flop mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from torch import nn

from excite.core.errors import unknown_name


@dataclass(frozen=True)
class Convention:
    """What the headline complexity figure counts (``terms``), its factor and its units."""

    name: str
    terms: str = "macs"  # "macs", "thop" or "macs+attention"
    factor: int = 1  # 2 for FLOPs
    units: str = "decimal"  # "decimal" (1e6, 1e9) or "binary" (2^20, 2^30)
    label: str = "MACs"
    description: str = ""


CONVENTIONS = {
    "paper": Convention("paper", "macs", 1, "decimal", "MACs", "conv + fc multiply-accumulates, decimal units"),
    "thop": Convention("thop", "thop", 1, "decimal", "MACs(thop)", "MACs + thop's BN/ReLU/pool terms"),
    "eca-paper": Convention("eca-paper", "thop", 1, "binary", "MACs(thop)", "thop terms, binary units (ECA-Net Table 3)"),
    "senet": Convention("senet", "macs+attention", 1, "decimal", "MACs+attn", "MACs + the attention blocks' own ops (SENet)"),
    "flops": Convention("flops", "macs", 2, "decimal", "FLOPs", "2 x MACs (torch.utils.flop_counter, fvcore flop mode)"),
}


def get_convention(name: str | Convention, units: str | None = None) -> Convention:
    """A preset by name, optionally with its units replaced (``"decimal"`` or ``"binary"``)."""
    conv = name if isinstance(name, Convention) else CONVENTIONS.get(name)
    if conv is None:
        raise unknown_name("convention", name, CONVENTIONS)
    if units is not None:
        if units not in ("decimal", "binary"):
            raise unknown_name("units", units, ("decimal", "binary"))
        conv = Convention(conv.name, conv.terms, conv.factor, units, conv.label, conv.description)
    return conv


def thop_terms(call) -> int:
    """The extra (non-MAC) operations thop's module hooks attribute to one module call."""
    m, out = call.module, call.out_shape
    if out is None or not call.in_shapes:
        return 0
    n_out, n_in = prod(out), prod(call.in_shapes[0])

    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        # thop's count_bn of 2019 (used by ECA-Net, CVPR 2020): "subtract, divide, gamma, beta".
        return 4 * n_in
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)):
        return n_in
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        window = prod(i // o for i, o in zip(call.in_shapes[0][2:], out[2:]))
        return (window + 1) * n_out
    if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None:
        return n_out
    return 0


def scale(value: float, units: str) -> tuple[float, str]:
    """``value`` in the largest unit below it: (3.86, "G")."""
    base = 1024 if units == "binary" else 1000
    for p, s in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
        if abs(value) >= base**p:
            return value / base**p, s
    return float(value), ""


def fmt(value: float, units: str = "decimal", digits: int = 2) -> str:
    """Human form of a count: ``fmt(25557032, "binary") == "24.37M"``."""
    v, s = scale(value, units)
    return f"{v:.{digits}f}{s}" if s else f"{int(v)}"
