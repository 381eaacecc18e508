"""The counting mechanism: one forward pass on meta tensors under a ``TorchDispatchMode``.

Every aten op the forward pass dispatches is intercepted (so functional calls, ``x.mean`` and
module subclasses are all seen, unlike module hooks) and attributed to the innermost module running
at that moment (tracked with global forward pre/post hooks). The user's model is not modified: its
parameters and buffers are replaced by meta tensors for the duration of the call with
``torch.func.functional_call``, so nothing is copied and no real arithmetic runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from excite.attention.fused import plain_operators
from excite.profiling.formulas import FORMULAS, IGNORED, MOVEMENT, packet_of


@dataclass
class OpRecord:
    """One aten op call: where it ran and what it cost."""

    op: str
    module: str
    macs: int = 0
    elementwise: int = 0
    memory: int = 0  # bytes read + written
    counted: bool = True
    thop_extra: int = 0  # see _CountMode: a functional mean counted as thop counts AdaptiveAvgPool


@dataclass
class ModuleCall:
    """A module's forward call: type and shapes, for module-based conventions (thop)."""

    name: str
    module: nn.Module
    in_shapes: list
    out_shape: tuple | None


@dataclass
class Trace:
    ops: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    unsupported: dict = field(default_factory=lambda: defaultdict(int))


_BN = torch.ops.aten.native_batch_norm


def _is_global_pool(args) -> bool:
    """``mean(x, dims)`` over every dimension after batch and channels: a global average pool."""
    x = args[0]
    dims = args[1] if len(args) > 1 and args[1] is not None else None
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or not dims:
        return False
    return {d % x.ndim for d in dims} == set(range(2, x.ndim))


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class _CountMode(TorchDispatchMode):
    def __init__(self, trace: Trace, stack: list, pool_modules: frozenset = frozenset()):
        super().__init__()
        self.trace, self.stack, self.pool_modules = trace, stack, pool_modules

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = packet_of(func)
        if packet is _BN and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            # Shortcut: the meta kernel of batch norm is a slow Python decomposition (2/3 of the
            # time for ResNet-50); its output has the input's shape and the statistics are unused.
            x = args[0]
            c = x.shape[1] if bool(args[5]) else 0
            out = (torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,)))
        else:
            out = func(*args, **kwargs)
        if packet in IGNORED:
            return out
        module = self.stack[-1] if self.stack else ""
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        memory = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
        name = str(packet).split(".")[-1] if "." in str(packet) else str(packet)
        if packet in FORMULAS:
            macs, elem = FORMULAS[packet](list(args), out)
            # thop sees only modules: it gives nn.AdaptiveAvgPool2d (window + 1) ops per output and
            # `x.mean` nothing. The same computation must count the same, so a global spatial mean
            # outside a pooling module gets the pooling term (SE / ECA reference code pool with the
            # module); other means (CBAM's channel pool) stay invisible, as in thop.
            thop = (ins[0].numel() + outs[0].numel()
                    if name == "mean" and module not in self.pool_modules and _is_global_pool(args) else 0)
            self.trace.ops.append(OpRecord(name, module, int(macs), int(elem), memory, thop_extra=thop))
        elif packet in MOVEMENT:
            self.trace.ops.append(OpRecord(name, module, 0, 0, memory))
        else:
            self.trace.ops.append(OpRecord(name, module, 0, 0, memory, counted=False))
            self.trace.unsupported[name] += 1
        return out


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    m = torch.empty_like(t, device="meta")
    if isinstance(t, nn.Parameter):
        m = nn.Parameter(m, requires_grad=t.requires_grad)
    return m


def trace_model(model: nn.Module, inputs) -> Trace:
    """Run ``model(*inputs)`` once on meta tensors, recording every aten op and module call.

    The model is put in eval mode for the pass (inference cost, the papers' convention) and its
    training flags are restored afterwards; its tensors are never touched. Attention modules run
    their plain operators (:func:`excite.attention.fused.plain_operators`).
    """
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    pools = frozenset(n for n, m in model.named_modules(remove_duplicate=False)
                      if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)))
    trace, stack = Trace(), []
    pending: dict[int, list] = {}

    def pre(mod, args):
        if id(mod) in names:
            stack.append(names[id(mod)])
            pending.setdefault(id(mod), []).append([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])

    def post(mod, args, out):
        if id(mod) in names:
            stack.pop()
            shapes = pending[id(mod)].pop()
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            trace.calls.append(ModuleCall(names[id(mod)], mod, shapes, shape))

    state = {**{k: _to_meta(v) for k, v in model.named_parameters(remove_duplicate=False)},
             **{k: _to_meta(v) for k, v in model.named_buffers(remove_duplicate=False)}}
    training = {m: m.training for m in model.modules()}
    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        model.eval()
        stack.append("")
        # plain_operators: the model's operators as defined, not the faster equivalents a gate runs
        # eagerly (a spatial gate's convolution on folded pixel blocks would count other MACs).
        with torch.no_grad(), plain_operators(), _CountMode(trace, stack, pools):
            torch.func.functional_call(model, state, tuple(inputs), tie_weights=True, strict=False)
    finally:
        h1.remove()
        h2.remove()
        for m, t in training.items():
            m.training = t
    trace.unsupported = dict(trace.unsupported)
    return trace
