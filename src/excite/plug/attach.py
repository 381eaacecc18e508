"""Add attention to an existing network in place: ``excite.attach(model, "eca")``.

Where: SENet (Hu et al. 2018, Fig. 3), CBAM (Woo et al. 2018, Fig. 3) and ECA-Net (Wang et al. 2020,
Fig. 2) all put the module on the residual branch, after its last normalisation and before the addition.
``where="residual"`` finds those points by symbolic tracing (torch.fx): every addition of two tensors
whose operands come from different paths is a residual junction; the operand with more parametrised
layers of its own is the branch, the other the shortcut (identity or projection). Walking back from the
branch operand through parameter-free operations (drop-path, dropout, identity) reaches the branch's last
normalisation layer, which is where the module goes. Networks that tracing cannot follow (Python control
flow on tensor values) take module-name patterns instead: ``where="layer*.*.bn3"``.

How: the new module is registered on the block that owns the branch, as ``<block>.attn`` (the project's
own key layout, so an attached torchvision ResNet has the same ``state_dict`` keys as
``create_model(..., attention=...)``), and applied by a forward hook on the normalisation layer. No
existing module is replaced, so every existing ``state_dict`` key is unchanged. A project block built
without attention already calls its empty ``attn`` slot at that point; the slot is simply filled.

``init="identity"`` makes the attached network compute exactly the original function at step 0: a hook on
the attention module returns ``y + s * (attn(y) - y)`` (``torch.lerp``) with a learnable scalar ``s``
(``<block>.attn_scale``) initialised to 0, so the output is ``y`` bit for bit. A gate-bias trick cannot do
this exactly: a sigmoid gate never reaches 1.

Cost: the report profiles the network before and after each insertion, so every row is exactly what that
module adds (its own ops and the blend) and the rows sum to the whole-model increase.
"""

from __future__ import annotations

import fnmatch
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ExciteError
from ..profiling import profile as _profile

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_ADDS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
INITS = ("default", "identity")


@dataclass
class Insertion:
    """One attention module added: its key prefix, the layer it follows, its channels and what it costs.

    ``params`` counts the module's parameters (plus the blend scalar with ``init="identity"``); ``macs`` and
    ``memory`` (bytes read + written) are the increase of one forward pass measured by :func:`excite.profile`
    when this module was added, ``None`` when not profiled.
    """

    name: str
    after: str
    channels: int
    params: int
    macs: int | None = None
    memory: int | None = None


def _human(n: int | None, unit: str = "") -> str:
    """``1234567 -> "1.23M"``, ``(1234567, "B") -> "1.23 MB"`` (decimal prefixes); ``None -> "-"``."""
    if n is None:
        return "-"
    sep = " " if unit else ""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{sep}{prefix}{unit}"
    return f"{n}{sep}{unit}"


