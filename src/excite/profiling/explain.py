"""``excite explain``: a parameter count derived step by step, so that "how does ResNet-50 get
25,557,032 parameters" has an answer one can check with a pencil.

Each layer's count comes from its hyperparameters through the textbook formula, never from the tensor
sizes; the tensor sizes are then used to check the formulas (a mismatch is a bug and raises):

    convolution   K_h x K_w x C_in / groups x C_out  (+ C_out bias)
    batch norm    2C learnable (gamma, beta); 2C running statistics are buffers, not parameters
    linear        C_in x C_out (+ C_out bias)

For depthwise-separable convolutions (MobileNetV2, EfficientNet's MBConv) it compares the depthwise
K x K + pointwise 1x1 pair with the standard K x K convolution it replaces: the cost ratio is
1/C_out + 1/K^2 (MobileNetV2 paper, Sec. 3.1), in parameters and in MACs alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from torch import nn

from excite.core.errors import ExciteError
from excite.profiling import profile
from excite.profiling.report import _table

__all__ = ["Explanation", "explain", "layer_formula"]


def layer_formula(m: nn.Module) -> tuple[str, str, int] | None:
    """``(signature, formula, params)`` of one layer from its hyperparameters, or None when the
    module owns no parameters itself."""
    if isinstance(m, nn.modules.conv._ConvNd):
        k = "x".join(map(str, m.kernel_size))
        kp = 1
        for s in m.kernel_size:
            kp *= s
        g = m.groups
        n = kp * (m.in_channels // g) * m.out_channels + (m.out_channels if m.bias is not None else 0)
        sig = f"{type(m).__name__} {k}, {m.in_channels}->{m.out_channels}" + (f", groups {g}" if g > 1 else "")
        formula = f"{k.replace('x', ' x ')} x {m.in_channels}" + (f"/{g}" if g > 1 else "") + f" x {m.out_channels}"
        return sig + (" +bias" if m.bias is not None else ""), formula + (f" + {m.out_channels}" if m.bias is not None else ""), n
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        c = m.num_features
        n = 2 * c if m.affine else 0
        return f"{type(m).__name__} {c}", f"2 x {c}  (+ 2 x {c} running buffers)", n
    if isinstance(m, nn.Linear):
        n = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        sig = f"Linear {m.in_features}->{m.out_features}" + (" +bias" if m.bias is not None else "")
        return sig, f"{m.in_features} x {m.out_features}" + (f" + {m.out_features}" if m.bias is not None else ""), n
    own = list(m.named_parameters(recurse=False))
    if not own:
        return None
    shapes = ", ".join(f"{k} {'x'.join(map(str, p.shape))}" for k, p in own)
    return f"{type(m).__name__} {shapes}", " + ".join("x".join(map(str, p.shape)) for _, p in own), sum(p.numel() for _, p in own)


@dataclass
class Explanation:
    """Rows of the derivation: per layer kind, per stage and (for MBConv nets) separable vs standard."""

    name: str
    total: int
    layers: list = field(default_factory=list)  # (signature, formula, count, params each, subtotal)
    kinds: list = field(default_factory=list)  # (kind, subtotal)
    stages: list = field(default_factory=list)  # (stage, params)
    separable: list = field(default_factory=list)  # dicts, see _separable

    def to_dict(self) -> dict:
        return {"model": self.name, "params": self.total,
                "layers": [dict(zip(("layer", "formula", "count", "each", "subtotal"), r)) for r in self.layers],
                "kinds": dict(self.kinds), "stages": dict(self.stages), "separable": self.separable}

    def format(self, fmt_name: str = "table") -> str:
        if fmt_name == "json":
            return json.dumps(self.to_dict(), indent=2)
        t = "markdown" if fmt_name == "markdown" else "table"
        parts = [f"{self.name}: {self.total:,} parameters", "",
                 _table(("layer", "formula (each)", "count", "each", "subtotal"),
                        [(s, f, n, f"{e:,}", f"{st:,}") for s, f, n, e, st in self.layers], t), "",
                 "by layer kind: " + " + ".join(f"{k} {v:,}" for k, v in self.kinds) + f" = {self.total:,}", "",
                 _table(("stage", "params", "share"), [(s, f"{p:,}", f"{100 * p / self.total:.1f}%") for s, p in self.stages]
                        + [("total", f"{self.total:,}", "100.0%")], t)]
        if self.separable:
            rows = [(r["depthwise"], f"{r['k']}x{r['k']}", r["c_in"], r["c_out"], _side(r["hw"]), f"{r['sep_params']:,}",
                     f"{r['std_params']:,}", f"{r['sep_macs']:,}", f"{r['std_macs']:,}", f"{r['ratio']:.4f}")
                    for r in self.separable]
            sep = sum(r["sep_macs"] for r in self.separable)
            std = sum(r["std_macs"] for r in self.separable)
            parts += ["", "depthwise-separable (K x K depthwise + 1x1 pointwise) vs a standard K x K convolution:",
                      _table(("depthwise conv", "K", "C_in", "C_out", "HxW", "params sep", "params std", "MACs sep",
                              "MACs std", "ratio = 1/C_out + 1/K^2"), rows, t),
                      f"all blocks: {sep:,} MACs instead of {std:,} ({std / sep:.1f}x fewer)"]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()


def _side(hw: int) -> str:
    s = int(round(hw ** 0.5))
    return f"{s}x{s}" if s * s == hw else str(hw)


def _stages(model: nn.Module) -> list[tuple[str, int]]:
    """Top-level children with parameters; a ``features`` Sequential (MobileNetV2, EfficientNet) is
    opened one level, so its stages show."""
    out = []
    for name, child in model.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            out += [(f"features.{n}", sum(p.numel() for p in c.parameters())) for n, c in child.named_children()]
        else:
            out.append((name, sum(p.numel() for p in child.parameters())))
    own = sum(p.numel() for p in model.parameters(recurse=False))
    return ([("(model)", own)] if own else []) + [(n, p) for n, p in out if p]


def _separable(model: nn.Module, prof) -> list[dict]:
    """Depthwise K x K conv followed by the 1x1 conv that consumes it at the same resolution.

    Parameters and MACs come from the formulas; the tests check them against the layers' tensors
    and the profiler's per-module MACs."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    rows = []
    for i, (name, dw) in enumerate(convs):
        c = dw.in_channels
        if not (dw.groups == c == dw.out_channels and c > 1 and dw.kernel_size[0] > 1):
            continue
        hw = prof.modules.get(name, {}).get("macs", 0) // (dw.weight.numel() or 1)
        if hw <= 0:
            continue
        for pname, pw in convs[i + 1:]:
            pw_hw = prof.modules.get(pname, {}).get("macs", 0) // (pw.weight.numel() or 1)
            if pw.kernel_size == (1, 1) and pw.groups == 1 and pw.in_channels == c and pw_hw == hw:
                k, co = dw.kernel_size[0], pw.out_channels
                sep, std = k * k * c + c * co, k * k * c * co
                rows.append(dict(depthwise=name, pointwise=pname, k=k, c_in=c, c_out=co, hw=hw, sep_params=sep,
                                 std_params=std, sep_macs=sep * hw, std_macs=std * hw, ratio=sep / std))
                break
    return rows


