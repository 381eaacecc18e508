"""Where :func:`excite.attach` puts attention, read from a :class:`~excite.plug.graph.Graph`.

Residual blocks (``where="residual"``). A residual junction is an addition ``branch + shortcut`` whose
shortcut is the block's input itself (a slice or concatenation made before the block counts: CSPNet,
Inception-ResNet) or a *projection* of it: at most two weight layers (a downsample conv; GhostNet's
depthwise + pointwise pair), norms, pooling, dropout and views, and nothing else: no activation, no
slicing, no concatenation. The branch must hold more weight layers than the shortcut. This rejects additions inside a block (Res2Net's hierarchical
``sp + spx[i]``: one side is a slice the block made) and fusion of two resolutions (HRNet's
``hi(x) + fuse(lo(x))``: neither side is a projection).

From the branch's end the walk goes back over what is not part of the branch's computation: dropout,
drop-path, identity and views; a layer scale (``gamma * y``, ``gamma`` a parameter); a scalar factor
(NF-Nets' ``alpha``); a gate ``y * g(y)`` (an SE/ECA module already on the branch). The module goes after
the layer reached (SENet Fig. 3 / ECA-Net Fig. 2: after the last norm), so it comes *before* a gate or a
layer scale. A branch ending in a concatenation or slice (GhostNet) gets it after that concatenation; a
channel slice no module returns (ReXNet's ``y[:, :C_in] + x``) gets it on the whole map before the slice.
Where the layer reached runs several times (one ReLU module reused), a module that runs once and alone reads
its output takes the attention on its input (timm's legacy SE-ResNet: before the ``se_module``).

Parallel branches without identity (RepVGG: ``relu(k3(x) + k1(x) + bn(x))``): every term of the sum is
a projection of the same input, so no term is "the branch". The module goes after the sum, before what
follows it (the ReLU): where RepVGG's own SE sits (Ding et al. 2021, reference code ``self.se``), and the
place that survives re-parameterisation into one 3x3 conv.

Blocks (``where="block"``), for networks without residual additions: the module goes after each block's
output. A block is the innermost module (not the model, not a container) that runs once, holds at least
two convolutions and outputs a 4D map: an Inception module, a DenseNet layer, a ShuffleNet unit, a
SqueezeNet Fire module, a timm-style depthwise-separable block; an ``nn.Sequential`` counts when its
parent is a container (MobileNetV1's ``conv_dw`` blocks). A plain ``nn.Sequential`` of layers with
pooling between conv stages (VGG's ``features``) is split at the pooling layers: one module after each
stage's last layer, before the pool.

Existing attention (``replace=True``): a module that runs once, reads one tensor ``x`` and returns
``x' * g`` where ``x'`` is ``x`` or computed from it and ``g`` is computed from ``x`` through a reduction
(global pooling, a mean): SE (timm ``conv_reduce``/``conv_expand``, torchvision ``fc1``/``fc2``), ECA,
CBAM, and this project's own modules (also found by their registered class).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from excite.attention import is_attention
from excite.plug.graph import (CATS, CONTAINERS, CONVS, NORMS, PADS, PASS_MODULES, POOL_OPS, POOLS, REDUCTIONS, SLICES, VIEWS,
                    WEIGHT_OPS, Graph, Node, is_leaf)


@dataclass
class Point:
    """One place for a module: ``hook="after"`` runs it on ``module``'s output (a forward hook),
    ``"before"`` on its input (a forward pre-hook). ``layout="nhwc"``: the tensor there is channels-last
    (a ``Linear`` inside a ConvNeXt block), so the module sees it permuted to NCHW."""

    module: str
    hook: str
    channels: int
    host: str
    kind: str
    layout: str = "nchw"
    replaced: str = ""

    @property
    def label(self) -> str:
        return self.module if self.hook == "after" else f"{self.module}:input"


def host_of(model: nn.Module, path: str) -> str:
    """The block that will own the attention: the closest ancestor of ``path`` that is not a container.

    Containers are skipped because a child added to an ``nn.Sequential`` would join its forward. When
    even the model is one (``nn.Sequential(conv, bn, relu)``), the matched layer itself holds the
    module (``1.attn``): a norm or conv layer never calls its children.
    """
    parts = path.split(".")[:-1]
    while parts and isinstance(model.get_submodule(".".join(parts)), CONTAINERS):
        parts.pop()
    host = ".".join(parts)
    if isinstance(model.get_submodule(host), CONTAINERS):
        return path
    return host


def channels_of(module: nn.Module) -> int | None:
    """The channel count a layer outputs, from its attributes (when no shape was traced)."""
    for attr in ("num_features", "num_channels", "out_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)
    return int(shape[0]) if shape else None


def _weight_layer(module: nn.Module) -> bool:
    return not isinstance(module, NORMS) and any(True for _ in module.parameters())


class _Finder:
    def __init__(self, model: nn.Module, graph: Graph):
        self.model, self.g = model, graph
        self.skipped: list[str] = []  # junctions found where no hook can put a module (see residual())

    # --- node properties -------------------------------------------------------------------------------

    def tensors(self, n: Node):
        return [i for i in n.inputs if self.g.from_input(i)]

    def weights(self, nodes) -> int:
        count = 0
        for n in nodes:
            m = self.g.module_of(n)
            if m is not None and _weight_layer(m):
                count += 1
            elif n.kind == "op" and n.name in WEIGHT_OPS and any(not self.g.from_input(i) for i in n.inputs):
                count += 1
        return count

    def projection(self, nodes) -> bool:
        """A shortcut path: at most two weight layers (ResNet's 1x1 downsample; GhostNet's depthwise then
        pointwise conv), and only norms, pooling, dropout and views besides: no activation."""
        modules = 0
        for n in nodes:
            if n.kind in ("param", "input"):
                continue
            m = self.g.module_of(n)
            if m is not None:
                if isinstance(m, NORMS + POOLS + PASS_MODULES):
                    continue
                if _weight_layer(m):
                    modules += 1
                    continue
                return False
            if n.kind == "op" and (n.spatial or n.name in PADS):
                continue  # option-A shortcut: strided subsampling, zero-padded channels
            if n.kind != "op" or n.name not in VIEWS | POOL_OPS | WEIGHT_OPS:
                return False
            if n.name in VIEWS and len(self.tensors(n)) != 1:
                return False
        return modules <= 2

    def own(self, term: Node, others) -> set:
        """The nodes only ``term`` depends on (not any of ``others``)."""
        return {n for n in self.g.only(term, others) if self.g.from_input(n)}

    # --- turning a node into a hook --------------------------------------------------------------------

    def point(self, node: Node, kind: str) -> Point | None:
        """The hook that puts a module right after ``node``, with its channel count, or ``None``."""
        g = self.g
        # Step over what follows without changing the map: `+ 0` (RepVGG's missing identity), views.
        while node.kind == "op" and len(node.users) == 1 and node.users[0].kind == "op":
            nxt = node.users[0]
            if len(self.tensors(nxt)) == 1 and (nxt.name in VIEWS or nxt.name in ("add", "sub")) \
                    and not g.module_out.get(node):
                node = nxt
            else:
                break
        candidates = []
        if node.kind == "module":
            candidates.append((node.name, "after"))
        candidates += [(p, "after") for p in reversed(g.module_out.get(node, []))]  # innermost first
        users = [u for u in node.users if u.kind != "output"]
        if len(users) == 1 and users[0].kind == "module" and len(node.users) == 1:
            candidates.append((users[0].name, "before"))
        candidates += [(p, "before") for p in self.readers(node)]  # legacy SENet: a shared ReLU, then the SE
        for path, hook in candidates:
            if not path or g.calls.get(path, 0) != 1:
                continue  # a module that runs several times would apply the attention everywhere
            module = self.model.get_submodule(path)
            shape = g.shapes.get(path, (None, None))[0 if hook == "before" else 1]
            layout = "nchw"
            if shape is not None:
                if len(shape) != 4:
                    continue
                layout = "nhwc" if isinstance(module, nn.Linear) and hook == "after" else "nchw"
                channels = shape[-1] if layout == "nhwc" else shape[1]
            else:
                channels = channels_of(module) if hook == "after" else None
            if not channels:
                continue
            host = path if (kind == "block" and not isinstance(module, CONTAINERS) and not is_leaf(module)) \
                else host_of(self.model, path)
            return Point(path, hook, int(channels), host, kind, layout)
        return None

    def readers(self, node: Node) -> list[str]:
        """The non-leaf modules (innermost first) that read ``node`` and nothing else from outside, and
        inside which every use of ``node`` happens: a pre-hook on one of them changes ``node`` for all its
        users. (The SE module of timm's legacy SE-ResNet reads the output of a ReLU called three times.)"""
        g = self.g
        if not node.users or any(u.kind == "output" for u in node.users):
            return []
        found = []
        for path, ins in g.module_in.items():
            if not path or isinstance(g.modules.get(path), CONTAINERS) or g.calls.get(path, 0) != 1:
                continue
            if {i for i in ins if g.from_input(i)} == {node} and all(path in u.scope for u in node.users):
                found.append(path)
        return sorted(found, key=lambda p: -p.count("."))

    def block_inputs(self, add: Node) -> set:
        """What the innermost block doing the addition ``add`` reads from outside: its input, even when
        that is a slice or a concatenation made before it (a CSPNet stage's split, Inception-ResNet's
        concatenated stem)."""
        for path in reversed(add.scope):
            if path and not isinstance(self.g.modules.get(path), CONTAINERS):
                return set(self.g.module_in.get(path, []))
        return set()

    def owner(self, pt: Point | None, add: Node) -> Point | None:
        """Register the module on the block whose forward does the addition (ConvNeXt: the block, not its
        MLP whose ``fc2`` the module follows), when that block contains the hooked layer."""
        if pt is None:
            return None
        for path in reversed(add.scope):
            m = self.g.modules.get(path)
            if path and m is not None and not isinstance(m, CONTAINERS) and pt.module.startswith(path + "."):
                pt.host = path
                break
        return pt

    # --- residual junctions ----------------------------------------------------------------------------

    def branch_end(self, n: Node) -> Node | None:
        """Walk back from a branch's output over drop-path, views, layer scales and gates."""
        g = self.g
        while True:
            m = g.module_of(n)
            if m is not None:
                if isinstance(m, PASS_MODULES) and len(self.tensors(n)) == 1:
                    n = self.tensors(n)[0]
                    continue
                return n
            if n.kind != "op":
                return None
            tin = self.tensors(n)
            if n.name in ("mul", "div") and len(tin) == 2:
                a, b = tin
                if g.depends(b, a):  # y * gate(y): the gate is already attention; go before it
                    n = a
                    continue
                if g.depends(a, b) and n.name == "mul":
                    n = b
                    continue
                return None
            if n.name in ("mul", "div") and len(tin) == 1 or n.name in VIEWS and len(tin) == 1:
                n = tin[0]  # layer scale (gamma * y), a scalar factor, a view or dropout
                continue
            return n  # a concatenation, slice, activation or sum: the module goes after it

    def branch_point(self, t: Node) -> Point | None:
        """The point at the end of the branch ``t``; a branch whose end is a channel slice no hook can take
        (ReXNet adds its shortcut to ``y[:, :C_in]`` only) gets the module on the whole map before the slice."""
        end = self.branch_end(t)
        while end is not None:
            pt = self.point(end, "residual")
            tin = self.tensors(end)
            if pt is not None or not (end.kind == "op" and end.name in SLICES and not end.spatial and len(tin) == 1):
                return pt
            end = self.branch_end(tin[0])
        return None

    def terms(self, add: Node):
        """The operands of a sum ``a + b + c`` (inner additions read only by this one are unfolded)."""
        out, todo = [], list(self.tensors(add))
        while todo:
            t = todo.pop(0)
            if t.kind == "op" and t.name == "add" and len(t.users) == 1 and len(self.tensors(t)) >= 2:
                todo = self.tensors(t) + todo
            else:
                out.append(t)
        return out

    def residual(self) -> list[Point]:
        g, points, seen = self.g, [], set()
        for node in g.nodes:
            if node.kind != "op" or node.name != "add" or len(self.tensors(node)) < 2:
                continue
            users = node.users
            if len(users) == 1 and users[0].kind == "op" and users[0].name == "add" and \
                    len(self.tensors(users[0])) >= 2:
                continue  # an inner addition of a longer sum: handled with the whole sum
            terms = self.terms(node)
            own = [self.own(t, [o for o in terms if o is not t]) for t in terms]
            # a shortcut must not be a slice or concatenation made in the block (Res2Net's `sp + spx[i]`)
            inputs = self.block_inputs(node)
            whole = [not (t.kind == "op" and t.name in SLICES | CATS and not t.spatial) or t in inputs for t in terms]
            proj = [w and self.projection(o) for w, o in zip(whole, own)]
            weights = [self.weights(o) for o in own]
            if len(terms) == 2 and all(proj) and any(not o and w for o, w in zip(own, whole)):
                # x + f(x) with f a conv and a norm: still a residual branch (only one side computes)
                proj = [not o for o in own]
            if all(proj):
                if max(weights) == 0:
                    continue  # e.g. adding two inputs, or a positional embedding
                pt = self.owner(self.point(node, "parallel"), node)  # RepVGG: after the sum of the branches
                if pt is None:
                    self.skipped.append(self._where(node))
                elif (pt.module, pt.hook) not in seen:
                    seen.add((pt.module, pt.hook))
                    points.append(pt)
                continue
            if not any(proj):
                continue  # HRNet-style fusion: neither side is the block's input or its projection
            skip = max((w for w, p in zip(weights, proj) if p), default=0)
            for t, p, w in zip(terms, proj, weights):
                if p or w <= skip:
                    continue
                pt = self.owner(self.branch_point(t), node)
                if pt is None:
                    self.skipped.append(self._where(node))
                elif (pt.module, pt.hook) not in seen:
                    seen.add((pt.module, pt.hook))
                    points.append(pt)
        return points

    @staticmethod
    def _where(node: Node) -> str:
        """A junction's place for messages: the innermost module whose forward does it."""
        return node.scope[-1] if node.scope else "(model)"

    # --- blocks of networks without residual additions -------------------------------------------------

    def blocks(self, exclude=()) -> list[Point]:
        g, model = self.g, self.model
        names = dict(model.named_modules())
        convs = [p for p, m in names.items() if isinstance(m, CONVS)]

        def n_convs(path):
            return sum(1 for c in convs if c.startswith(path + "."))

        def parent(path):
            return path.rsplit(".", 1)[0] if "." in path else ""

        cands = []
        for path, m in names.items():
            if not path or is_leaf(m) or g.calls.get(path, 0) != 1 or n_convs(path) < 2:
                continue
            if any(path == e or path.startswith(e + ".") for e in exclude):
                continue
            if isinstance(m, CONTAINERS) and not (parent(path) == "" or isinstance(names[parent(path)], CONTAINERS)):
                continue  # a Sequential inside a block is part of that block (ShuffleNet's branch2)
            shape = g.out_shape(path)
            if shape is not None and len(shape) != 4:
                continue
            cands.append(path)
        inner = [p for p in cands if not any(q.startswith(p + ".") for q in cands)]
        points = []
        for path in inner:
            m = names[path]
            if isinstance(m, nn.Sequential) and all(is_leaf(c) for c in m):
                # VGG-style stages: split at the pooling layers, one module before each pool
                stages, current = [], []
                for name, child in m.named_children():
                    if isinstance(child, POOLS):
                        stages.append(current)
                        current = []
                    else:
                        current.append((name, child))
                stages.append(current)
                stages = [s for s in stages if any(isinstance(c, CONVS) for _, c in s)]
                if len(stages) >= 2:
                    for s in stages:
                        pt = self._after_module(f"{path}.{s[-1][0]}")
                        if pt is not None:
                            points.append(pt)
                    continue
            pt = self._after_module(path)
            if pt is not None:
                points.append(pt)
        order = {p: i for i, p in enumerate(names)}
        return sorted(points, key=lambda p: order[p.module])

    def _after_module(self, path: str) -> Point | None:
        node = Node("module", path)  # a stand-in: point() only needs the path for an "after" hook
        return self.point(node, "block")

    # --- attention that is already there ---------------------------------------------------------------

    def attention(self) -> list[tuple[str, int]]:
        """``(path, channels)`` of every attention module the network already has, outermost only."""
        g, found = self.g, []
        for node, paths in g.module_out.items():
            if node.kind != "op" or node.name != "mul" or len(self.tensors(node)) != 2:
                continue
            a, b = self.tensors(node)
            for path in paths:  # outermost first: CBAM before its channel gate
                if g.calls.get(path, 0) != 1:
                    continue
                ins = {i for i in g.module_in.get(path, []) if g.from_input(i)}
                if len(ins) != 1:
                    continue
                (x,) = ins
                if any(self._gate(x, y, gate, path) for y, gate in ((a, b), (b, a))):
                    found.append(path)
                    break
        for path, m in self.model.named_modules():  # registered modules a tracer may have missed
            if path and is_attention(m) and g.calls.get(path, 0) == 1:
                found.append(path)
        found = sorted(set(found), key=list(dict(self.model.named_modules())).index)
        outer = [p for p in found if not any(p.startswith(q + ".") for q in found)]
        result = []
        for p in outer:
            shape = g.shapes.get(p, (None, None))[0]
            channels = shape[1] if shape is not None and len(shape) == 4 else channels_of(self.model.get_submodule(p))
            if channels:
                result.append((p, int(channels)))
        return result

    def _gate(self, x: Node, y: Node, gate: Node, path: str) -> bool:
        g = self.g
        if not (y is x or g.depends(y, x)) or not g.depends(gate, x):
            return False
        for n in g.ancestors(gate) | {gate}:
            if path not in n.scope or g.depends(x, n):
                continue
            m = g.module_of(n)
            if n.kind == "op" and n.name in REDUCTIONS:
                return True
            if m is not None and isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd,
                                                nn.modules.pooling._AdaptiveMaxPoolNd)):
                return True
        return False


def residual_points(model: nn.Module, graph: Graph) -> tuple[list[Point], list[str]]:
    """One point per residual branch (and per sum of parallel branches), in execution order; and the
    blocks of the junctions found where no hook can apply a module (a branch ending in a functional op
    that no module returns, or a layer that runs more than once)."""
    f = _Finder(model, graph)
    return f.residual(), f.skipped


def block_points(model: nn.Module, graph: Graph, exclude=()) -> list[Point]:
    """One point after each block's output (see the module docstring for what a block is)."""
    return _Finder(model, graph).blocks(exclude)


def attention_modules(model: nn.Module, graph: Graph) -> list[tuple[str, int]]:
    """``(path, channels)`` of the attention modules already in ``model``."""
    return _Finder(model, graph).attention()
