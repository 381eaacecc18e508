"""Draw the documentation's diagrams from the networks themselves (matplotlib).

    python docs/gen_figures.py    # writes docs/img/attention-placement.png and docs/img/stage-cost.png

* ``attention-placement.png``: for one block of each family, the layers in the order they ran on a
  small input, with the tensor operations between them (the residual addition, a concatenation, the
  channel shuffle) and the attention module highlighted. Nothing is drawn from a list: the order is
  recorded with forward hooks and a ``TorchFunctionMode`` during one real forward pass.
* ``stage-cost.png``: what SE, ECA and CBAM add to ResNet-50 (parameters, MACs, memory traffic), per
  stage, from ``excite.profile``'s per-module totals.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import excite  # noqa: E402
from excite.attention import find_attention  # noqa: E402

IMG = Path(__file__).resolve().parent / "img"

# (title, model name, the block to draw, input side): one block of each kind of block excite builds.
BLOCKS = [
    ("ResNet basic block (ResNet-18/34, CIFAR ResNets)", "resnet18", "layer1.0", 64),
    ("ResNet bottleneck (ResNet-50+, ResNeXt, Wide ResNet)", "resnet50", "layer1.1", 64),
    ("MobileNetV2 inverted residual", "mobilenet_v2", "features.3", 64),
    ("EfficientNet MBConv (its own SE replaced)", "efficientnet_b0", "features.2.1", 64),
    ("DenseNet dense layer", "densenet121", "features.denseblock1.denselayer1", 64),
    ("ShuffleNetV2 unit", "shufflenet_v2_x1_0", "stage2.1", 64),
]

# Tensor operations worth a mark in the diagram, as the symbol drawn for each.
OPS = {"add": "+", "__add__": "+", "add_": "+", "__iadd__": "+", "cat": "concat", "chunk": "split",
       "transpose": "shuffle", "addcmul": "+"}


def _label(module: nn.Module) -> str:
    """A short name for a layer: ``conv 3x3``, ``dw conv 3x3``, ``BN``, ``ReLU``, the attention's class."""
    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        depthwise = module.groups > 1 and module.groups == module.in_channels
        return f"{'dw ' if depthwise else ''}conv {k}"
    names = {nn.BatchNorm2d: "BN", nn.ReLU: "ReLU", nn.ReLU6: "ReLU6", nn.SiLU: "SiLU", nn.Hardswish: "h-swish"}
    for cls, name in names.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__


def trace_block(model: nn.Module, path: str, side: int) -> list[tuple[str, str]]:
    """``[(kind, label), ...]`` in execution order inside ``model.<path>``: kind is ``layer``,
    ``attention`` or ``op``."""
    block = model.get_submodule(path)
    attention = {id(m) for _, m in find_attention(block)}  # tagged by make_attention, found the one way
    events: list[tuple[str, str]] = []
    state = {"in_block": 0, "in_leaf": 0}

    def leafs(m: nn.Module):
        for child in m.children():
            if id(child) in attention or not list(child.children()):
                yield child
            else:
                yield from leafs(child)

    handles = [block.register_forward_pre_hook(lambda m, a: state.__setitem__("in_block", 1)),
               block.register_forward_hook(lambda m, a, o: state.__setitem__("in_block", 0))]
    for leaf in leafs(block):
        kind = "attention" if id(leaf) in attention else "layer"

        def pre(m, a, kind=kind):
            if state["in_block"] and not state["in_leaf"]:
                events.append((kind, "attention\n" + type(m).__name__ if kind == "attention" else _label(m)))
            state["in_leaf"] += 1

        def post(m, a, o):
            state["in_leaf"] -= 1

        handles += [leaf.register_forward_pre_hook(pre), leaf.register_forward_hook(post)]

    class Ops(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if state["in_block"] and not state["in_leaf"] and name in OPS:
                if not (events and events[-1] == ("op", OPS[name])):
                    events.append(("op", OPS[name]))
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Ops():
            model.eval()(torch.randn(1, 3, side, side))
    finally:
        for h in handles:
            h.remove()
    return events


def placement_figure(path: Path) -> None:
    rows = []
    for title, name, block, side in BLOCKS:
        model = excite.create_model(name, attention="se")
        rows.append((f"{title}: {name}.{block}", trace_block(model, block, side)))
    width = max(len(ev) for _, ev in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.25 * width + 1, 1.15 * len(rows)))
    for ax, (title, events) in zip(axes, rows):
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylim(-0.6, 0.75)
        ax.axis("off")
        ax.set_title(title, loc="left", fontsize=10)
        for i, (kind, label) in enumerate(events):
            if i:
                ax.annotate("", xy=(i - 0.45, 0), xytext=(i - 0.6, 0), arrowprops=dict(arrowstyle="->", lw=0.8))
            if kind == "op":
                ax.add_patch(plt.Circle((i, 0), 0.28, fc="#e8e8e8", ec="#555"))
                ax.text(i, 0, label, ha="center", va="center", fontsize=8 if len(label) > 1 else 13)
                continue
            color = "#f5a623" if kind == "attention" else "#dce9f5"
            ax.add_patch(FancyBboxPatch((i - 0.42, -0.3), 0.84, 0.6, boxstyle="round,pad=0.02",
                                        fc=color, ec="#b36b00" if kind == "attention" else "#4a78a8"))
            ax.text(i, 0, label, ha="center", va="center", fontsize=7.5,
                    fontweight="bold" if kind == "attention" else "normal")
    fig.suptitle("Where excite puts attention (orange) in each block type, in the order the block runs "
                 "(+: the residual addition)", fontsize=11, y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _stage_totals(model: nn.Module) -> dict[str, dict]:
    """Top-level stages of a ResNet: stem (everything before layer1), layer1-4, head."""
    p = excite.profile(model, input_size=(3, 224, 224))
    stages = {"stem": dict(params=0, macs=0, memory=0)}
    for name, totals in p.modules.items():
        if not name or "." in name:
            continue
        key = name if name.startswith("layer") else ("head" if name in ("avgpool", "fc") else "stem")
        acc = stages.setdefault(key, dict(params=0, macs=0, memory=0))
        for k in acc:
            acc[k] += totals.get(k, 0)
    return stages


def stage_cost_figure(path: Path) -> None:
    base = _stage_totals(excite.create_model("resnet50"))
    order = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    what = [("params", "parameters added (thousands)", 1e3), ("macs", "MACs added (millions)", 1e6),
            ("memory", "memory traffic added (MB)", 1e6)]
    attentions = ["se", "eca", "cbam"]
    for j, att in enumerate(attentions):
        stages = _stage_totals(excite.create_model("resnet50", attention=att))
        for ax, (key, label, scale) in zip(axes, what):
            ys = [(stages[s][key] - base[s][key]) / scale for s in order]
            ax.bar([i + (j - 1) * 0.27 for i in range(len(order))], ys, width=0.27, label=att)
            ax.set_xticks(range(len(order)), order)
            ax.set_title(label, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0].legend(frameon=False)
    fig.suptitle("ResNet-50 at 224x224: what each attention module adds, stage by stage (excite.profile)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    IMG.mkdir(exist_ok=True)
    placement_figure(IMG / "attention-placement.png")
    stage_cost_figure(IMG / "stage-cost.png")
    print(f"wrote {IMG / 'attention-placement.png'} and {IMG / 'stage-cost.png'}")


if __name__ == "__main__":
    main()
