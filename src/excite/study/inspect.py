"""``excite inspect``: what the attention modules do on a dataset.

For every block's attention module (``*.attn``) a forward hook records the effective per-channel
gain ``w_c = <out_c, in_c> / <in_c, in_c>`` (over the spatial positions), which is exactly the
excitation ``s_c`` for channel gates (SE, its variants, ECA) and an average gain for CBAM. Averaged
per class, these give the SENet paper's excitation analysis (Hu et al. 2019, Sec. 7.2, Fig. 6);
ECA's learned 1D kernels are plotted per stage (Wang et al. 2020, Sec. 4).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import torch
import torch.nn as nn


def record_attention(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean per-channel attention gain per class for every ``*.attn`` module: ``{name: [num_classes, C]}``."""
    sums, counts, hooks, current = {}, torch.zeros(num_classes), [], {}

    def hook(name):
        def fn(_mod, inp, out):
            x = inp[0].float()
            g = (out.float() * x).sum((2, 3)) / (x * x).sum((2, 3)).clamp_min(1e-12)  # [B, C]
            y = current["labels"]
            acc = sums.setdefault(name, torch.zeros(num_classes, g.shape[1]))
            acc.index_add_(0, y, g.detach().cpu())
        return fn

    for name, mod in model.named_modules():
        if name.endswith("attn") and not isinstance(mod, nn.Identity):
            hooks.append(mod.register_forward_hook(hook(name)))
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(labels), batch_size):
                current["labels"] = labels[i:i + batch_size]
                model(images[i:i + batch_size])
                counts += torch.bincount(current["labels"], minlength=num_classes).float()
    finally:
        for h in hooks:
            h.remove()
    return {k: v / counts.clamp_min(1)[:, None] for k, v in sums.items()}


def eca_kernels(model: nn.Module) -> dict[str, list[float]]:
    """The learned 1D kernels of ECA modules (a ``Conv1d`` inside each ``*.attn``), by module name."""
    out = {}
    for name, mod in model.named_modules():
        if name.endswith("attn"):
            for sub in mod.modules():
                if isinstance(sub, nn.Conv1d) and sub.weight.shape[0] == 1:
                    out[name] = sub.weight.detach().flatten().tolist()
    return out


def plot_inspection(gains: dict[str, torch.Tensor], kernels: dict[str, list[float]], out: str | Path) -> Path:
    """Write ``inspect.html`` (offline, embedded PNGs) and ``attention.json``: per-class excitation per block, ECA kernels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    imgs = []
    for name, g in gains.items():
        fig, ax = plt.subplots(figsize=(6, 3))
        for c in range(g.shape[0]):
            ax.plot(g[c].numpy(), lw=0.8, label=str(c))
        ax.set_title(f"{name}: mean excitation per channel, one line per class")
        ax.set_xlabel("channel index")
        ax.legend(fontsize=5, ncol=5)
        imgs.append((name, fig))
    if kernels:
        fig, ax = plt.subplots(figsize=(6, 3))
        for name, w in kernels.items():
            k = len(w)
            ax.plot(range(-(k // 2), k // 2 + 1), w, marker="o", label=name)
        ax.set_title("ECA learned 1D kernels")
        ax.set_xlabel("offset")
        ax.legend(fontsize=5)
        imgs.append(("ECA kernels", fig))
    parts = []
    for title, fig in imgs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        parts.append(f"<h2>{title}</h2><img src=\"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}\">")
    page = out / "inspect.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>excite inspect</title></head><body>"
                    + "\n".join(parts) + "</body></html>\n")
    import json

    (out / "attention.json").write_text(json.dumps({"gains": {k: v.tolist() for k, v in gains.items()},
                                                    "eca_kernels": kernels}) + "\n")
    return page
