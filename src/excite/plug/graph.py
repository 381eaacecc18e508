"""The data-flow graph :func:`excite.attach` reads: one small representation, built by two tracers.

1. ``torch.fx`` symbolic tracing, with every normalisation and convolution layer (and its subclasses,
   e.g. timm's ``BatchNormAct2d`` or NF-Nets' ``ScaledStdConv2d``, which call ``F.batch_norm`` /
   ``F.conv2d`` in their own forward) kept as one opaque node. Tracing into such a layer would end a
   branch in a 5-input function call instead of "the norm"; treating it as one layer also keeps
   shape arithmetic inside it (TF "SAME" padding) away from the tracer.
2. Where fx fails (Python control flow on shapes or values), a dispatch-level trace: the forward runs once
   under a ``TorchDispatchMode``, as the profiler does (``excite.profiling.counter``), every aten op
   becomes a node, tensors are linked to the op that produced them, and module hooks mark which module
   each op ran in. It runs on meta tensors first (nothing computed), then, if the forward needs values
   (``if x.mean() > 0``), on real tensors of ``input_size`` without gradients.

Nodes carry the module scope they ran in, so "the output of module M" is known in both cases, and the
discovery in :mod:`excite.plug.discover` never needs to know which tracer built the graph.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from excite.profiling.counter import _to_meta

# Opaque layers: every norm and every convolution, subclasses included.
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
CONVS = (nn.modules.conv._ConvNd,)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
POOLS = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd)
PASS_MODULES = (nn.Identity, nn.modules.dropout._DropoutNd)

# Normalised op names (fx function / method names and aten overload packets map to the same words).
_ALIASES = {"iadd": "add", "imul": "mul", "truediv": "div", "itruediv": "div", "concat": "cat",
            "concatenate": "cat", "_convolution": "convolution", "conv1d": "convolution",
            "conv2d": "convolution", "conv3d": "convolution", "split_with_sizes": "split",
            "unsafe_split": "split", "tensor_split": "split", "_unsafe_view": "view", "_to_copy": "to",
            "_reshape_alias": "view"}
SLICES = {"getitem", "slice", "split", "chunk", "narrow", "select", "unbind", "index", "index_select"}
CATS = {"cat", "stack"}
PADS = {"pad", "constant_pad_nd"}
VIEWS = {"view", "reshape", "permute", "transpose", "contiguous", "clone", "to", "alias", "detach", "flatten",
         "unflatten", "squeeze", "unsqueeze", "type_as", "float", "lift_fresh", "dropout", "feature_dropout",
         "alpha_dropout", "identity", "expand", "expand_as", "view_as", "t"}
POOL_OPS = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
            "max_pool2d_with_indices", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d"}
REDUCTIONS = {"mean", "sum", "amax", "max", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool1d",
              "adaptive_max_pool2d", "avg_pool2d", "logsumexp", "std", "var"}
WEIGHT_OPS = {"convolution", "linear", "addmm", "mm", "matmul", "bmm", "conv_transpose2d"}


def op_name(target) -> str:
    """``operator.iadd`` / ``"add_"`` / ``aten.add_.Tensor`` -> ``"add"``."""
    if isinstance(target, str):
        name = target
    else:
        packet = getattr(target, "overloadpacket", None)
        name = str(packet).rsplit(".", 1)[-1] if packet is not None else getattr(target, "__name__", str(target))
    if name.endswith("_") and not name.startswith("__"):  # in-place variants: add_ is an addition
        name = name[:-1]
    return _ALIASES.get(name, name)


def is_leaf(module: nn.Module) -> bool:
    """One opaque layer: norms and convolutions (any subclass), and torch.nn's own non-container modules."""
    if isinstance(module, NORMS + CONVS):
        return True
    return type(module).__module__.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, CONTAINERS)


@dataclass(eq=False)
class Node:
    """One value of the forward pass: an input, a parameter, a leaf module call or an op.

    ``name`` is the module path for ``kind == "module"``, the parameter name for ``"param"``, the
    normalised op name for ``"op"``. ``scope``: the non-leaf modules running when it was produced
    (outermost first). ``shape``: the output shape when the tracer knows it.
    """

    kind: str
    name: str
    inputs: list = field(default_factory=list)
    scope: tuple = ()
    shape: tuple | None = None
    users: list = field(default_factory=list)
    spatial: bool = False  # a slice that keeps every channel (``x[:, :, ::2, ::2]``, a ResNet option-A shortcut)

    def __repr__(self):
        return f"<{self.kind} {self.name}>"


