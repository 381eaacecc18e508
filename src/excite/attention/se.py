"""Squeeze-and-excitation (Hu et al., SENet, CVPR 2018) and the SE variants of the ECA-Net paper's Table 2.

All share one shape: squeeze (global average pool) -> excitation (a gate in (0, 1) per channel) -> scale.
They differ only in how the C pooled values become C gate values:

    module        excitation                     parameters (ECA-Net Table 2)
    se            W2 relu(W1 y) (+ biases)       2 C^2 / r (+ C/r + C)
    se_var1       y                              0
    se_var2       w * y (one weight a channel)   C
    se_var3       W y (one full C x C layer)     C^2
    se_gc         G y (block-diagonal, g groups) C^2 / g
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention, pointwise

# torch.fx keeps a wrapped function as one call only in the module that wraps it: the inference rewrite
# traces blocks through this module's forward.
torch.fx.wrap("pointwise")

def _clamp(y: torch.Tensor) -> torch.Tensor:
    # The gate of the SE code in the SENet notes: the excitation cut to [0, 1] (no squashing in between).
    return y.clamp(0, 1)


# sigmoid: SENet's gate. hard_sigmoid: relu6(y + 3) / 6, MobileNetV3's (Howard et al. 2019, Sec. 5.2).
_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid, "clamp": _clamp}
# SENet journal version, Table 12: the excitation's last activation, ResNet-50 top-1 error
# ReLU 23.47, tanh 23.00, sigmoid 22.28 ("the choice of excitation operator is important").
_GATES.update(tanh=torch.tanh, relu=F.relu)
# SENet journal version, Table 11: the squeeze operator, ResNet-50 top-1 error max 22.57, avg 22.28.
SQUEEZES = ("avg", "max")


def _gate_fn(gate: str):
    if gate not in _GATES:
        raise ExciteError(f"gate={gate!r} is not valid; expected one of {', '.join(_GATES)}")
    return _GATES[gate]


@register_attention("se")
class SqueezeExcite(ChannelAttention):
    """SE block: global average pool, 1x1 conv to ``C/r``, activation, 1x1 conv to ``C``, gate, scale.

    Args:
        channels: input (and output) channels C.
        reduction: r; the hidden width is ``C // r`` (SENet uses r=16), at least ``min_channels``.
        rd_channels: hidden width given directly (EfficientNet: 0.25 x the block's input channels).
        bias: biases in both layers. ``False`` reproduces the bias-free SENet models of the ECA paper
            (SE-ResNet-50: 28,071,976 parameters instead of 28,088,024).
        act_layer: activation between the layers (ReLU in SENet, SiLU in EfficientNet).
        gate: the excitation's last activation: ``"sigmoid"`` (SENet), ``"hard_sigmoid"``
            (``relu6(y + 3) / 6``: MobileNetV3), ``"clamp"`` (``y.clamp(0, 1)``, the gate of the SENet notes'
            code), ``"tanh"`` or ``"relu"`` (SENet Table 12's alternatives).
        squeeze: ``"avg"`` (global average pooling, SENet) or ``"max"`` (global max pooling, Table 11).
    """

    paper = "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"
    kind = "channel"
    dim_reduction = True
    interaction = "global"
    params_formula = "2C^2/r + C/r + C"

    def __init__(
        self, channels: int, reduction: float = 16, *, rd_channels: int | None = None, min_channels: int = 1,
        bias: bool = True, act_layer: type[nn.Module] = nn.ReLU, gate: str = "sigmoid", squeeze: str = "avg",
    ):
        super().__init__()
        if squeeze not in SQUEEZES:
            raise ExciteError(f"squeeze={squeeze!r} is not valid; expected one of {', '.join(SQUEEZES)}")
        self.squeeze = squeeze
        if rd_channels is None:  # a given hidden width makes the reduction irrelevant (MobileNetV3 at 8 channels)
            check_range("reduction", reduction, low=1, high=channels)
        hidden = rd_channels if rd_channels is not None else max(min_channels, int(channels // reduction))
        check_range("rd_channels", hidden, low=1)
        # 1x1 convolutions rather than Linear: the torchvision/timm key layout (fc1, fc2 with 4D weights).
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = act_layer(inplace=True) if act_layer in (nn.ReLU, nn.SiLU) else act_layer()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.gate = _gate_fn(gate)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        h = self.act(pointwise(y, self.fc1.weight, self.fc1.bias))
        return self.gate(pointwise(h, self.fc2.weight, self.fc2.bias))

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True) if self.squeeze == "avg" else x.amax((2, 3), keepdim=True)
        return self.excite(y)


@register_attention("se_var1")
class SEVar1(ChannelAttention):
    """SE-Var1: the gate is the sigmoid of the pooled value itself; no parameters."""

    paper = "Wang et al., ECA-Net, CVPR 2020, Table 2 (SE-Var1)"
    kind = "channel"
    dim_reduction = False
    interaction = "none"
    params_formula = "0"

    def __init__(self, channels: int, *, gate: str = "sigmoid"):
        super().__init__()
        self.gate = _gate_fn(gate)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        return self.gate(y)


@register_attention("se_var2")
class SEVar2(ChannelAttention):
    """SE-Var2: one learned weight per channel, no interaction between channels (C parameters)."""

    paper = "Wang et al., ECA-Net, CVPR 2020, Table 2 (SE-Var2)"
    kind = "channel"
    dim_reduction = False
    interaction = "none"
    params_formula = "C"

    def __init__(self, channels: int, *, gate: str = "sigmoid"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.gate = _gate_fn(gate)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        return self.gate(y * self.weight.view(1, -1, 1, 1))


@register_attention("se_var3")
class SEVar3(ChannelAttention):
    """SE-Var3: one full C x C layer, no dimensionality reduction (C^2 parameters)."""

    paper = "Wang et al., ECA-Net, CVPR 2020, Table 2 (SE-Var3)"
    kind = "channel"
    dim_reduction = False
    interaction = "global"
    params_formula = "C^2"

    def __init__(self, channels: int, *, gate: str = "sigmoid"):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=False)
        self.gate = _gate_fn(gate)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc(y))


@register_attention("se_gc")
class SEGroupConv(ChannelAttention):
    """SE-GC: a block-diagonal C x C layer (grouped 1x1 conv), C^2/g parameters.

    Give either ``groups`` (SE-GC1: 16 groups) or ``group_size``, the channels per group
    (SE-GC2: C/16 groups = ``group_size=16``; SE-GC3: C/8 groups = ``group_size=8``).
    """

    paper = "Wang et al., ECA-Net, CVPR 2020, Table 2 (SE-GC)"
    kind = "channel"
    dim_reduction = False
    interaction = "within groups"
    params_formula = "C^2/g"

    def __init__(self, channels: int, groups: int | None = None, *, group_size: int | None = None, gate: str = "sigmoid"):
        super().__init__()
        if groups is not None and group_size is not None:
            raise ExciteError("se_gc takes groups or group_size, not both")
        if group_size is not None:
            check_range("group_size", group_size, low=1, high=channels)
            groups = channels // group_size
        elif groups is None:
            groups = 16  # SE-GC1
        check_range("groups", groups, low=1, high=channels)
        if channels % groups:
            raise ExciteError(f"groups={groups} must divide channels={channels}")
        self.fc = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.gate = _gate_fn(gate)

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc(y))
