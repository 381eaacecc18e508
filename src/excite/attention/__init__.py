"""Channel attention modules. Contract: ``Module(channels, **kwargs)``, output shape = input shape.

Models build their attention through :func:`make_attention`, so any registered name, any class with
the contract, or ``None`` can be passed as ``attention=`` to every backbone.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from excite.core.errors import ExciteError
from excite.core.registry import attention_class, register_attention
from excite.attention.cbam import CBAM, ChannelGate, SpatialGate
from excite.attention.eca import ECA, ECANS, eca_kernel_size
from excite.attention.se import SEGroupConv, SEVar1, SEVar2, SEVar3, SqueezeExcite
# The module zoo: each file registers its modules on import.
from excite.attention import (  # noqa: F401
    bam, coord, double_attention, eca_timm, ema, ese, fca, gather_excite, gc, gct, gsop, shuffle, sge, simam, srm,
    triplet,
)

__all__ = [
    "SqueezeExcite", "SEVar1", "SEVar2", "SEVar3", "SEGroupConv", "ECA", "ECANS", "CBAM", "ChannelGate",
    "SpatialGate", "eca_kernel_size", "make_attention", "stage_kwargs",
]


@register_attention("none")
def _no_attention(channels: int) -> nn.Module:
    """Explicitly no attention (removes even an architecture's built-in SE)."""
    return nn.Identity()


def stage_kwargs(kwargs: dict, stage: int | None, num_stages: int | None, channels: int | None = None) -> dict:
    """Resolve per-block settings: a list gives one value per stage (``{"k_size": [3, 5, 5, 7]}`` -> stage 1
    gets 5); a callable is called with the block's channel count (``{"k_size": lambda c: 1 if c < 96 else 3}``)."""
    out = {}
    for key, value in kwargs.items():
        if callable(value) and channels is not None:
            value = value(channels)
        if isinstance(value, (list, tuple)):
            if stage is None or num_stages is None:
                raise ExciteError(f"attention_kwargs[{key!r}] is a list, but this model has no stages to spread it over")
            if len(value) != num_stages:
                raise ExciteError(
                    f"attention_kwargs[{key!r}] has {len(value)} entries; this model has {num_stages} stages"
                )
            value = value[stage]
        out[key] = value
    return out


def make_attention(
    attention: str | Callable[..., nn.Module] | None,
    channels: int,
    kwargs: dict | None = None,
    *,
    stage: int | None = None,
    num_stages: int | None = None,
) -> nn.Module | None:
    """Build one attention module for a block, or return ``None`` when there is none.

    ``attention`` is a registered name, a class/factory ``cls(channels, **kw)``, ``None`` or ``"none"``.
    """
    if attention is None or attention == "none":
        return None
    cls = attention_class(attention) if isinstance(attention, str) else attention
    kw = stage_kwargs(kwargs or {}, stage, num_stages, channels)
    try:
        return cls(channels, **kw)
    except TypeError as e:  # an unknown keyword: name it instead of showing a traceback
        raise ExciteError(f"attention {attention!r}: {e}") from None