@dataclass
class Graph:
    """Nodes in execution order, plus what the tracer learned about modules.

    ``calls``: how often each module ran. ``shapes``: ``path -> (input shape, output shape)`` of each
    module's (last) call. ``module_out``: node -> paths of the non-leaf modules whose output it is.
    ``module_in``: path -> the nodes from outside a non-leaf module that it read. ``tracer``: "fx",
    "dispatch (meta)" or "dispatch (real tensors)".
    """

    nodes: list
    modules: dict
    tracer: str
    calls: Counter = field(default_factory=Counter)
    shapes: dict = field(default_factory=dict)
    module_out: dict = field(default_factory=dict)
    module_in: dict = field(default_factory=dict)
    _anc: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {n: i for i, n in enumerate(self.nodes)}
        self._mask: dict = {}
        for n in self.nodes:
            for p in n.inputs:
                if p not in self._index:  # a value made outside the recorded nodes: index it too
                    self._index[p] = len(self._index)
                p.users.append(n)
        self._by_index = list(self._index)
        self._inputs = 0
        for n, i in self._index.items():
            if n.kind == "input":
                self._inputs |= 1 << i

    def _ancestor_mask(self, node: Node) -> int:
        """Every node ``node`` depends on, as a bit mask over node indices (a Python int: unions are one
        OR, so a graph of thousands of aten ops stays small; iterative: deep networks exceed the recursion
        limit)."""
        stack = [node]
        while stack:
            n = stack[-1]
            if n in self._mask:
                stack.pop()
                continue
            todo = [p for p in n.inputs if p not in self._mask]
            if todo:
                stack.extend(todo)
                continue
            acc = 0
            for p in n.inputs:
                acc |= self._mask[p] | (1 << self._index[p])
            self._mask[n] = acc
            stack.pop()
        return self._mask[node]

    def depends(self, node: Node, on: Node) -> bool:
        """Whether ``node`` is computed from ``on``."""
        return bool(self._ancestor_mask(node) >> self._index[on] & 1)

    def ancestors(self, node: Node) -> frozenset:
        """Every node ``node`` depends on."""
        if node not in self._anc:
            self._anc[node] = self.decode(self._ancestor_mask(node))
        return self._anc[node]

    def only(self, node: Node, others) -> frozenset:
        """``node`` and what it depends on, less everything ``others`` depend on (and ``others``)."""
        mask = self._ancestor_mask(node) | 1 << self._index[node]
        for o in others:
            mask &= ~(self._ancestor_mask(o) | 1 << self._index[o])
        return self.decode(mask)

    def decode(self, mask: int) -> frozenset:
        nodes, out = self._by_index, []
        while mask:
            low = mask & -mask
            out.append(nodes[low.bit_length() - 1])
            mask ^= low
        return frozenset(out)

    def from_input(self, node: Node) -> bool:
        """Whether ``node`` is data computed from the network's input (not a parameter, constant or size)."""
        if node.kind == "shape":
            return False
        return node.kind == "input" or bool(self._ancestor_mask(node) & self._inputs)

    def module_of(self, node: Node) -> nn.Module | None:
        return self.modules.get(node.name) if node.kind == "module" else None

    def out_shape(self, path: str):
        return self.shapes.get(path, (None, None))[1]


# --- 1. torch.fx ------------------------------------------------------------------------------------------


def _is_shape(fn, made) -> bool:
    """An fx node that computes a size, not a tensor: ``x.size(0)``, ``x.shape[1]``, arithmetic on those."""
    if fn.op == "call_method" and fn.target in ("size", "dim", "numel"):
        return True
    if fn.op == "call_function" and fn.target is getattr and len(fn.args) > 1 and fn.args[1] in ("shape", "ndim"):
        return True
    ins = [made[a] for a in fn.all_input_nodes if a in made]
    return bool(ins) and all(i.kind == "shape" for i in ins)


