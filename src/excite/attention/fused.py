"""Pool -> gate -> rescale as one autograd function, for training.

Eager autograd records three steps for a channel gate, ``y = x.mean((2, 3))``, ``g = gate(y)``,
``out = x * g``, and runs their backward as separate full-size passes: the multiply's backward
writes ``dout * g`` and a temporary ``dout * x`` that it then sums to ``dg``; the mean's backward
expands ``dy / HW``; autograd then adds the two gradients of ``x`` in another pass. Here the
backward is

    dg = sum_hw(dout * x)                       a read of dout and x
    dy = gate backward of dg                    (B, C) sized: through the gate's own autograd graph
    dx = dout * g + dy / HW                     one read of dout, one write: torch.addcmul

and only ``x`` and the small gate graph are saved (``g``, the pooled ``y`` and the gate's own
intermediates, all (B, C) sized); ``out`` and ``dout * x`` are never kept. The gate's parameters are
inputs of the function, so their gradients flow through autograd as usual (optimizers, DDP hooks,
``torch.autograd.grad``): the backward computes them with ``torch.autograd.grad`` on the gate's
graph, which accumulates nothing itself. Double backward is not supported (the backward runs the gate's backward
itself); the plain path is used whenever it could be needed (see :func:`fusable`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PoolGateScale", "pool_gate_scale", "fusable"]


class PoolGateScale(torch.autograd.Function):
    """``x * module.excite(x.mean((2, 3), keepdim=True))`` with the fused backward of the module
    docstring; ``params`` are the module's parameters (inputs, so that autograd sends them their
    gradients)."""

    @staticmethod
    def forward(ctx, x, module, *params):
        with torch.enable_grad():  # the gate's own small graph, replayed in backward
            y = x.detach().mean((2, 3), keepdim=True).requires_grad_(True)
            g = module.excite(y)
        ctx.inner = (y, params, g)
        ctx.save_for_backward(x)
        return x * g.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        y, params, g = ctx.inner
        # sum over H, W of dout * x per (b, c). torch.einsum runs this as a batched matrix product of
        # B*C 1x1 results, 3.6x slower at 128x16x32x32 than this elementwise product and sum on this
        # project's CPU (see benchmarks/train_throughput.py, the "fused" rows).
        dg = torch.linalg.vecdot(dout.flatten(2), x.flatten(2)).reshape(g.shape).to(g.dtype)
        wanted = [y] + [p for p in params if p.requires_grad]
        # retain_graph: autograd may run this backward again (retain_graph=True outside, gradcheck).
        grads = torch.autograd.grad(g, wanted, dg, allow_unused=True, retain_graph=True)
        dy = grads[0] if grads[0] is not None else torch.zeros_like(y)
        dx = torch.addcmul(dy / (x.shape[2] * x.shape[3]), dout, g.detach())
        it = iter(grads[1:])
        return (dx, None, *[next(it) if p.requires_grad else None for p in params])


def fusable(module: nn.Module, x) -> bool:
    """Whether the fused function applies: a 4-D real tensor under autograd, a module that pools by
    average and exposes ``excite(y)``, and no tracer, scripting or compiler watching (they need the
    plain ops; the rewrite's ``torch.fx`` trace sees a Proxy, not a tensor)."""
    if type(x) is not torch.Tensor and not isinstance(x, nn.Parameter):
        return False
    if x.dim() != 4 or not getattr(module, "fused_training", False) or not hasattr(module, "excite"):
        return False
    if getattr(module, "squeeze", "avg") != "avg":
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def pool_gate_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x * module.excite(x.mean((2, 3), keepdim=True))`` through :class:`PoolGateScale`."""
    return PoolGateScale.apply(x, module, *module.parameters())
