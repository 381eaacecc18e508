"""Small pieces the attention modules share: rounding of hidden widths, group counts, gates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from excite.core.errors import ExciteError, check_range


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """The channel rounding of timm (and TF MobileNet): nearest multiple of ``divisor``, never below
    ``min_value`` and never more than ``1 - round_limit`` below ``v``. Needed to reproduce timm's widths."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def fit_groups(name: str, channels: int, groups: int | None, default: int, per_group: int = 1) -> int:
    """The number of groups: ``groups`` if given (it must divide ``channels`` into ``per_group``-channel
    multiples), else the authors' ``default`` or, for layers too narrow for it, the largest count below
    it that divides (so the module also fits CIFAR-width networks)."""
    if groups is None:
        g = min(default, max(1, channels // per_group))
        while g > 1 and channels % (g * per_group):
            g -= 1
        return g
    check_range(name, groups, low=1, high=max(1, channels // per_group), integer=True)
    if channels % (groups * per_group):
        unit = f"{per_group} x {name}" if per_group > 1 else name
        raise ExciteError(f"{name}={groups} does not divide channels={channels}; expected {unit} to divide {channels}")
    return groups


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6 (MobileNetV3 Sec. 5.2; CenterMask's eSE and Coordinate attention use it)."""
    return F.hardsigmoid(x)


def reduced(name: str, channels: int, reduction: float, min_channels: int = 1) -> int:
    """Hidden width ``channels // reduction`` (at least ``min_channels``); a reduction that leaves no
    channel is refused, naming the valid range."""
    check_range(name, reduction, low=1, high=channels)
    return max(min_channels, int(channels // reduction))