def _fx_graph(model: nn.Module) -> Graph:
    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return is_leaf(m)

    g = _Tracer().trace(model)
    made: dict = {}
    nodes = []
    for fn in g.nodes:
        stack = [v[0] for v in (fn.meta.get("nn_module_stack") or {}).values()]
        ins = [made[a] for a in fn.all_input_nodes if a in made]
        if fn.op == "placeholder":
            node = Node("input", fn.name)
        elif fn.op == "get_attr":
            node = Node("param", str(fn.target))
        elif fn.op == "call_module":
            node = Node("module", str(fn.target), ins, tuple(s for s in stack if s != fn.target))
        elif fn.op in ("call_function", "call_method") and _is_shape(fn, made):
            node = Node("shape", op_name(fn.target), ins, tuple(stack))  # x.shape[2] // 2: a number, not data
        elif fn.op in ("call_function", "call_method"):
            name = op_name(fn.target)
            if fn.target is operator.getitem and ins and ins[0].kind == "op" and ins[0].name == "split":
                name = "getitem"
            node = Node("op", name, ins, tuple(stack))
            if fn.target is operator.getitem and name == "getitem" and isinstance(fn.args[1], tuple):
                idx = fn.args[1]
                node.spatial = len(idx) >= 2 and all(isinstance(i, slice) and i == slice(None) for i in idx[:2])
        else:
            node = Node("output", "output", ins)
        made[fn] = node
        nodes.append(node)
    graph = Graph(nodes, dict(model.named_modules()), "fx")
    graph.calls.update(n.name for n in nodes if n.kind == "module")
    # Non-leaf module boundaries from the scopes: a module's output is the one node made inside it that
    # something outside it reads; its inputs are the nodes from outside that something inside it reads.
    inside: dict = {}
    for n in nodes:
        for path in n.scope:
            inside.setdefault(path, set()).add(n)
    for path, members in inside.items():
        if isinstance(graph.modules.get(path), CONTAINERS):
            continue
        leaving = [n for n in members if any(u not in members for u in n.users)]
        if len(leaving) == 1:
            graph.module_out.setdefault(leaving[0], []).append(path)
        graph.module_in[path] = [p for n in members for p in n.inputs
                                 if p not in members and p.kind != "param"]
    for n in graph.module_out:  # outermost first, as scopes are
        graph.module_out[n].sort(key=lambda p: p.count("."))
    return graph


# --- 2. dispatch level -----------------------------------------------------------------------------------


_BN = torch.ops.aten.native_batch_norm


