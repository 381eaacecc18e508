"""Multi-scale feature maps for detectors and segmenters: ``create_model(..., features_only=True)``.

One mechanism for every family, including ones added later: the stages are found, not listed. A forward
pass on meta tensors (no memory, no arithmetic) records the output shape of every top-level feature
module (the model's children, or the children of its ``features`` Sequential) in the order they run;
the last module before each change of resolution ends a stage. That gives timm's ``feature_info``:
the module, its channels and its reduction (input size / output size) for each stage, e.g. ResNet-50
``relu`` (64, /2), ``layer1`` (256, /4) ... ``layer4`` (2048, /32).

:class:`FeatureExtractor` returns the chosen stages' outputs, captured by forward hooks while the
model's own ``forward_features`` runs, and stops the pass after the last one it needs. It holds the
model's modules under their own names, so its ``state_dict`` keys are the classifier's minus the head.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from excite.core.errors import ExciteError

__all__ = ["FeatureExtractor", "feature_info"]

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d)


def _top_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a stage can end at: the children of ``model.features`` when it is a Sequential (the
    torchvision layout of MobileNet, EfficientNet, DenseNet ...), the model's children with ``blocks``
    opened into its stages (timm's layout: MobileNet v1), else the model's children."""
    body = getattr(model, "features", None)
    if isinstance(body, nn.Sequential):
        return [(f"features.{n}", m) for n, m in body.named_children()]
    if isinstance(getattr(model, "blocks", None), nn.Sequential):  # timm's layout: stem, blocks.<stage>, head
        out = []
        for name, child in model.named_children():
            out += [(f"blocks.{n}", m) for n, m in child.named_children()] if name == "blocks" else [(name, child)]
        return out
    return list(model.named_children())


def _run_body(model: nn.Module, x):
    fn = getattr(model, "forward_features", None)
    return fn(x) if callable(fn) else model(x)


def feature_info(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> list[dict]:
    """The stages of ``model``: ``[{"module", "num_chs", "reduction", "index"}, ...]`` from input to output.

    Found by one forward pass on meta tensors (the model is not changed). The probe's side is a power of
    two at least the model's input size, so every reduction divides it exactly.
    """
    if isinstance(getattr(model, "feature_info", None), list):  # a features_only model knows its outputs
        return [dict(d) for d in model.feature_info]
    c, h, w = tuple(input_size or getattr(model, "default_input_size", None) or (3, 224, 224))
    side = 1 << max(5, math.ceil(math.log2(max(h, w))))
    tops = _top_modules(model)
    names = {id(m): n for n, m in tops}
    calls: list[tuple[str, tuple]] = []
    hooks = []
    for n, m in tops:
        if isinstance(m, _GLOBAL_POOLS):
            continue
        hooks.append(m.register_forward_hook(
            lambda mod, args, out: calls.append((names[id(mod)], tuple(out.shape)))
            if isinstance(out, torch.Tensor) else None))
    state = {k: torch.empty_like(v, device="meta") for k, v in
             [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no stochastic depth or dropout paths in the probe
    try:
        with torch.no_grad(), _reparametrize_module(model, state, strict=False):
            _run_body(model, torch.empty(1, c, side, side, device="meta"))
    finally:
        for hk in hooks:
            hk.remove()
        for m, mode in modes.items():
            m.training = mode
    seen: dict[str, int] = {}
    for n, _ in calls:
        seen[n] = seen.get(n, 0) + 1
    stages: list[dict] = []
    for n, shape in calls:
        if seen[n] > 1 or len(shape) != 4:  # a module run twice (a shared activation) ends no stage
            continue
        red = side // shape[2] if shape[2] else 0
        if stages and stages[-1]["reduction"] == red:
            stages[-1].update(module=n, num_chs=shape[1])
        elif not stages or red > stages[-1]["reduction"]:
            stages.append({"module": n, "num_chs": shape[1], "reduction": red})
    if not stages:
        raise ExciteError(f"found no feature stages in {type(model).__name__}: no top-level module returns a 4-D map")
    for i, s in enumerate(stages):
        s["index"] = i
    return stages


def _stage_name(stage: dict) -> str:
    return f"{stage['module']}/{stage['reduction']}"


class _Stop(Exception):
    """Raised by the last wanted hook: nothing after it needs computing."""


class _Capture:
    """Forward hook on a stage's last module: keep its output; the deepest wanted stage stops the pass.

    A module-level class (not a closure), so a deep copy of the extractor captures into the copy."""

    def __init__(self, extractor: "FeatureExtractor", name: str, last: bool):
        self.extractor, self.name, self.last = extractor, name, last

    def __call__(self, module, args, out):
        captured = self.extractor._captured
        if captured is None:  # the model called outside the extractor: nothing to capture
            return None
        captured[self.name] = out
        if self.last:
            raise _Stop
        return None


class FeatureExtractor(nn.Module):
    """The feature maps of ``model``'s stages ``out_indices`` (a list, shallow to deep).

    ``feature_info`` lists the returned stages (module, channels, reduction); ``channels()`` and
    ``reduction()`` are short forms. The classifier is removed (``reset_classifier(0)``), so every
    parameter is used and gets a gradient.
    """

    def __init__(self, model: nn.Module, out_indices=None, *, info: list[dict] | None = None):
        super().__init__()
        info = info if info is not None else feature_info(model)
        if out_indices is None:
            out_indices = list(range(len(info)))
        out_indices = list(out_indices)
        bad = [i for i in out_indices if not isinstance(i, int) or not -len(info) <= i < len(info)]
        if bad or not out_indices:
            raise ExciteError(f"out_indices={out_indices!r}: {type(model).__name__} has {len(info)} stages "
                              f"(0..{len(info) - 1}: {', '.join(_stage_name(s) for s in info)})")
        out_indices = sorted({i % len(info) for i in out_indices})
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)
        # The model's modules under their own names: state_dict keys stay those of the classifier.
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        object.__setattr__(self, "_base", model)  # not a submodule: its modules are already ours
        self.out_indices = out_indices
        self.feature_info = [dict(info[i]) for i in out_indices]
        self.default_input_size = getattr(model, "default_input_size", (3, 224, 224))
        self._captured: dict | None = None
        wanted = [s["module"] for s in self.feature_info]
        for k, name in enumerate(wanted):
            model.get_submodule(name).register_forward_hook(_Capture(self, name, last=k == len(wanted) - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._captured = {}
        try:
            _run_body(self._base, x)
        except _Stop:
            pass
        finally:
            captured, self._captured = self._captured, None
        return [captured[s["module"]] for s in self.feature_info]

    def channels(self) -> list[int]:
        return [s["num_chs"] for s in self.feature_info]

    def reduction(self) -> list[int]:
        return [s["reduction"] for s in self.feature_info]

    def train(self, mode: bool = True):
        super().train(mode)
        self._base.training = mode
        return self