def explain(model: nn.Module, input_size=(3, 224, 224), *, name: str | None = None) -> Explanation:
    """Derive the parameter count of ``model`` layer by layer (see the module docstring).

    ``input_size`` is used only for the MACs of the depthwise-separable comparison.
    """
    groups: dict[str, list] = {}
    kinds: dict[str, int] = {}
    seen = set()
    for _, m in model.named_modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        got = layer_formula(m)
        if got is None:
            continue
        sig, formula, n = got
        real = sum(p.numel() for p in m.parameters(recurse=False))
        if n != real:
            raise ExciteError(f"explain: the formula for {sig} gives {n:,} parameters but the layer has {real:,}")
        g = groups.setdefault(sig, [sig, formula, 0, n, 0])
        g[2] += 1
        g[4] += n
        kind = ("conv" if isinstance(m, nn.modules.conv._ConvNd) else "batchnorm"
                if isinstance(m, nn.modules.batchnorm._BatchNorm) else "linear" if isinstance(m, nn.Linear) else "other")
        kinds[kind] = kinds.get(kind, 0) + n
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if sum(kinds.values()) != total:
        raise ExciteError(f"explain: layers add up to {sum(kinds.values()):,}, the model has {total:,} parameters")
    stages = _stages(model)
    if sum(p for _, p in stages) != total:  # shared modules across stages would break the sum
        stages.append(("(shared between stages)", total - sum(p for _, p in stages)))
    sep = []
    if any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules()):
        sep = _separable(model, profile(model, input_size))
    return Explanation(name or type(model).__name__, total, list(groups.values()), sorted(kinds.items(), key=lambda kv: -kv[1]),
                       stages, sep)
