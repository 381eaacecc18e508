"""Add attention to an existing network in place: ``excite.attach(model, "eca")``.

Where: SENet (Hu et al. 2018, Fig. 3), CBAM (Woo et al. 2018, Fig. 3) and ECA-Net (Wang et al. 2020,
Fig. 2) all put the module on the residual branch, after its last normalisation and before the addition.
``where="residual"`` finds those points in the network's data-flow graph (:mod:`excite.plug.graph`:
``torch.fx`` with every norm and conv layer opaque, or a dispatch-level trace where fx fails) with the
rules of :mod:`excite.plug.discover`: a residual is an addition whose one side is the block's input or its
projection; a branch that already ends in a gate or a layer scale gets the module before them, one that
ends in a concatenation gets it after it; a sum of parallel branches with no identity (RepVGG) gets it
after the sum. ``where="block"`` puts it after each block's output in networks without residual
additions (the SENet paper's SE-Inception, Fig. 2). Module-name patterns (``where="layer*.*.bn3"``) pick
layers by hand. ``replace=True`` swaps the attention a network already has for another one.

How: the new module is registered on the block that owns the branch, as ``<block>.attn`` (the project's
own key layout, so an attached torchvision ResNet has the same ``state_dict`` keys as
``create_model(..., attention=...)``), and applied by a forward hook on the layer it follows (a forward
pre-hook on the layer after a sum). No existing module is replaced (except with ``replace=True``), so
every existing ``state_dict`` key is unchanged. A project block built without attention already calls its
empty ``attn`` slot at that point; the slot is simply filled.

``init="identity"`` makes the attached network compute exactly the original function at step 0: a hook on
the attention module returns ``y + s * (attn(y) - y)`` (``torch.lerp``) with a learnable scalar ``s``
(``<block>.attn_scale``) initialised to 0, so the output is ``y`` bit for bit. A gate-bias trick cannot do
this exactly: a sigmoid gate never reaches 1.

Atomic: every module is built before the model is touched, and each change made while inserting is
recorded with its undo; an error undoes them all, so a failing call leaves the model exactly as it was.

Cost: one profile of the attached network gives every inserted module's own costs (the profiler's
per-module totals) plus its identity blend; the rows sum to the whole-model increase.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from excite.attention import is_attention
from excite.attention.slot import IdentityBlend
from excite.core.errors import ExciteError, expect_module
from excite.core.registry import attention_class
from excite.profiling import profile as _profile
from excite.plug.discover import Point, attention_modules, block_points, channels_of, host_of, residual_points
from excite.plug.graph import build_graph

INITS = ("default", "identity")


@dataclass
class Insertion:
    """One attention module added: its key prefix, the layer it follows, its channels and what it costs.

    ``after`` is the layer whose output the module takes, ``"<layer>:input"`` when it takes a layer's
    input (after a sum of parallel branches, before the activation that follows), or
    ``"replaces <Class>"`` with ``replace=True``. ``params`` counts the module's parameters (plus the blend
    scalar with ``init="identity"``); ``macs`` and ``memory`` (bytes read + written) are what the module and
    its blend cost in one forward pass, from :func:`excite.profile`'s per-module totals; ``None`` when not
    profiled.
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
    ``input_size``, from one profile of the attached network; the rows sum exactly to ``params_added``,
    ``macs_added`` and ``memory_added`` (the whole-model increase). With ``replace=True`` the totals are net
    changes (the old modules are gone) and the rows what each new module costs. MACs and memory are
    ``None`` when the profiler was not run (``note`` says why). ``tracer``: which tracer read the network
    (``"fx"``, ``"dispatch (meta)"``, ``"dispatch (real tensors)"``; empty for module-name patterns).
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
    replace: bool = False
    tracer: str = ""

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
        mode = "replace=True" if self.replace else f"where={self.where!r}"
        lines = [f"attach {self.attention} ({mode}, init={self.init!r}): {len(self)} modules"
                 + (f", costs of one forward pass at 1x{size}" if self.macs_added is not None else ""),
                 line(head), *map(line, rows), line(total)]
        # 3 significant digits: ECA's increase is a few parts per million of the parameters.
        pct = [f"{100.0 * self.params_added / self.params_before:+.3g}% params" if self.params_before else ""]
        if self.macs_added is not None and self.macs_before:
            pct.append(f"{100.0 * self.macs_added / self.macs_before:+.3g}% MACs")
        if self.memory_added is not None and self.memory_before:
            pct.append(f"{100.0 * self.memory_added / self.memory_before:+.3g}% memory traffic")
        lines.append(("change" if self.replace else "increase") + " over the original network: "
                     + ", ".join(p for p in pct if p))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    __str__ = table


