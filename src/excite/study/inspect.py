"""``excite inspect``: what the attention modules do on a dataset.

For every block's attention module (``*.attn``) a forward hook records, per image, one value per
channel. For the channel gates (SE, its variants, ECA, ECA-NS: every
:class:`~excite.attention.base.ChannelAttention`) that is the excitation itself, the sigmoid output
``s_c`` in (0, 1) that scales channel ``c`` (``channel_weights``). For other modules (CBAM) it is the
effective per-channel gain ``w_c = <out_c, in_c> / <in_c, in_c>`` over the spatial positions.
Per-class means and standard deviations of these give the SENet paper's excitation analysis (Hu et
al. 2019, Sec. 7.2, Figs. 6-7: per class, per stage); ECA's learned 1D kernels are exported per
stage (Wang et al. 2020, Sec. 4).
"""

from __future__ import annotations

import base64
import html as _html
import io
import json
from pathlib import Path

import torch
import torch.nn as nn

from excite.attention import find_attention
from excite.attention.base import ChannelAttention
from excite.core.errors import ExciteError
from excite.data import load_dataset, normalize
from excite.factory import create_model, resolve_model
from excite.training.engine import check_fits


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return find_attention(model)


def stage_of(name: str) -> str:
    """The stage a block's attention belongs to: its path up to the block index
    (``layer2.1.attn`` -> ``layer2``, ``blocks.3.2.attn`` -> ``blocks.3``)."""
    parts = name.split(".")
    if parts and not parts[-1].isdigit():  # the slot's own name (``attn``, ``se``)
        parts = parts[:-1]
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    if idx and idx[-1] > 0:
        return ".".join(parts[:idx[-1]])
    return parts[0] if parts else name


def record_attention_stats(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                           batch_size: int = 64) -> dict:
    """Per-class statistics of every ``*.attn`` module's per-channel weights over ``images``.

    Returns ``{"mean": {name: [K, C]}, "std": {name: [K, C]}, "counts": [K], "kind": {name: "gate" |
    "gain"}, "stage": {name: stage}}``; ``kind`` says whether the values are the module's own gate
    (channel attention) or the effective gain (see the module docstring). Classes without images
    have zero counts and zero statistics.
    """
    mods = _attention_modules(model)
    if not mods:
        raise ExciteError(f"{type(model).__name__} has no attention modules to record")
    sums, sqs, hooks, current = {}, {}, [], {}
    counts = torch.zeros(num_classes)
    kind = {n: "gate" if isinstance(m, ChannelAttention) else "gain" for n, m in mods}

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0].float()
            if kind[name] == "gate":
                g = mod.channel_weights(inp[0]).float().flatten(1)  # [B, C]
            else:
                g = (out.float() * x).sum((2, 3)) / (x * x).sum((2, 3)).clamp_min(1e-12)
            g = g.detach().cpu().double()
            y = current["labels"]
            sums.setdefault(name, torch.zeros(num_classes, g.shape[1], dtype=torch.float64)).index_add_(0, y, g)
            sqs.setdefault(name, torch.zeros(num_classes, g.shape[1], dtype=torch.float64)).index_add_(0, y, g * g)
        return fn

    for name, mod in mods:
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
    missing = [n for n, _ in mods if n not in sums]
    if missing:
        raise ExciteError(f"attention modules {', '.join(missing)} were not called in the forward pass "
                          f"(inspect a model before excite.optimize_for_inference)")
    n = counts.double().clamp_min(1)[:, None]
    mean = {k: (v / n).float() for k, v in sums.items()}
    var = {k: (sqs[k] / n - (sums[k] / n) ** 2).clamp_min(0) for k in sums}
    return dict(mean=mean, std={k: v.sqrt().float() for k, v in var.items()}, counts=counts, kind=kind,
                stage={k: stage_of(k) for k in sums})


