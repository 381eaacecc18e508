"""Graph rewrite of residual blocks for inference: the attention rescale rides on the residual addition.

An attention module's contract is ``forward(x)`` only; a block computes ``attn(out) + identity``.
Eager, that is a multiply pass (``out * gate``, a read and a write of the whole activation) and an
addition pass (two reads and a write). This rewrite traces each residual block with ``torch.fx``,
inlining the attention module, and replaces ``add(mul(y, gate), identity)`` with one
``torch.addcmul`` (the fusion the SENet authors did by hand in their Caffe layers). It also writes the
sum into ``y`` when ``y`` is a fresh tensor that nothing reads afterwards: a new output costs more
than the arithmetic on a CPU, where every large allocation is memory the kernel must fault in
(``torch.addcmul`` into a new 51 MB tensor took 27 ms on this project's 2-core machine, into ``y``
3.7 ms). Blocks without attention get the same in-place addition, so that plain and attention
models are compared like for like; a multiply left over (CBAM's channel gate, which its spatial gate
reads) is written into its fresh operand the same way. The output of a module with hooks is never
overwritten: a hook may have kept it.

A global average pool of a 1x1 convolution's output is computed from the convolution's input instead:
the convolution (BatchNorm folded into it) is affine, so ``mean_hw(W h + b) = W mean_hw(h) + b``. In a
bottleneck the attention reads ``conv3``'s output, four times wider than ``conv3``'s input, so the
squeeze of SE, ECA and CBAM's channel gate can read a quarter of the bytes (for ResNet-50 at batch 16,
about 90 MB instead of 350 MB per call), followed by a matrix product with the convolution's weight;
each call takes whichever of the two reads fewer bytes. Exact up to float rounding; a 3x3 convolution (basic blocks) is left alone, its zero padding
breaks the identity at the borders.

ReLUs ride along where PyTorch has the fused kernel: a ReLU of a convolution's output becomes a oneDNN
post-op of that convolution (:func:`conv_relu`, through the prepacked call of
:mod:`excite.models.prepack`), and a plain block's last addition and ReLU one pass (:func:`add_relu_into`,
ATen's ``_add_relu_``). ``benchmarks/post_ops.py`` measures both at ResNet-50's bottleneck widths: a
plain block's end in 0.85-0.97 of the two passes' time, conv2 with its ReLU as a post-op in 0.91-1.00.
An attention block's end stays ``addcmul`` then ReLU: a gate multiply as a oneDNN binary post-op of
conv3 measured up to 9% slower than that, and PyTorch has no one-pass ``relu(identity + y * gate)``. Hooks registered on the convolution or the ReLU later still run (the
fused call checks, and calls the modules when anything watches them).

What is left alone (exact, just not fused): a block or an attention module with hooks (a hook sees
the module's own output, which fused would include the residual), and a block that does not trace.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from excite.attention import find_attention
from excite.attention.base import hooked, watched

__all__ = ["rescale_add", "add_into", "scale_into", "pool_through_conv", "conv_relu", "add_relu_into",
           "fuse_residual_blocks", "residual_blocks"]

_MUL = {operator.mul, torch.mul}
_ADD = {operator.add, torch.add}
# Ops whose output never aliases their input: a tensor read only by these (and by the fused node) may
# be overwritten by the fused node. pool_through_conv (below) is a global mean too.
_REDUCTIONS = {"mean", "amax", "amin", "sum", "max", "min", "std", "var", "pool_through_conv"}
_FRESH_MODULES = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.BatchNorm2d)


def _free_to_overwrite(*tensors: torch.Tensor) -> bool:
    """No gradient is being recorded and no tracer or compiler is watching (ONNX has no ``out=``)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


@torch.fx.wrap
def rescale_add(residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, into_y: bool = False) -> torch.Tensor:
    """``y * gate + residual`` in one pass; written into ``y`` when ``into_y`` (the rewrite proved that
    nothing reads ``y`` afterwards), shapes allow and no gradient is recorded."""
    if into_y and _free_to_overwrite(y, gate, residual) and y.dtype == residual.dtype \
            and y.shape == torch.broadcast_shapes(residual.shape, y.shape, gate.shape):
        return torch.addcmul(residual, y, gate, out=y)
    return torch.addcmul(residual, y, gate)


