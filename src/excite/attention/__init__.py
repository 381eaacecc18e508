"""Attention modules. Contract: ``Module(channels, **kwargs)``, ``forward(x)`` with output shape = input
shape.

Models build their attention through :func:`make_attention`, so any registered name, any class with
the contract, or ``None`` can be passed as ``attention=`` to every backbone; :func:`find_attention`
finds the modules again in any model (:mod:`excite.attention.slot`).
"""

from __future__ import annotations

from excite.attention.base import ChannelAttention, gated_add
from excite.attention.cbam import CBAM, ChannelGate, SpatialGate
from excite.attention.eca import ECA, ECANS, eca_kernel_size
from excite.attention.se import SEGroupConv, SEVar1, SEVar2, SEVar3, SqueezeExcite
from excite.attention.slot import (blend_from_identity, create_attention, find_attention, init_attention,
                                  inside_attention, is_attention, make_attention, stage_kwargs)

__all__ = [
    "SqueezeExcite", "SEVar1", "SEVar2", "SEVar3", "SEGroupConv", "ECA", "ECANS", "CBAM", "ChannelGate",
    "SpatialGate", "eca_kernel_size", "make_attention", "stage_kwargs", "find_attention", "is_attention",
    "create_attention", "init_attention", "inside_attention", "blend_from_identity", "ChannelAttention", "gated_add",
]