def record_attention(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean per-channel attention weight per class for every ``*.attn`` module: ``{name: [num_classes, C]}``."""
    return record_attention_stats(model, images, labels, num_classes, batch_size=batch_size)["mean"]


def eca_kernels(model: nn.Module) -> dict[str, list[float]]:
    """The learned 1D kernels of ECA modules (a ``Conv1d`` inside each ``*.attn``), by module name."""
    out = {}
    for name, mod in find_attention(model):
        for sub in mod.modules():
            if isinstance(sub, nn.Conv1d) and sub.weight.shape[0] == 1:
                out[name] = sub.weight.detach().flatten().tolist()
    return out


def eca_kernels_by_stage(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """ECA's learned kernels grouped by stage: ``{stage: {module name: kernel}}`` in network order."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, w in eca_kernels(model).items():
        out.setdefault(stage_of(name), {})[name] = w
    return out


def _figure_png(fig, path: Path | None = None) -> str:
    import matplotlib.pyplot as plt  # slow import, plots only

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _about_html(about: dict) -> str:
    """The page's heading: which model and which checkpoint the plots describe, on what data."""
    model = about.get("model", "model")
    att = about.get("attention") or "none"
    kw = about.get("attention_kwargs") or {}
    att_txt = att + (f" ({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")
    rows = [("model", model), ("attention", att_txt), ("checkpoint", about.get("checkpoint", "-")),
            ("data", f"{about.get('images', '?')} images of the {about.get('dataset', '?')} test split")]
    if about.get("top1") is not None:
        rows.append(("test top-1 when saved", f"{about['top1']:.2f}%" + (f" (seed {about['seed']})" if about.get("seed") is not None else "")))
    cells = "".join(f"<tr><th>{_html.escape(k)}</th><td>{_html.escape(str(v))}</td></tr>" for k, v in rows)
    return (f"<h1>Attention weights of {_html.escape(model)} with {_html.escape(att)}</h1>"
            f"<table class=\"about\">{cells}</table>")


def plot_inspection(gains, kernels: dict[str, list[float]], out: str | Path, *, about: dict | None = None) -> Path:
    """Write ``inspect.html`` (offline, embedded PNGs), ``excitation.png`` (the last block of every
    stage, one line per class, as SENet Fig. 7) and ``attention.json``; return the HTML path.

    ``gains`` is :func:`record_attention_stats`'s result or a plain ``{name: [K, C]}`` of means.
    ``about`` names what the page describes (model, attention, checkpoint, dataset, images, top1, seed).
    """
    import matplotlib  # slow import, plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # slow import, plots only

    stats = gains if isinstance(gains, dict) and "mean" in gains else dict(mean=gains)
    means = stats["mean"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"font.size": 10, "legend.fontsize": 8})
    parts = [_about_html(about or {})]
    last = {}
    for name in means:
        last[stage_of(name)] = name
    if last:
        fig, axes = plt.subplots(1, len(last), figsize=(4 * len(last), 3), squeeze=False)
        for ax, (stage, name) in zip(axes[0], last.items()):
            g = means[name]
            for c in range(g.shape[0]):
                ax.plot(g[c].numpy(), lw=0.8, label=str(c))
            ax.set_title(f"{stage} (last block: {name})", fontsize=8)
            ax.set_xlabel("channel index")
        axes[0][0].set_ylabel("mean excitation")
        axes[0][-1].legend(fontsize=8, ncol=2, title="class", title_fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5))
        b64 = _figure_png(fig, out / "excitation.png")
        parts.append(f"<h2>Excitation per class, last block of each stage</h2><img alt=\"excitation\" "
                     f"src=\"data:image/png;base64,{b64}\">")
    for name, g in means.items():
        fig, ax = plt.subplots(figsize=(6, 3))
        for c in range(g.shape[0]):
            ax.plot(g[c].numpy(), lw=0.8, label=str(c))
        ax.set_title(f"{name} ({stage_of(name)}): mean per channel, one line per class", fontsize=8)
        ax.set_xlabel("channel index")
        ax.set_ylabel("mean excitation")
        ax.legend(fontsize=8, ncol=2, title="class", loc="center left", bbox_to_anchor=(1.02, 0.5))
        parts.append(f"<h2>{_html.escape(name)}</h2><img alt=\"{_html.escape(name)}\" "
                     f"src=\"data:image/png;base64,{_figure_png(fig)}\">")
    if kernels:
        fig, ax = plt.subplots(figsize=(6, 3))
        for name, w in kernels.items():
            k = len(w)
            ax.plot(range(-(k // 2), k // 2 + 1), w, marker="o", label=name)
        ax.set_title("ECA learned 1D kernels")
        ax.set_xlabel("offset")
        ax.set_ylabel("weight")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        parts.append(f"<h2>ECA kernels</h2><img alt=\"ECA kernels\" src=\"data:image/png;base64,{_figure_png(fig)}\">")
    page = out / "inspect.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>excite inspect</title><style>"
                    "body{font-family:sans-serif;margin:2em}.about th{text-align:left;padding-right:1em}"
                    "img{max-width:100%}</style></head><body>"
                    + "\n".join(parts) + "</body></html>\n")
    by_stage: dict[str, dict[str, list[float]]] = {}
    for name, w in kernels.items():
        by_stage.setdefault(stage_of(name), {})[name] = w
    doc = {"mean": {k: v.tolist() for k, v in means.items()},
           "std": {k: v.tolist() for k, v in stats.get("std", {}).items()},
           "counts": stats["counts"].tolist() if "counts" in stats else None,
           "kind": stats.get("kind", {}), "stage": {k: stage_of(k) for k in means},
           "eca_kernels": by_stage}
    (out / "attention.json").write_text(json.dumps(doc) + "\n")
    return page


def inspect_checkpoint(checkpoint: str | Path, *, dataset: str = "digits", data: str | None = None,
                       model: str | None = None, attention: str | None = None, attention_kwargs: dict | None = None,
                       options: dict | None = None, limit: int = 512, out: str | Path = "inspect",
                       batch_size: int = 64) -> dict:
    """Record the attention weights of a trained model over the test split of ``dataset`` and plot them.

    ``checkpoint`` is a model reference, usually a model file (a study run's ``runs/<id>/model.safetensors``,
    a training run's ``best.safetensors``), which describes its own model; for bare weights, name the
    model with ``model`` / ``attention`` / ``attention_kwargs`` / ``options``.

    Returns ``{"stats": record_attention_stats(...), "eca_kernels": {stage: {module: kernel}},
    "page": inspect.html, "json": attention.json, "images": n, "labels": the n labels}``.
    """

    if limit < 1:
        raise ExciteError(f"limit={limit} is not valid; expected 1 or more images")
    _, test = load_dataset(dataset, data)
    if not hasattr(test, "images"):
        raise ExciteError(f"excite inspect reads in-memory datasets (digits, fashion-mnist, mnist, cifar10, cifar100); {dataset!r} is streamed")
    if model is not None:  # weights without a description: the caller names the model they belong to
        if not Path(checkpoint).exists():
            raise FileNotFoundError(2, "No such checkpoint", str(checkpoint))
        net = create_model(model, attention=attention, attention_kwargs=attention_kwargs, num_classes=test.num_classes,
                           checkpoint=str(checkpoint), **(options or {}))
    else:  # any model reference; a model file describes itself
        net = resolve_model(str(checkpoint))
    check_fits(net, test, str(checkpoint))
    n = min(limit, len(test))
    images = normalize(test.images[:n], test.mean, test.std)
    labels = test.labels[:n]
    stats = record_attention_stats(net, images, labels, test.num_classes, batch_size=batch_size)
    kernels = eca_kernels(net)
    spec = getattr(net, "excite_spec", None)
    info = getattr(net, "excite_file", None) or {}
    about = dict(model=spec.arch if spec else model, attention=spec.attention if spec else attention,
                 attention_kwargs=spec.attention_kwargs if spec else attention_kwargs, checkpoint=str(checkpoint),
                 dataset=dataset, images=n, top1=(info.get("metrics") or {}).get("top1"),
                 seed=(info.get("training") or {}).get("seed"))
    page = plot_inspection(stats, kernels, out, about=about)
    return dict(stats=stats, eca_kernels=eca_kernels_by_stage(net), page=page, json=Path(out) / "attention.json",
                images=n, labels=labels, model=net)
