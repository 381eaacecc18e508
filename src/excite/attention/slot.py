"""The attention slot: how attention reaches a block, and how every consumer finds it again.

One rule, used by ``inspect``, ``bench``, ``optimize_for_inference``, ``attach``, the studies and the
profiler: a module is attention when it carries ``excite_attention`` (the registered name). Registered
classes carry it as a class attribute (``register_attention``); :func:`make_attention` tags instances of
any other class a user passes. The attribute name on the block (``attn``, torchvision's ``se`` or an
index inside a ``Sequential``, kept so that published weights load key for key) does not matter.

One initialisation policy: a module's own ``reset_parameters()`` is its authors' initialisation, and the
families' weight-init loops leave attention modules to it (:func:`init_attention`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import attention_class, check_kwargs, register_attention


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention module (see the module docstring for the rule)."""
    return getattr(module, "excite_attention", None) is not None


def find_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every attention module in ``model``, outermost only (CBAM, not its gates)."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if path and is_attention(module) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, module))
    return found


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
    The module is tagged for :func:`find_attention` whatever its class.
    """
    if attention is None or attention == "none":
        return None
    cls = attention_class(attention) if isinstance(attention, str) else attention
    kw = stage_kwargs(kwargs or {}, stage, num_stages, channels)
    try:
        module = cls(channels, **kw)
    except TypeError as e:  # an unknown keyword: name it instead of showing a traceback
        raise ExciteError(f"attention {attention!r}: {e}") from None
    if not is_attention(module):
        module.excite_attention = attention if isinstance(attention, str) else getattr(cls, "__name__", "custom")
    return module


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module ``name`` for a feature map with ``channels`` channels."""
    cls = attention_class(name)
    check_range("channels", channels, low=1, integer=True)  # before the module's own checks use it
    check_kwargs(cls, kwargs, f"attention {name!r}")
    if name == "none":  # the explicit choice of no module: an identity, not tagged as attention
        return cls(channels)
    return make_attention(name, channels, kwargs)


def inside_attention(model: nn.Module) -> set[int]:
    """``id()`` of every module inside (or being) an attention module: what a family's generic
    initialisation sweep leaves alone."""
    return {id(sub) for _, module in find_attention(model) for sub in module.modules()}


def init_attention(model: nn.Module) -> None:
    """Give every attention module in ``model`` its own initialisation: its ``reset_parameters()``, where
    it defines one (its authors' choice), else the PyTorch defaults its layers were built with. Every
    family calls this after its own initialisation sweep, which skips attention modules
    (:func:`inside_attention`), so a module starts the same way in every backbone."""
    for _, module in find_attention(model):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


class IdentityBlend:
    """Forward hook on an attention module: ``y + s * (attn(y) - y)``, exactly ``y`` while ``s == 0``."""

    def __init__(self, host: nn.Module, name: str):
        self.host, self.name = host, name

    def __call__(self, module, inputs, out):
        # One fused op, ``y + s * (out - y)`` for s < 0.5 (so exactly ``y`` at s = 0): a third of the memory
        # traffic of the three separate elementwise ops.
        y, s = inputs[0], getattr(self.host, self.name)
        if out.dtype != y.dtype:  # lerp wants one dtype (mixed precision may upcast inside the module)
            return y + s * (out - y)
        return torch.lerp(y, out, s)


def blend_from_identity(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Start attention modules of ``model`` as the identity, in place: ``init="identity"`` for modules
    that are already there (``create_model(..., attention_init="identity")``, attention added onto
    pretrained weights).

    Each module ``<host>.<name>`` gets a learnable scalar ``<host>.<name>_scale`` = 0 and the blend hook
    ``y + s * (attn(y) - y)``, so the network computes exactly its function without the modules until
    trained. ``names``: the modules' paths; default every attention module (:func:`find_attention`).
    Returns the names of the scalars added.
    """
    if names is None:
        names = [path for path, _ in find_attention(model)]
    added = []
    for path in names:
        attn = model.get_submodule(path)
        host_path, _, name = path.rpartition(".")
        host = model.get_submodule(host_path) if host_path else model
        ref = next(attn.parameters(), None)
        ref = ref if ref is not None else next(model.parameters(), None)
        scale = name + "_scale"
        host.register_parameter(scale, nn.Parameter(torch.zeros((), device=ref.device if ref is not None else None)))
        attn.register_forward_hook(IdentityBlend(host, scale))
        added.append(f"{host_path}.{scale}" if host_path else scale)
    return added


@register_attention("none")
def no_attention(channels: int) -> nn.Module:
    """Explicitly no attention (removes even an architecture's built-in SE)."""
    return nn.Identity()
