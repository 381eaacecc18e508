"""The profile itself: :func:`profile` and :class:`Profile` (see :mod:`excite.profiling`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from excite.attention import is_attention
from excite.core.errors import ExciteError, expect_module
from excite.core.spec import parse_input_size
from excite.profiling.conventions import Convention, fmt, get_convention, thop_terms
from excite.profiling.counter import trace_model
from excite.profiling.report import format_profile


@dataclass
class Profile:
    """The cost of one forward pass.

    ``macs``: multiply-accumulates of convolutions, linear layers and matmuls (1 multiply-add = 1).
    ``flops``: ``2 * macs``. ``attention_elementwise``: the part of ``elementwise`` spent inside
    attention modules (squeeze, gate, scale). ``elementwise``: all other arithmetic (normalisation, activations,
    pooling, attention gates and their multiplies, additions). ``memory``: bytes read + written by
    every non-view op. ``modules``: per-module totals (each module includes its children), keyed by
    qualified name (``""`` is the model). ``ops``: per aten op totals. ``unsupported``: ops seen but
    not counted, with their number of calls: never silently zero.
    """

    params: int
    trainable: int
    buffers: int
    macs: int
    elementwise: int
    memory: int
    thop_extra: int
    attention_elementwise: int
    input_size: tuple
    batch_size: int
    modules: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    unsupported: dict = field(default_factory=dict)
    module_types: dict = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Floating-point operations of the MACs: ``2 * macs``."""
        return 2 * self.macs

    def complexity(self, convention: str | Convention = "paper") -> int:
        """The headline figure under ``convention`` (raw count; units are applied when formatting)."""
        c = get_convention(convention)
        extra = {"thop": self.thop_extra, "macs+attention": self.attention_elementwise}.get(c.terms, 0)
        base = self.macs + extra
        return c.factor * base

    def summary(self, convention: str | Convention = "paper", units: str | None = None) -> str:
        """One line: ``params 24.37M  MACs(thop) 3.86G`` under ``convention``."""
        c = get_convention(convention, units)
        return f"params {fmt(self.params, c.units)}  {c.label} {fmt(self.complexity(c), c.units)}"

    def __str__(self) -> str:
        return format_profile(self)


def _param_counts(model: nn.Module):
    seen, params, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    buffers = sum(b.numel() for b in model.buffers())
    return params, trainable, buffers


def profile(model: nn.Module, input_size=(3, 224, 224), batch_size: int = 1, *, dtype=torch.float32,
            inputs=None) -> Profile:
    """Count the cost of one forward pass of ``model`` on a ``(batch_size, *input_size)`` input.

    The pass runs on meta tensors (no arithmetic, no memory) in eval mode; ``model`` is left exactly
    as it was. ``inputs`` (a tensor or tuple) overrides ``input_size`` for models with other inputs;
    its shapes and dtypes are used, never its values.
    """
    expect_module(model, "profile")
    if inputs is None:
        if isinstance(input_size, int):
            input_size = (3, input_size, input_size)
        elif isinstance(input_size, str):
            input_size = parse_input_size(input_size)
        if not isinstance(input_size, (tuple, list)) or not all(isinstance(s, int) for s in input_size):
            raise ExciteError(f"input_size={input_size!r} is not N, (H, W) or (C, H, W) in integers")
        if type(batch_size) is not int or batch_size < 1 or any(int(s) < 1 for s in input_size):
            raise ExciteError(f"input size and batch size must be positive, got {batch_size} x {tuple(input_size)}")
        inputs = (torch.empty(batch_size, *input_size, dtype=dtype, device="meta"),)
    else:
        inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        inputs = tuple(torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t for t in inputs)
    try:
        trace = trace_model(model, inputs)
    except RuntimeError as e:  # a shape the model cannot take (channels, too small): one line, not torch's stack
        want = next((m.in_channels for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), None)
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        raise ExciteError(f"profile: {type(model).__name__} cannot run on an input of shape {shapes}"
                          + (f" (its first layer takes {want} channels)" if want else "")
                          + f": {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    modules = defaultdict(lambda: {"macs": 0, "elementwise": 0, "memory": 0, "thop_extra": 0})
    ops = defaultdict(lambda: {"calls": 0, "macs": 0, "elementwise": 0, "memory": 0})
    for r in trace.ops:
        o = ops[r.op]
        o["calls"] += 1
        o["macs"] += r.macs
        o["elementwise"] += r.elementwise
        o["memory"] += r.memory
        for name in _ancestors(r.module):
            d = modules[name]
            d["macs"] += r.macs
            d["elementwise"] += r.elementwise
            d["memory"] += r.memory
    thop_extra = 0
    for r in trace.ops:
        if r.thop_extra:
            thop_extra += r.thop_extra
            for name in _ancestors(r.module):
                modules[name]["thop_extra"] += r.thop_extra
    for call in trace.calls:
        t = thop_terms(call)
        if t:
            thop_extra += t
            for name in _ancestors(call.name):
                modules[name]["thop_extra"] += t
    params, trainable, buffers = _param_counts(model)
    own = {}
    for name, m in model.named_modules():
        own[name] = sum(p.numel() for p in m.parameters())
    for name in list(modules) + list(own):
        modules[name]["params"] = own.get(name, 0)
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    root = modules[""]
    attn = [n for n, m in model.named_modules() if is_attention(m)]
    outer = [n for n in attn if not any(n.startswith(a + ".") for a in attn if a != n)]
    attention_elementwise = sum(modules[n]["elementwise"] for n in outer if n in modules)
    return Profile(params, trainable, buffers, root["macs"], root["elementwise"], root["memory"], thop_extra,
                   attention_elementwise,
                   tuple(inputs[0].shape[1:]), int(inputs[0].shape[0]), dict(modules), dict(ops),
                   dict(trace.unsupported), types)


def _ancestors(name: str):
    """``"a.b.c"`` -> ``"", "a", "a.b", "a.b.c"``: costs roll up the module tree."""
    yield ""
    if name:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            yield ".".join(parts[:i])


