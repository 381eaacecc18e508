"""EfficientNet's compound scaling (Tan & Le, ICML 2019, sec. 3.3) as a function of any base family.

One coefficient phi scales depth, width and resolution together::

    depth d = alpha^phi,  width w = beta^phi,  resolution r = gamma^phi,
    alpha * beta^2 * gamma^2 ~ 2,  alpha = 1.2, beta = 1.1, gamma = 1.15   (paper eq. 3 and sec. 4)

so that the cost (FLOPS, proportional to d * w^2 * r^2) grows by about 2^phi. Giving ``depth``,
``width`` or ``resolution`` instead scales one dimension alone, the paper's Table 3 / Fig. 3 baselines,
which saturate where compound scaling keeps improving.

The bases: the EfficientNet family (factors multiply the base's own, B0 is 1/1/224) and the CIFAR
ResNets (``ceil(n d)`` blocks per stage, ``round(c w)`` channels, input resized by ``r`` in the model;
see :class:`excite.models.resnet.CifarResNet`). The reported cost growth is *measured*: the scaled
model's MACs over the base's, which rounding of blocks, channels and pixels moves off ``d w^2 r^2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import model_entry
from excite.models.efficientnet import VARIANTS, EfficientNet, MBConv
from excite.models.resnet import CifarBasicBlock
from excite.profiling.accounting import profile
from excite.profiling.report import _table

__all__ = ["ALPHA", "BETA", "GAMMA", "ScaledModel", "compound_scale", "scaling_table", "format_scaling_table",
           "check_constraint"]

# EfficientNet sec. 4: the grid search at phi = 1 on B0 found alpha = 1.2, beta = 1.1, gamma = 1.15.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


@dataclass
class ScaledModel:
    """One scaled network: its factors, its size and its cost against the base.

    ``depth``, ``width``, ``resolution``: the factors asked for (d, w, r). ``blocks``, ``channels`` and
    ``pixels`` (the side the network sees): what it got after rounding; ``input_size``: the side to
    feed it (a CIFAR ResNet resizes its 32x32 input by r itself, so it stays 32). ``cost``: measured MACs / base MACs;
    ``target``: ``d w^2 r^2`` (equal to ``(alpha beta^2 gamma^2)^phi``), against ``2^phi`` when
    scaled by phi.
    """

    base: str
    phi: float | None
    depth: float
    width: float
    resolution: float
    blocks: int
    channels: int
    pixels: int
    input_size: int
    params: int
    macs: int
    cost: float
    target: float
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def two_to_phi(self) -> float | None:
        return None if self.phi is None else 2.0 ** self.phi


def _family(base: str) -> str:
    fam = model_entry(base).family
    if fam not in ("efficientnet", "resnet-cifar"):
        raise ExciteError(f"compound scaling needs an EfficientNet or CIFAR ResNet base, got {base!r} ({fam})")
    return fam


def _build(base: str, d: float, w: float, r: float, options: dict):
    """(model, input side) of ``base`` scaled by d, w, r."""
    if _family(base) == "efficientnet":
        bw, bd, bres, dropout = VARIANTS[base.removeprefix("efficientnet_")]
        kw = {k: v for k, v in options.items() if k != "dropout"}
        model = EfficientNet(bw * w, bd * d, options.get("dropout", dropout), **kw)
        return model, int(round(bres * r))
    model = model_entry(base).build(depth_mult=d, width_mult=w, resolution_mult=r, **options)
    return model, model_entry(base).default_input_size[-1]


def _shape(model: nn.Module) -> tuple[int, int]:
    """(residual blocks, final feature channels) of a built model, for the table."""
    blocks = sum(isinstance(m, (MBConv, CifarBasicBlock)) for m in model.modules())
    return blocks, int(getattr(model, "num_features", 0))


def compound_scale(base: str, phi: float | None = None, *, alpha: float = ALPHA, beta: float = BETA,
                   gamma: float = GAMMA, depth: float | None = None, width: float | None = None,
                   resolution: float | None = None, build: bool = True, **options) -> ScaledModel:
    """Scale ``base`` (``"efficientnet_b0"``, ``"resnet20"``, ...) by ``phi`` or by explicit factors.

    With ``phi``: d, w, r = alpha^phi, beta^phi, gamma^phi; an explicit ``depth`` / ``width`` /
    ``resolution`` overrides its factor. Without ``phi``: each factor not given is 1 (single-dimension
    scaling). ``build=False`` counts on the meta device and returns no usable weights (fast);
    ``options`` go to the builder (``attention=``, ``num_classes=`` ...).

    Returns a :class:`ScaledModel` with the measured cost growth (MACs / the base's MACs).
    """
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_range(name, v, low=1e-3)
    if phi is not None:
        check_range("phi", phi, low=-4, high=8)
    p = 0.0 if phi is None else float(phi)
    d = float(depth) if depth is not None else alpha ** p
    w = float(width) if width is not None else beta ** p
    r = float(resolution) if resolution is not None else gamma ** p
    for name, v in (("depth", d), ("width", w), ("resolution", r)):
        check_range(name, v, low=1e-3, high=64)

    def count(dd, ww, rr):
        with torch.device("meta"):
            m, side = _build(base, dd, ww, rr, options)
        pr = profile(m, (3, side, side))
        return m, side, pr

    _, _, p0 = count(1.0, 1.0, 1.0)
    meta, side, p1 = count(d, w, r)
    model = _build(base, d, w, r, options)[0] if build else None
    blocks, channels = _shape(meta)
    pixels = side if _family(base) == "efficientnet" else int(round(side * r))
    return ScaledModel(base, phi, d, w, r, blocks, channels, pixels, side, p1.params, p1.macs, p1.macs / p0.macs,
                       d * w * w * r * r, model)


def scaling_table(base: str, phis=(0, 1, 2, 3, 4), **kwargs) -> list[ScaledModel]:
    """``compound_scale`` of ``base`` at each phi (counted on the meta device, no weights built)."""
    return [compound_scale(base, phi, build=False, **kwargs) for phi in phis]


def format_scaling_table(rows: list[ScaledModel], fmt_name: str = "table") -> str:
    """The table ``excite scale`` prints: phi, d, w, r, what they became, and cost against 2^phi."""
    header = ("phi", "d", "w", "r", "blocks", "channels", "pixels", "params", "MACs", "cost x", "d*w^2*r^2", "2^phi")
    out = [(f"{s.phi:g}" if s.phi is not None else "-", f"{s.depth:.3f}", f"{s.width:.3f}", f"{s.resolution:.3f}",
            s.blocks, s.channels, s.pixels, f"{s.params:,}", f"{s.macs / 1e6:,.1f}M", f"{s.cost:.2f}",
            f"{s.target:.2f}", f"{s.two_to_phi:.2f}" if s.two_to_phi is not None else "-") for s in rows]
    return _table(header, out, fmt_name)


def check_constraint(alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> float:
    """``alpha * beta^2 * gamma^2``, which the paper holds near 2 (1.92 for its coefficients)."""
    return alpha * beta ** 2 * gamma ** 2