class _ApplyAttention:
    """Forward hook on a layer: route its output through ``host.<name>``.

    Module-level class (not a closure) so that attached models can be deep-copied and pickled; the hook
    refers to the host block, which ``copy.deepcopy`` remaps to the copy. ``layout="nhwc"``: the output is
    channels-last (a ``Linear`` in a ConvNeXt block); the module sees it as NCHW (permutes are views).
    """

    def __init__(self, host: nn.Module, name: str, layout: str = "nchw"):
        self.host, self.name, self.layout = host, name, layout

    def apply(self, y):
        attn = getattr(self.host, self.name)
        if getattr(self, "layout", "nchw") == "nhwc":
            return attn(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return attn(y)

    def __call__(self, module, inputs, out):
        return self.apply(out)


class _ApplyBefore(_ApplyAttention):
    """Forward pre-hook: route a layer's first input through ``host.<name>`` (after a sum of branches)."""

    def __call__(self, module, args):
        return (self.apply(args[0]), *args[1:])


def _empty_slot(host: nn.Module) -> bool:
    """True for a project block built without attention: its forward already calls ``self.attn``."""
    slot = getattr(host, "attn", "absent")
    return type(host).__module__.startswith("excite.models") and (slot is None or isinstance(slot, nn.Identity))


def _pattern_points(model: nn.Module, where: str | list[str]) -> list[Point]:
    patterns = [where] if isinstance(where, str) else list(where)
    points = []
    for name, module in model.named_modules():
        if name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            channels = channels_of(module)
            if channels is None:
                raise ExciteError(f"where= matched {name!r} ({type(module).__name__}), whose channel count is unknown;"
                                  " match normalisation or convolution layers")
            points.append(Point(name, "after", channels, host_of(model, name), "pattern"))
    if not points:
        raise ExciteError(f"where={where!r} matches no module name; names look like "
                          f"{', '.join(n for n, _ in list(model.named_modules())[1:4])}")
    return points


def _graph(model: nn.Module, input_size: tuple, what: str):
    try:
        return build_graph(model, input_size)
    except RuntimeError as e:
        raise ExciteError(f"cannot trace {type(model).__name__} to find {what} ({str(e)[:300]}); "
                          "pass module-name patterns instead, e.g. where='layer*.*.bn3'") from None


class _BlendCost(nn.Module):
    """The identity blend alone, to profile what it adds at one insertion (it runs outside the module)."""

    def forward(self, y, out, s):
        return torch.lerp(y, out, s)


def _costs(model: nn.Module, report: AttachReport, names: list[str], blends: bool, before=None) -> None:
    """Fill the MACs / memory of every row from ONE profile of the attached network.

    Each inserted module's subtree costs come from the profiler's per-module totals; the identity blend
    runs in a hook outside the module, so its cost is profiled alone at the shape the module saw (captured
    by a temporary hook during the same pass). The original network's costs are the total minus the rows,
    except with ``replace=True`` (``before``: the profile taken before the swap; the old modules' costs go).
    """
    shapes, handles = {}, []
    for name in names:
        def grab(mod, args, _name=name):
            shapes[_name] = tuple(args[0].shape)
        handles.append(model.get_submodule(name).register_forward_pre_hook(grab))
    try:
        after = _profile(model, input_size=report.input_size)
    finally:
        for h in handles:
            h.remove()
    blend_cache: dict = {}
    for row, name in zip(report.insertions, names):
        d = after.modules.get(name, {"macs": 0, "memory": 0})
        row.macs, row.memory = int(d["macs"]), int(d["memory"])
        if blends and name in shapes:
            shape = shapes[name]
            if shape not in blend_cache:
                p = _profile(_BlendCost(), inputs=(torch.empty(shape), torch.empty(shape), torch.zeros(())))
                blend_cache[shape] = (int(p.macs), int(p.memory))
            row.macs += blend_cache[shape][0]
            row.memory += blend_cache[shape][1]
    if before is None:  # the rows are the whole increase
        report.macs_added = sum(i.macs for i in report.insertions)
        report.memory_added = sum(i.memory for i in report.insertions)
        report.macs_before = int(after.macs) - report.macs_added
        report.memory_before = int(after.memory) - report.memory_added
    else:  # replace=True: the net change also removes the old modules, so it comes from the two totals
        report.macs_before, report.memory_before = int(before.macs), int(before.memory)
        report.macs_added = int(after.macs) - report.macs_before
        report.memory_added = int(after.memory) - report.memory_before


def attach(
    model: nn.Module,
    attention: str | Callable[..., nn.Module],
    *,
    where: str | list[str] = "residual",
    init: str = "default",
    replace: bool = False,
    input_size: tuple[int, int, int] | None = None,
    profile: bool = True,
    **attention_kwargs,
) -> AttachReport:
    """Add an attention module to every residual branch (or block, or matching module) in place.

    Args:
        model: any ``nn.Module``; existing parameters and ``state_dict`` keys are left unchanged.
        attention: a registered attention name (``"se"``, ``"eca"``, ``"cbam"`` ...) or a class/factory
            ``cls(channels, **kwargs)``.
        where: ``"residual"`` (each residual branch, after its last layer and before any gate, layer scale
            or the addition), ``"block"`` (after each block's output, for networks without residual
            additions: VGG, DenseNet, Inception, ShuffleNet, SqueezeNet, MobileNetV1) or shell-style
            module-name pattern(s) such as ``"layer*.*.bn3"`` (the module goes after each matched layer).
        init: ``"default"`` (the module's own initialisation) or ``"identity"`` (the network computes
            exactly its original function until trained; see the module docstring).
        replace: swap the attention the network already has (SE, ECA, CBAM ...) for ``attention``, at
            the same key, instead of adding modules; every other key is kept. ``where`` is ignored. With
            ``init="identity"`` the network starts as if the old attention were removed.
        input_size: ``(C, H, W)`` for tracing and for the MACs / memory figures (default:
            ``model.default_input_size`` or 3x224x224).
        profile: measure what each insertion adds in MACs and memory traffic with :func:`excite.profile`
            (one pass of the attached network on meta tensors; ``False`` skips it).
        **attention_kwargs: passed to every attention module (``k_size=3``, ``reduction=8`` ...).

    Every argument is plain data (strings, numbers, lists), so a call can be recorded and replayed: the
    same arguments on the same architecture give the same modules at the same keys.

    Atomic: if anything fails (a module cannot be built for one branch, a hook cannot be added), the
    model is left exactly as it was, and the error is one line naming the problem.

    Returns:
        An :class:`AttachReport`; ``print(report)`` shows the table.
    """
    expect_module(model, "attach")
    if init not in INITS:
        raise ExciteError(f"init={init!r} is not valid; choose one of {', '.join(INITS)}")
    if not isinstance(where, (str, list, tuple)) or not where:
        raise ExciteError(f"where={where!r} is not valid; use 'residual', 'block' or module-name patterns")
    cls = attention_class(attention) if isinstance(attention, str) else attention
    label = attention if isinstance(attention, str) else getattr(attention, "__name__", repr(attention))
    input_size = tuple(input_size or getattr(model, "default_input_size", None) or (3, 224, 224))
    points, skipped, tracer = _plan(model, where, replace, input_size)
    report = AttachReport(label, where if isinstance(where, str) else ",".join(where), init,
                          params_before=sum(p.numel() for p in model.parameters()), input_size=input_size,
                          replace=replace, tracer=tracer)
    if skipped:
        report.note = (f"{len(skipped)} residual junction(s) found where no hook can apply a module (in "
                       f"{', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}); use where= patterns there")
    ref = next(model.parameters(), None)
    built = _build_all(cls, label, points, attention_kwargs, ref)
    before = None
    if replace and profile:  # the net change of a swap needs the old modules' costs: one pass before
        try:
            before = _profile(model, input_size=input_size)
        except Exception as e:  # noqa: BLE001 - reported below as "not reported"
            report.note = f"MACs/memory not reported: profiler failed ({type(e).__name__}: {str(e)[:80]})"
            profile = False
    names = _insert_all(model, points, built, init, ref, where, report)
    if profile:
        try:
            _costs(model, report, names, init == "identity", before)
        except Exception as e:  # noqa: BLE001 - profiler unable: report parameters only, and say so
            for i in report.insertions:
                i.macs = i.memory = None
            report.macs_added = report.memory_added = report.macs_before = report.memory_before = None
            report.note = f"MACs/memory not reported: profiler failed ({type(e).__name__}: {str(e)[:80]})"
    _record(model, attention, where, init, attention_kwargs, replace)
    return report


def _plan(model: nn.Module, where, replace: bool, input_size) -> tuple[list[Point], list[str], str]:
    """Where the modules go: ``(points, residual junctions skipped, tracer used)``."""
    if not replace and where not in ("residual", "block"):
        return _pattern_points(model, where), [], ""
    what = "its attention modules" if replace else "residual blocks" if where == "residual" else "blocks"
    graph = _graph(model, input_size, what)
    skipped: list[str] = []
    if replace:
        swaps = attention_modules(model, graph)
        if not swaps:
            raise ExciteError(f"found no attention module in {type(model).__name__} to replace "
                              f"(traced with {graph.tracer}); use replace=False to add one")
        return [Point(p, "replace", c, p, "replace") for p, c in swaps], skipped, graph.tracer
    if where == "residual":
        points, skipped = residual_points(model, graph)
    else:
        points = block_points(model, graph, exclude=[p for p, _ in attention_modules(model, graph)])
    if not points:
        hint = "where='block' for networks without residual additions, or " if where == "residual" else ""
        raise ExciteError(f"found no {'residual branch' if where == 'residual' else 'block'} in "
                          f"{type(model).__name__} (traced with {graph.tracer}); pass {hint}module-name "
                          "patterns as where=")
    return points, skipped, graph.tracer


def _build_all(cls, label: str, points: list[Point], attention_kwargs: dict, ref) -> list[nn.Module]:
    """Build every module before touching the model: most errors (a reduction too large for one branch's
    channels, an unknown keyword) happen here, while there is nothing to undo."""
    built = []
    for pt in points:
        try:
            attn = cls(pt.channels, **attention_kwargs)
        except ExciteError as e:
            raise ExciteError(f"attention {label!r} at {pt.label} ({pt.channels} channels): {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:
            raise ExciteError(f"attention {label!r} at {pt.label} ({pt.channels} channels): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(attn, nn.Module):
            raise ExciteError(f"attention {label!r} returned {type(attn).__name__}, not an nn.Module")
        if not is_attention(attn):  # a user's class: tag it, so find_attention sees it
            attn.excite_attention = label
        if ref is not None:
            attn.to(device=ref.device, dtype=ref.dtype)
        built.append(attn)
    return built


def _insert_all(model, points, built, init: str, ref, where, report: AttachReport) -> list[str]:
    """Insert every module, recording how to undo each step; any failure undoes them all (the model is
    as before). Fills the report's rows and parameter totals; returns the modules' keys."""
    undo: list = []
    names: list[str] = []
    try:
        used: dict[str, int] = {}
        for pt, attn in zip(points, built):
            names.append(_insert(model, pt, attn, init, ref, used, undo, where))
            added = sum(p.numel() for p in attn.parameters()) + (1 if init == "identity" else 0)
            after = f"replaces {pt.replaced}" if pt.kind == "replace" else pt.label
            report.insertions.append(Insertion(names[-1], after, pt.channels, added))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    report.params_added = sum(p.numel() for p in model.parameters()) - report.params_before
    if report.replace:
        old_params = sum(i.params for i in report.insertions) - report.params_added
        report.note = (report.note + "\n" if report.note else "") + (
            f"replaced {len(report)} modules ({', '.join(sorted({i.after[9:] for i in report.insertions}))}, "
            f"{old_params:,} params): the totals are net changes, the rows what each new module costs")
    return names


def _insert(model, pt: Point, attn: nn.Module, init: str, ref, used: dict, undo: list, where) -> str:
    """Put ``attn`` at ``pt``; append to ``undo`` a callable for every change made. Returns its key."""
    host = model.get_submodule(pt.host) if pt.host else model
    attn.train(host.training)  # an eval-mode network gets eval-mode attention (BN inside CBAM)
    if pt.kind == "replace":
        parent_path, _, key = pt.module.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        old = parent._modules[key]
        pt.replaced = type(old).__name__
        setattr(parent, key, attn)
        undo.append(lambda: setattr(parent, key, old))
        host, name = parent, key
    else:
        fill = pt.kind == "residual" and pt.hook == "after" and _empty_slot(host)
        if fill:  # the block applies its own `attn` at the residual point; no hook needed
            name = "attn"
            old = host._modules.get("attn", getattr(host, "attn", None))
        else:  # one block can hold several branches (rare); number them attn, attn1, ...
            k = used.get(pt.host, 0)
            while hasattr(host, "attn" if k == 0 else f"attn{k}"):
                k += 1
            used[pt.host] = k + 1
            name = "attn" if k == 0 else f"attn{k}"
            old = None
        setattr(host, name, attn)  # nn.Module.__setattr__ also replaces a plain `attn = None`
        if fill:
            undo.append(lambda h=host, o=old: (h._modules.pop("attn", None), setattr(h, "attn", o)))
        else:
            undo.append(lambda h=host, n=name: delattr(h, n))
        target = model.get_submodule(pt.module)
        hook = _ApplyAttention(host, name, pt.layout)
        if fill:
            pass
        elif pt.hook == "after":
            handle = target.register_forward_hook(hook)
            undo.append(handle.remove)
        else:
            handle = target.register_forward_pre_hook(_ApplyBefore(host, name, pt.layout))
            undo.append(handle.remove)
    if init == "identity":
        dev = ref.device if ref is not None else None
        host.register_parameter(name + "_scale", nn.Parameter(torch.zeros((), device=dev)))
        undo.append(lambda h=host, n=name + "_scale": delattr(h, n))
        handle = attn.register_forward_hook(IdentityBlend(host, name + "_scale"))
        undo.append(handle.remove)
    if pt.kind == "replace":
        return pt.module
    return f"{pt.host}.{name}" if pt.host else name


def _record(model: nn.Module, attention, where, init: str, attention_kwargs: dict, replace: bool = False) -> None:
    """Append this call to the model's description, so a saved model file can rebuild the network."""
    spec = getattr(model, "excite_spec", None)
    if spec is None:
        return
    call = {"attention": attention, "where": where, "init": init, **({"replace": True} if replace else {}),
            **attention_kwargs}
    try:
        json.dumps(call)
        ok = isinstance(attention, str)
    except TypeError:
        ok = False
    # A Python object (a class, a lambda) cannot be written to a file: the model is no longer describable.
    model.excite_spec = spec.replace(attach=[*spec.attach, call]) if ok else None


def _attention_modules(model) -> list[str]:
    """Class names of the registered attention modules inside ``model``."""
    return [type(m).__name__ for m in model.modules() if is_attention(m)]