@dataclass
class AttachReport:
    """What :func:`attach` did: every insertion point and what each insertion costs, with totals.

    Per insertion: parameters, MACs and memory traffic (bytes read + written) of one forward pass at
    ``input_size``, measured by :func:`excite.profile` as the increase when that module was added, so the
    rows sum exactly to ``params_added``, ``macs_added`` and ``memory_added`` (the whole-model increase).
    MACs and memory are ``None`` when the profiler was not run (``note`` says why).
    """

    attention: str
    where: str
    init: str
    insertions: list[Insertion] = field(default_factory=list)
    params_before: int = 0
    params_added: int = 0
    macs_before: int | None = None
    macs_added: int | None = None
    memory_before: int | None = None
    memory_added: int | None = None
    input_size: tuple | None = None
    note: str = ""

    def __len__(self) -> int:
        return len(self.insertions)

    def table(self) -> str:
        """The report as a plain-text table: one row per insertion, then the totals and relative increase."""
        rows = [(i.name, i.after, str(i.channels), f"{i.params:,}", _human(i.macs), _human(i.memory, "B"))
                for i in self.insertions]
        total = ("total", "", "", f"{self.params_added:,}", _human(self.macs_added), _human(self.memory_added, "B"))
        head = ("module", "after", "channels", "params", "MACs", "memory")
        widths = [max(len(r[c]) for r in [head, total, *rows]) for c in range(len(head))]

        def line(r):  # names left-aligned, numbers right-aligned
            return "  ".join(v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip()

        size = "x".join(str(s) for s in self.input_size or ())
        lines = [f"attach {self.attention} (where={self.where!r}, init={self.init!r}): {len(self)} modules"
                 + (f", costs of one forward pass at 1x{size}" if self.macs_added is not None else ""),
                 line(head), *map(line, rows), line(total)]
        # 3 significant digits: ECA's increase is a few parts per million of the parameters.
        pct = [f"+{100.0 * self.params_added / self.params_before:.3g}% params" if self.params_before else ""]
        if self.macs_added is not None and self.macs_before:
            pct.append(f"+{100.0 * self.macs_added / self.macs_before:.3g}% MACs")
        if self.memory_added is not None and self.memory_before:
            pct.append(f"+{100.0 * self.memory_added / self.memory_before:.3g}% memory traffic")
        lines.append("increase over the original network: " + ", ".join(p for p in pct if p))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    __str__ = table


class _ApplyAttention:
    """Forward hook on a normalisation layer: route its output through ``host.<name>``.

    Module-level class (not a closure) so that attached models can be deep-copied and pickled; the hook
    refers to the host block, which ``copy.deepcopy`` remaps to the copy.
    """

    def __init__(self, host: nn.Module, name: str):
        self.host, self.name = host, name

    def __call__(self, module, inputs, out):
        return getattr(self.host, self.name)(out)


class _IdentityBlend:
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


def _empty_slot(host: nn.Module) -> bool:
    """True for a project block built without attention: its forward already calls ``self.attn``."""
    slot = getattr(host, "attn", "absent")
    return type(host).__module__.startswith("excite.models") and (slot is None or isinstance(slot, nn.Identity))


def _channels(module: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels", "out_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)
    return int(shape[0]) if shape else None


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _host_of(model: nn.Module, path: str) -> str:
    """The block that will own the attention: the closest ancestor of ``path`` that is not a container.

    Containers are skipped because a child added to an ``nn.Sequential`` would join its forward. When
    even the model is one (``nn.Sequential(conv, bn, relu)``), the matched layer itself holds the
    module (``1.attn``): a norm or conv layer never calls its children.
    """
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    parts = path.split(".")[:-1]
    while parts and isinstance(model.get_submodule(".".join(parts)), containers):
        parts.pop()
    host = ".".join(parts)
    return path if isinstance(model.get_submodule(host), nn.Sequential) else host


def _residual_points(model: nn.Module) -> list[tuple[str, str]]:
    """``(norm_path, host_path)`` for every residual branch, found by fx symbolic tracing."""
    import torch.fx as fx

    # Trace in eval mode: training-only paths (stochastic depth's random mask) are not structure.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # TraceError, or a TypeError from control flow on a Proxy
        raise ExciteError(
            f"cannot trace {type(model).__name__} to find residual blocks ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); pass module-name patterns instead, e.g. where='layer*.*.bn3'"
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    modules = dict(model.named_modules())
    ancestors: dict[fx.Node, frozenset] = {}

    def anc(node):  # all nodes ``node`` depends on (iterative: deep graphs exceed the recursion limit)
        stack = [node]
        while stack:
            n = stack[-1]
            if n in ancestors:
                stack.pop()
                continue
            todo = [p for p in n.all_input_nodes if p not in ancestors]
            if todo:
                stack.extend(todo)
                continue
            acc = set()
            for p in n.all_input_nodes:
                acc |= ancestors[p]
                acc.add(p)
            ancestors[n] = frozenset(acc)
            stack.pop()
        return ancestors[node]

    def weight_layers(nodes):
        return sum(1 for n in nodes if n.op == "call_module" and _has_params(modules[n.target])
                   and not isinstance(modules[n.target], _NORMS))

    points, seen = [], set()
    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in _ADD_METHODS)
        if not is_add or len(node.args) < 2 or not all(isinstance(a, fx.Node) for a in node.args[:2]):
            continue
        a, b = node.args[:2]
        own_a = (anc(a) | {a}) - (anc(b) | {b})
        own_b = (anc(b) | {b}) - (anc(a) | {a})
        la, lb = weight_layers(own_a), weight_layers(own_b)
        if la == lb:
            continue  # not a branch-plus-shortcut junction (e.g. two equal paths)
        branch = a if la > lb else b
        # Walk back over parameter-free single-input steps (drop-path, dropout, identity) to the last norm.
        n, target = branch, None
        while True:
            if n.op == "call_module":
                m = modules[n.target]
                if isinstance(m, _NORMS) or _has_params(m):
                    target = n.target
                    break
            inputs = n.all_input_nodes
            if len(inputs) != 1:
                break
            n = inputs[0]
        if target is None or target in seen or _channels(modules[target]) is None:
            continue
        seen.add(target)
        points.append((target, _host_of(model, target)))
    return points


def _pattern_points(model: nn.Module, where: str | list[str]) -> list[tuple[str, str]]:
    patterns = [where] if isinstance(where, str) else list(where)
    points = []
    for name, module in model.named_modules():
        if name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            if _channels(module) is None:
                raise ExciteError(f"where= matched {name!r} ({type(module).__name__}), whose channel count is unknown;"
                                  " match normalisation or convolution layers")
            points.append((name, _host_of(model, name)))
    if not points:
        raise ExciteError(f"where={where!r} matches no module name; names look like "
                          f"{', '.join(n for n, _ in list(model.named_modules())[1:4])}")
    return points


def _measure(model, input_size):
    """(macs, memory) of one forward pass of ``model`` at ``input_size``, from the project profiler."""
    import importlib

    r = _profile(model, input_size=input_size)
    return int(r.macs), int(r.memory)


def attach(
    model: nn.Module,
    attention: str | Callable[..., nn.Module],
    *,
    where: str | list[str] = "residual",
    init: str = "default",
    input_size: tuple[int, int, int] | None = None,
    profile: bool = True,
    **attention_kwargs,
) -> AttachReport:
    """Add an attention module to every residual branch (or every module matching ``where``) in place.

    Args:
        model: any ``nn.Module``; existing parameters and ``state_dict`` keys are left unchanged.
        attention: a registered attention name (``"se"``, ``"eca"``, ``"cbam"`` ...) or a class/factory
            ``cls(channels, **kwargs)``.
        where: ``"residual"`` (find residual branches by tracing) or shell-style module-name pattern(s)
            such as ``"layer*.*.bn3"``; the module goes right after each matched layer.
        init: ``"default"`` (the module's own initialisation) or ``"identity"`` (the network computes
            exactly its original function until trained; see the module docstring).
        input_size: ``(C, H, W)`` for the MACs / memory figures (default: ``model.default_input_size``
            or 3x224x224).
        profile: measure what each insertion adds in MACs and memory traffic with :func:`excite.profile`
            (one pass on meta tensors per insertion, plus one before; ``False`` skips them).
        **attention_kwargs: passed to every attention module (``k_size=3``, ``reduction=8`` ...).

    Returns:
        An :class:`AttachReport`; ``print(report)`` shows the table.
    """
    from ..registry import attention_class

    if init not in INITS:
        raise ExciteError(f"init={init!r} is not valid; choose one of {', '.join(INITS)}")
    cls = attention_class(attention) if isinstance(attention, str) else attention
    label = attention if isinstance(attention, str) else getattr(attention, "__name__", repr(attention))
    points = _residual_points(model) if where == "residual" else _pattern_points(model, where)
    if not points:
        have = _attention_modules(model)
        if have and where == "residual":  # attaching twice: the branches already end in attention
            raise ExciteError(f"{type(model).__name__} already has attention ({len(have)} modules: "
                              f"{', '.join(sorted(set(have)))}); attach to the model without attention "
                              "(--attention none for a registered model)")
        raise ExciteError(f"found no residual branch in {type(model).__name__}; pass module-name patterns as where=")
    input_size = tuple(input_size or getattr(model, "default_input_size", None) or (3, 224, 224))
    params_before = sum(p.numel() for p in model.parameters())
    report = AttachReport(label, where if isinstance(where, str) else ",".join(where), init,
                          params_before=params_before, input_size=input_size)
    # Profile before and after each insertion: each row is then that module's exact increase (its own ops,
    # the identity blend, any knock-on change), and the rows add up to the whole-model increase.
    last = None
    if profile:
        try:
            last = _measure(model, input_size)
            report.macs_before, report.memory_before = last
        except Exception as e:  # profiler missing or unable: report parameters only, and say so
            report.note = f"MACs/memory not reported: profiler unavailable ({type(e).__name__}: {str(e)[:80]})"

    ref = next(model.parameters(), None)
    used: dict[str, int] = {}
    for target, host_path in points:
        host = model.get_submodule(host_path) if host_path else model
        channels = _channels(model.get_submodule(target))
        try:
            attn = cls(channels, **attention_kwargs)
        except TypeError as e:
            raise ExciteError(f"attention {label!r}: {e}") from None
        if ref is not None:
            attn.to(device=ref.device, dtype=ref.dtype)
        attn.train(host.training)  # an eval-mode network gets eval-mode attention (BN inside CBAM)
        fill = where == "residual" and _empty_slot(host)
        if fill:  # the block applies its own `attn` at the residual point; no hook needed
            name = "attn"
        else:  # one block can hold several branches (rare); number them attn, attn1, ...
            k = used.get(host_path, 0)
            while hasattr(host, "attn" if k == 0 else f"attn{k}"):
                k += 1
            used[host_path] = k + 1
            name = "attn" if k == 0 else f"attn{k}"
        setattr(host, name, attn)  # nn.Module.__setattr__ also replaces a plain `attn = None`
        added = sum(p.numel() for p in attn.parameters())
        if init == "identity":
            dev = ref.device if ref is not None else None
            host.register_parameter(name + "_scale", nn.Parameter(torch.zeros((), device=dev)))
            attn.register_forward_hook(_IdentityBlend(host, name + "_scale"))
            added += 1
        if not fill:
            model.get_submodule(target).register_forward_hook(_ApplyAttention(host, name))
        full = f"{host_path}.{name}" if host_path else name
        row = Insertion(full, target, channels, added)
        if last is not None:
            try:
                now = _measure(model, input_size)
                row.macs, row.memory = now[0] - last[0], now[1] - last[1]
                last = now
            except Exception as e:
                last = None
                report.note = f"MACs/memory not reported: profiler failed ({type(e).__name__}: {str(e)[:80]})"
        report.insertions.append(row)
    report.params_added = sum(p.numel() for p in model.parameters()) - params_before
    if last is not None:
        report.macs_added = sum(i.macs for i in report.insertions)
        report.memory_added = sum(i.memory for i in report.insertions)
    else:
        for i in report.insertions:
            i.macs = i.memory = None
        report.macs_before = report.memory_before = None
    _record(model, attention, where, init, attention_kwargs)
    return report


def _record(model: nn.Module, attention, where, init: str, attention_kwargs: dict) -> None:
    """Append this call to the model's description, so a saved model file can rebuild the network."""
    spec = getattr(model, "excite_spec", None)
    if spec is None:
        return
    call = {"attention": attention, "where": where, "init": init, **attention_kwargs}
    try:
        json.dumps(call)
        ok = isinstance(attention, str)
    except TypeError:
        ok = False
    # A Python object (a class, a lambda) cannot be written to a file: the model is no longer describable.
    model.excite_spec = spec.replace(attach=[*spec.attach, call]) if ok else None


def _attention_modules(model) -> list[str]:
    """Class names of the registered attention modules inside ``model``."""
    from ..registry import is_attention

    return [type(m).__name__ for m in model.modules() if is_attention(m)]