class _RecordMode(TorchDispatchMode):
    """Every aten op outside opaque layers becomes a node; its outputs remember it as their producer."""

    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "overloadpacket", None) is _BN and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            # the meta kernel of batch norm is a slow Python decomposition; only the shape matters here
            x = args[0]
            c = x.shape[1] if bool(args[5]) else 0
            out = (torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,)))
        else:
            out = func(*args, **kwargs)
        rec = self.rec
        if rec.leaf_depth:
            return out
        ins = [rec.producer(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        node = Node("op", op_name(func), [i for i in ins if i is not None], tuple(rec.scope()),
                    tuple(outs[0].shape) if outs else None)
        if node.name in SLICES and len(args) > 1 and isinstance(args[1], int):
            node.spatial = args[1] >= 2
        rec.nodes.append(node)
        for t in outs:
            rec.set(t, node)
        return out


class _Recorder:
    def __init__(self, model):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())
        self.nodes: list = []
        self.made: dict = {}  # id(tensor) -> (tensor, node); the tensor is kept so that its id stays unique
        self.stack: list = []
        self.leaf_depth = 0
        self.calls: Counter = Counter()
        self.shapes: dict = {}
        self.module_out: dict = {}
        self.module_in: dict = {}
        self.pending: dict = {}

    def scope(self):
        return [p for p in self.stack if p]

    def set(self, t, node):
        self.made[id(t)] = (t, node)

    def producer(self, t):
        hit = self.made.get(id(t))
        if hit is None:  # a constant made inside the forward (torch.zeros, a python-number tensor)
            node = Node("param", "constant", shape=tuple(t.shape))
            self.set(t, node)
            return node
        return hit[1]

    def pre(self, mod, args):
        path = self.names.get(id(mod))
        if path is None:
            return
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        self.pending.setdefault(path, []).append(
            ([self.producer(t) for t in tensors] if not self.leaf_depth else [],
             tuple(tensors[0].shape) if tensors else None))
        self.stack.append(path)
        if path and is_leaf(mod):
            self.leaf_depth += 1

    def post(self, mod, args, out):
        path = self.names.get(id(mod))
        if path is None:
            return
        self.stack.pop()
        ins, in_shape = self.pending[path].pop()
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls[path] += 1
        self.shapes[path] = (in_shape, tuple(outs[0].shape) if outs else None)
        if path and is_leaf(mod):
            self.leaf_depth -= 1
            if self.leaf_depth:
                return
            node = Node("module", path, ins, tuple(self.scope()), self.shapes[path][1])
            self.nodes.append(node)
            for t in outs:
                self.set(t, node)
        elif path and len(outs) == 1 and not self.leaf_depth:
            node = self.producer(outs[0])
            self.module_out.setdefault(node, []).insert(0, path)  # outer modules finish later: outermost first
            self.module_in[path] = ins


def _dispatch_graph(model: nn.Module, inputs, real: bool) -> Graph:
    rec = _Recorder(model)
    for t in inputs:
        node = Node("input", "x", shape=tuple(t.shape))
        rec.nodes.append(node)
        rec.set(t, node)
    if real:
        state = None
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    else:
        tensors = {**{k: _to_meta(v) for k, v in model.named_parameters()},
                   **{k: _to_meta(v) for k, v in model.named_buffers()}}
        state = tensors
    for k, t in tensors.items():
        rec.set(t, Node("param", k, shape=tuple(t.shape)))
    h1 = nn.modules.module.register_module_forward_pre_hook(rec.pre)
    h2 = nn.modules.module.register_module_forward_hook(rec.post)
    try:
        with torch.no_grad(), _RecordMode(rec):
            rec.stack.append("")
            if real:
                out = model(*inputs)
            else:
                out = torch.func.functional_call(model, state, tuple(inputs), tie_weights=True, strict=False)
    finally:
        h1.remove()
        h2.remove()
    outs = [rec.producer(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    rec.nodes.append(Node("output", "output", outs))
    nodes = [n for n in rec.nodes]
    params = {id(n) for n in nodes}
    extra = [t[1] for t in rec.made.values() if t[1].kind == "param" and id(t[1]) not in params]
    graph = Graph(extra + nodes, rec.modules, "dispatch (real tensors)" if real else "dispatch (meta)",
                  rec.calls, rec.shapes, rec.module_out, rec.module_in)
    return graph


def _module_shapes(model: nn.Module, inputs, real: bool):
    """``(calls, shapes)`` of every module from one forward pass with hooks only (for the fx graph)."""
    names = {id(m): n for n, m in model.named_modules()}
    calls, shapes, pending = Counter(), {}, {}

    def pre(mod, args):
        if id(mod) in names:
            t = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
            pending.setdefault(id(mod), []).append(tuple(t[0].shape) if t else None)

    def post(mod, args, out):
        if id(mod) in names:
            t = [a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
            calls[names[id(mod)]] += 1
            shapes[names[id(mod)]] = (pending[id(mod)].pop(), tuple(t[0].shape) if t else None)

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        with torch.no_grad():
            if real:
                model(*inputs)
            else:
                state = {**{k: _to_meta(v) for k, v in model.named_parameters()},
                         **{k: _to_meta(v) for k, v in model.named_buffers()}}
                torch.func.functional_call(model, state, tuple(inputs), tie_weights=True, strict=False)
    finally:
        h1.remove()
        h2.remove()
    return calls, shapes


def _inputs(model: nn.Module, input_size, real: bool):
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    if not real:
        return (torch.empty(1, *input_size, dtype=dtype, device="meta"),)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, *input_size, generator=gen, dtype=dtype)
    return (x.to(ref.device) if ref is not None else x,)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:100] if text else ''}"


def build_graph(model: nn.Module, input_size: tuple) -> Graph:
    """The graph of ``model``: fx first, then dispatch on meta tensors, then dispatch on real tensors.

    The model is traced in eval mode (training-only paths such as stochastic depth's random mask are not
    structure) and its training flags are restored. Raises ``RuntimeError`` with every tracer's reason
    when all three fail.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    reasons = []
    try:
        try:
            graph = _fx_graph(model)
            for real in (False, True):  # shapes of every module: meta first, real tensors if values matter
                try:
                    graph.calls, graph.shapes = _module_shapes(model, _inputs(model, input_size, real), real)
                    break
                except Exception:  # noqa: BLE001 - shapes are optional for the fx graph
                    continue
            return graph
        except Exception as e:  # noqa: BLE001 - TraceError, TypeError from control flow on a Proxy, ...
            reasons.append(f"fx: {_first_line(e)}")
        for real in (False, True):
            try:
                return _dispatch_graph(model, _inputs(model, input_size, real), real)
            except Exception as e:  # noqa: BLE001 - e.g. a meta tensor asked for its value
                reasons.append(f"dispatch ({'real' if real else 'meta'}): {_first_line(e)}")
    finally:
        for m, mode in modes.items():
            m.training = mode
    raise RuntimeError("; ".join(reasons))
