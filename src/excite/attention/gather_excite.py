"""Gather-Excite (Hu et al., NeurIPS 2018), the three operators of its Sec. 3.

* ``ge_theta_minus`` (GE-theta-): parameter-free gather (average pooling over an extent e, or global),
  excite = nearest-neighbour interpolation back to the input size, sigmoid, scale.
* ``ge_theta`` (GE-theta): the gather is learned: depthwise convolutions (log2(e) stride-2 3x3 convs
  with BN, ReLU between; for the global extent one depthwise conv as large as the map, then BN).
* ``ge_theta_plus`` (GE-theta+): GE-theta's gather followed by SE's 1x1-conv MLP (reduction 16).

The authors' release is a partial Caffe model; the layout (``gather.conv1``, ``gather.norm1``,
``mlp.fc1``, ``mlp.fc2``) follows timm's ``GatherExcite``. One difference from timm, for the paper's
definition: a global gather with parameters has no padding, so it is really global (1x1 output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.layers import reduced

_GLOBAL = "global"


def _check_extent(extent) -> int | str:
    if extent == _GLOBAL:
        return extent
    check_range("extent", extent, low=2, integer=True)
    if extent & (extent - 1):
        raise ExciteError(f"extent={extent} is not valid; expected 'global' or a power of two >= 2 (the paper's 2, 4, 8)")
    return extent


class _GatherExcite(nn.Module):
    """Shared forward: gather, optional MLP, resize to the input, sigmoid gate."""

    kind = "context"

    def _build_gather(self, channels: int, extent, feat_size) -> nn.Sequential:
        gather = nn.Sequential()
        if extent == _GLOBAL:
            if feat_size is None:
                raise ExciteError("a global gather with parameters needs feat_size, the map's side "
                                  "(ResNet-50 at 224: feat_size=[56, 28, 14, 7]); or pass extent=2, 4 or 8")
            check_range("feat_size", feat_size, low=1, integer=True)
            gather.add_module("conv1", nn.Conv2d(channels, channels, feat_size, groups=channels, bias=False))
            gather.add_module("norm1", nn.BatchNorm2d(channels))
            return gather
        n = int(math.log2(extent))
        for i in range(n):
            gather.add_module(f"conv{i + 1}", nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False))
            gather.add_module(f"norm{i + 1}", nn.BatchNorm2d(channels))
            if i != n - 1:
                gather.add_module(f"act{i + 1}", nn.ReLU(inplace=True))
        return gather

    def reset_parameters(self) -> None:
        """He init for the gather convolutions (the backbone's), BN as the identity, default MLP init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.groups > 1:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    m.reset_parameters()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def gather_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gather_map(x)
        if getattr(self, "mlp", None) is not None:
            g = self.mlp(g)
        if g.shape[-2:] != x.shape[-2:] and g.shape[-2:] != (1, 1):
            g = F.interpolate(g, size=x.shape[-2:], mode="nearest")
        return x * torch.sigmoid(g)


@register_attention("ge_theta_minus")
class GEThetaMinus(_GatherExcite):
    """GE-theta-: average pooling over ``extent`` (2, 4, 8 or ``"global"``), no parameters."""

    paper = "Hu et al., Gather-Excite: Exploiting Feature Context in CNNs, NeurIPS 2018 (GE-theta-)"
    dim_reduction = False
    interaction = "none"
    params_formula = "0"

    def __init__(self, channels: int, *, extent: int | str = _GLOBAL):
        super().__init__()
        self.extent = _check_extent(extent)
        self.mlp = None

    def reset_parameters(self) -> None:
        """Nothing to initialise (parameter-free)."""

    def gather_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.extent == _GLOBAL:
            return x.mean((2, 3), keepdim=True)
        k = 2 * self.extent - 1  # windows of the extent overlapping by half, stride = extent (timm's choice)
        return F.avg_pool2d(x, k, self.extent, k // 2, count_include_pad=False)


@register_attention("ge_theta")
class GETheta(_GatherExcite):
    """GE-theta: depthwise-convolution gather (9C + 2C per stride-2 step; C f^2 + 2C for a global f x f map)."""

    paper = "Hu et al., Gather-Excite: Exploiting Feature Context in CNNs, NeurIPS 2018 (GE-theta)"
    dim_reduction = False
    interaction = "none"
    params_formula = "log2(e) (9C + 2C); global: C f^2 + 2C"

    def __init__(self, channels: int, *, extent: int | str = 2, feat_size: int | None = None):
        super().__init__()
        self.extent = _check_extent(extent)
        self.gather = self._build_gather(channels, self.extent, feat_size)
        self.mlp = None
        self.reset_parameters()

    def gather_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.gather(x)


class _ConvMlp(nn.Module):
    """1x1 conv C -> rd (bias), ReLU, 1x1 conv rd -> C (bias): timm's ``ConvMlp`` keys ``fc1`` / ``fc2``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@register_attention("ge_theta_plus")
class GEThetaPlus(_GatherExcite):
    """GE-theta+: GE-theta's gather, then SE's MLP (C -> C/r -> C with biases) before the gate."""

    paper = "Hu et al., Gather-Excite: Exploiting Feature Context in CNNs, NeurIPS 2018 (GE-theta+)"
    dim_reduction = True
    interaction = "global"
    params_formula = "GE-theta + 2C^2/r + C/r + C"

    def __init__(self, channels: int, reduction: float = 16, *, extent: int | str = 2, feat_size: int | None = None):
        super().__init__()
        self.extent = _check_extent(extent)
        self.gather = self._build_gather(channels, self.extent, feat_size)
        self.mlp = _ConvMlp(channels, reduced("reduction", channels, reduction))
        self.reset_parameters()

    def gather_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.gather(x)