@torch.fx.wrap
def add_into(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``y + residual``, written into ``y`` under the conditions of :func:`rescale_add`."""
    if _free_to_overwrite(y, residual) and y.shape == residual.shape and y.dtype == residual.dtype:
        return y.add_(residual)
    return y + residual


@torch.fx.wrap
def scale_into(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``y * gate``, written into ``y`` under the conditions of :func:`rescale_add` (CBAM's channel gate
    before its spatial gate: in place it took a third to a half of the time of a new tensor)."""
    if _free_to_overwrite(y, gate) and y.dtype == gate.dtype and y.shape == torch.broadcast_shapes(y.shape, gate.shape):
        return y.mul_(gate)
    return y * gate


@torch.fx.wrap
def pool_through_conv(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int,
                      keepdim: bool) -> torch.Tensor:
    """``y.mean((2, 3))`` of ``y = conv1x1(h)``, computed as ``conv1x1(h.mean((2, 3)))`` (the same
    numbers: the convolution is affine) when reading ``h`` and the weight moves fewer bytes than reading
    ``y``: in a bottleneck's early stages and at larger batches, not at batch 1 in its last stage, where
    conv3's weight (2048 x 512) is larger than its output."""
    # A trace (ONNX export, TorchScript) records one branch for every later shape: it takes the plain pool.
    if torch.jit.is_tracing() or h.numel() + weight.numel() >= y.numel():
        return y.mean((2, 3), keepdim=keepdim)
    mean = h.mean((2, 3))
    if groups == 1:  # a matrix product: a 1x1 convolution would reorder the whole weight on every call
        w = weight.flatten(1)
        pooled = mean @ w.t() if bias is None else torch.addmm(bias, mean, w.t())
    else:
        pooled = torch.nn.functional.conv2d(mean[:, :, None, None], weight, bias, groups=groups).flatten(1)
    return pooled[:, :, None, None] if keepdim else pooled


def _watched(*modules) -> bool:
    """Whether a hook (the module's own or a global one) would miss a call that bypasses one of these
    modules' ``__call__`` (``None`` entries are skipped)."""
    return any(m is not None and watched(m) for m in modules)


def _post_op(conv: nn.Module, x: torch.Tensor, **post) -> torch.Tensor | None:
    """``conv(x)`` with ``post`` as oneDNN post-ops (:meth:`~excite.models.prepack.PrepackedConv2d.fused`),
    or ``None`` where that path does not run: a plain convolution, or one that something watches."""
    fused = getattr(conv, "fused", None)
    return None if fused is None or _watched(conv) else fused(x, **post)


@torch.fx.wrap
def conv_relu(conv: nn.Module, act: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``act(conv(x))`` for a ReLU ``act`` (``None``: ``F.relu``), the ReLU computed as the
    convolution writes its output instead of in a second pass over it."""
    y = None if _watched(act) else _post_op(conv, x, relu=True)
    if y is not None:
        return y
    y = conv(x)
    return torch.relu(y) if act is None else act(y)


@torch.fx.wrap
def add_relu_into(y: torch.Tensor, residual: torch.Tensor, act: nn.Module | None) -> torch.Tensor:
    """``act(y + residual)`` for a ReLU ``act`` (``None``: ``F.relu``) in one pass, written into ``y``
    under the conditions of :func:`add_into` (a bottleneck's last addition and ReLU: two passes eager)."""
    if not _watched(act) and _free_to_overwrite(y, residual) and y.shape == residual.shape \
            and y.dtype == residual.dtype and y.device == residual.device:
        return torch.ops.aten._add_relu_(y, residual)
    y = add_into(y, residual)
    return torch.relu(y) if act is None else act(y)


class _Tracer(torch.fx.Tracer):
    """Inlines excite's own modules (attention included, so its last multiply becomes visible) and keeps
    any module with hooks as one call, so that its hooks still run."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if m._forward_hooks or m._forward_pre_hooks:
            return True
        return super().is_leaf_module(m, qualname)


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks to rewrite: the parents of the attention modules (:func:`excite.attention.find_attention`)
    and the residual blocks whose attention slot is empty (``attn = None``: a plain network's blocks get
    the in-place addition too); outermost first, never nested twice."""
    parents = {path.rpartition(".")[0] for path, _ in find_attention(model)}
    found = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(n + ".") for n, _ in found):
            continue
        if name in parents or (hasattr(m, "attn") and m.attn is None):
            found.append((name, m))
    return found


def _drop_identities(gm: torch.fx.GraphModule) -> None:
    """Folded BatchNorms are ``nn.Identity``: bypass them so that a convolution's output is seen as fresh."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity) \
                and not hooked(gm.get_submodule(node.target)) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _is_fresh(gm: torch.fx.GraphModule, node) -> bool:
    """``node`` is a new tensor the block computed (not its input, not a view, not an in-place result)."""
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_module":  # a hook may keep the output (a feature extractor's): not to overwrite
        m = gm.get_submodule(node.target)
        return isinstance(m, _FRESH_MODULES) and not hooked(m)
    return node.op == "call_function" and node.target in (_MUL | _ADD | {torch.addcmul})


def _only_read_before(node, fused, order: dict, skip=None) -> bool:
    """Every other reader of ``node`` (besides ``fused`` and ``skip``) runs before ``fused`` and keeps
    no alias of it."""
    for user in node.users:
        if user is fused or user is skip:
            continue
        name = user.target if isinstance(user.target, str) else getattr(user.target, "__name__", "")
        if order[user] > order[fused] or user.op not in ("call_method", "call_function") or name not in _REDUCTIONS:
            return False
    return True


def _global_mean(node) -> tuple | None:
    """``(tensor node, keepdim)`` when ``node`` is ``t.mean((2, 3))`` / ``torch.mean(t, (2, 3))`` of a
    4-D map (dims given as (2, 3) or (-2, -1), in either order), else ``None``."""
    if node.op == "call_method" and node.target == "mean" or node.op == "call_function" and node.target is torch.mean:
        args = list(node.args) + [None] * 3
        src, dims = args[0], node.kwargs.get("dim", args[1])
        keepdim = node.kwargs.get("keepdim", args[2] or False)
        if set(node.kwargs) - {"dim", "keepdim"} or not isinstance(dims, (tuple, list)) or not isinstance(keepdim, bool):
            return None
        if sorted(d % 4 for d in dims) == [2, 3] and len(dims) == 2 and isinstance(src, torch.fx.Node):
            return src, keepdim
    return None


def _pointwise_conv(gm: torch.fx.GraphModule, node) -> nn.Conv2d | None:
    """The module of ``node`` when it is an un-hooked 1x1, stride-1, unpadded ``nn.Conv2d`` call."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_module" and len(node.args) == 1 and not node.kwargs):
        return None
    conv = gm.get_submodule(node.target)
    if type(conv) is not nn.Conv2d or hooked(conv) or conv.kernel_size != (1, 1) or conv.stride != (1, 1) \
            or conv.padding not in ((0, 0), "valid"):
        return None
    return conv


def _pool_through_convs(gm: torch.fx.GraphModule) -> int:
    """Replace every global mean of a 1x1 convolution's output with :func:`pool_through_conv` of its
    input (see the module docstring). Returns the number replaced."""
    n = 0
    for node in list(gm.graph.nodes):
        found = _global_mean(node)
        conv = _pointwise_conv(gm, found[0]) if found else None
        if conv is None:
            continue
        src, keepdim = found
        with gm.graph.inserting_before(node):
            weight = gm.graph.get_attr(f"{src.target}.weight")
            bias = gm.graph.get_attr(f"{src.target}.bias") if conv.bias is not None else None
            new = gm.graph.call_function(pool_through_conv, (src.args[0], src, weight, bias, conv.groups, keepdim))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        n += 1
    return n


def _binary_call(node, targets) -> bool:
    """``node`` calls one of ``targets`` with two positional arguments and no keywords."""
    return node.op == "call_function" and node.target in targets and len(node.args) == 2 and not node.kwargs


def _scale_in_place(gm: torch.fx.GraphModule) -> int:
    """Replace a multiply left after the fusion whose first operand is a fresh tensor that nothing reads
    afterwards with :func:`scale_into`. Returns the number replaced."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    n = 0
    for node in list(gm.graph.nodes):
        if not _binary_call(node, _MUL):
            continue
        y, gate = node.args
        if not (isinstance(gate, torch.fx.Node) and _is_fresh(gm, y) and _only_read_before(y, node, order)):
            continue
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(scale_into, (y, gate))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        n += 1
    return n


def _relu_of(gm: torch.fx.GraphModule, node) -> tuple[bool, str | None]:
    """``(True, module name or None)`` when ``node`` is an un-hooked ``nn.ReLU`` call or ``F.relu`` /
    ``torch.relu`` of one tensor."""
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        m = gm.get_submodule(node.target)
        return type(m) is nn.ReLU and not hooked(m), node.target
    fn = node.op == "call_function" and node.target in (F.relu, torch.relu) and len(node.args) == 1 and not node.kwargs
    return fn, None


def _fuse_relus(gm: torch.fx.GraphModule) -> int:
    """A ReLU of an un-hooked convolution's output (read by nothing else) becomes :func:`conv_relu`, a
    ReLU of :func:`add_into` becomes :func:`add_relu_into`. Returns the number replaced."""
    n = 0
    for node in list(gm.graph.nodes):
        relu, act_name = _relu_of(gm, node)
        src = node.args[0] if relu else None
        if not isinstance(src, torch.fx.Node) or len(src.users) != 1:
            continue
        module = gm.get_submodule(src.target) if src.op == "call_module" else None
        conv = type(module) is nn.Conv2d and not hooked(module) and len(src.args) == 1 and not src.kwargs
        if not conv and src.target is not add_into:
            continue
        with gm.graph.inserting_before(node):
            act = gm.graph.get_attr(act_name) if act_name else None
            if conv:
                new = gm.graph.call_function(conv_relu, (gm.graph.get_attr(src.target), act, src.args[0]))
            else:
                new = gm.graph.call_function(add_relu_into, (*src.args, act))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        n += 1
    return n


def _rewrite(gm: torch.fx.GraphModule) -> tuple[int, int]:
    """Replace ``mul -> add`` with :func:`rescale_add`, a plain residual ``add`` with :func:`add_into`
    and a remaining multiply with :func:`scale_into` where it is safe, and the global pools of 1x1
    convolutions with :func:`pool_through_conv`. Returns the number of rescales fused and of rewrites
    in all."""
    _drop_identities(gm)
    changed = _pool_through_convs(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    fused = 0
    for node in list(gm.graph.nodes):
        if not _binary_call(node, _ADD):
            continue
        a, b = node.args
        mul = next((t for t in (a, b) if isinstance(t, torch.fx.Node) and _binary_call(t, _MUL) and len(t.users) == 1
                    and all(isinstance(u, torch.fx.Node) for u in t.args)), None)
        with gm.graph.inserting_after(node):
            if mul is not None and isinstance(b if mul is a else a, torch.fx.Node):
                residual = b if mul is a else a
                y, gate = mul.args
                into = _is_fresh(gm, y) and _only_read_before(y, node, order, skip=mul)
                new = gm.graph.call_function(rescale_add, (residual, y, gate, into))
            elif all(isinstance(t, torch.fx.Node) for t in (a, b)) and _is_fresh(gm, a) and _only_read_before(a, node, order):
                new = gm.graph.call_function(add_into, (a, b))
            else:
                continue
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed += 1
        if new.target is rescale_add:
            gm.graph.erase_node(mul)
            fused += 1
    changed += _scale_in_place(gm)
    changed += _fuse_relus(gm)
    gm.graph.lint()
    gm.recompile()
    return fused, changed


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fuse_residual_blocks(model: nn.Module) -> int:
    """Rewrite every residual block of an eval-mode ``model`` in place (see the module docstring).

    A rewritten block becomes a ``torch.fx.GraphModule`` with the same submodules under the same
    names (the ``state_dict`` is unchanged) and the block's class name. Returns the number of blocks
    whose attention rescale was fused with the addition."""
    n = 0
    for name, block in residual_blocks(model):
        if hooked(block) or block.training:
            continue
        try:
            graph = _Tracer().trace(block)
        except Exception:  # a block that does not trace keeps its eager forward: exact, just not fused
            continue
        gm = torch.fx.GraphModule(block, graph, class_name=type(block).__name__)
        # The block's own children, not the containers fx made for the parts it inlined: the attention
        # stays an instance of its class (consumers find it) and the state_dict stays key for key.
        gm._modules.clear()
        gm._modules.update(block._modules)
        gm._parameters.clear()
        gm._parameters.update(block._parameters)
        gm._buffers.clear()
        gm._buffers.update(block._buffers)
        for attr in ("attn", "attn_position"):  # what consumers read from a block besides its submodules
            if hasattr(block, attr) and not hasattr(gm, attr):
                setattr(gm, attr, getattr(block, attr))
        fused, changed = _rewrite(gm)
        if changed:  # a block with nothing to fuse keeps its own class and forward
            _set_submodule(model, name, gm)
            n += fused
    return n
