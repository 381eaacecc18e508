"""Load the checkpoints people already have, safely, into excite models; convert them to safetensors.

Reading is safe by construction: pickled formats (``.pth``, ``.pth.tar``, ``.th``, ``.pt``) go only through
``torch.load(weights_only=True)``, whose restricted unpickler refuses any global outside tensors and
containers *before* calling it, so a crafted pickle cannot run code. ``.safetensors`` holds no code at all.

Name mapping is a short list of rules per source (mechanism: rename, then check every shape; policy:
the rules below). The project's backbones use torchvision's keys and keep their attention at
``<block>.attn``; timm calls the same module ``<block>.se`` and the official ECA-Net code
``<block>.eca``, both sometimes behind DataParallel's ``module.`` prefix. timm's MobileNetV2 and
EfficientNet name layers by role (``conv_stem``, ``blocks.S.B.conv_dw``, ``se.conv_reduce``) where
torchvision numbers them; those keys are mapped by role within each block (see ``_TIMM_LAYOUTS``).
The SE code of the SENet notes (``senet-fc``) keeps its two layers in a Sequential of Linear layers,
``<block>.se.fc.0`` / ``.fc.2`` with 2-D weights: renamed to ``attn.fc1`` / ``attn.fc2`` and viewed as
the 1x1 convolutions they are (a Linear on the pooled vector is a 1x1 conv on the 1x1 map).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from excite.core.errors import ExciteError, expect_module
from excite.files.modelfile import PICKLE_SUFFIXES, read_model_file, read_state_dict, unwrap  # noqa: F401  (re-exported)

SOURCES = ("auto", "excite", "torchvision", "timm", "eca-official", "cifar-resnet", "senet-fc")

# (pattern, replacement) pairs applied in order to every key, per source.
_PREFIX = [(r"^module\.", "")]  # nn.DataParallel / DistributedDataParallel
_RULES: dict[str, list[tuple[str, str]]] = {
    "excite": _PREFIX,
    "torchvision": _PREFIX,
    # timm keeps every block attention at `.se`; its CBAM wraps the spatial conv+bn in a ConvNormAct.
    "timm": _PREFIX + [
        (r"\.se\.spatial\.conv\.conv\.", ".attn.spatial.conv."),
        (r"\.se\.spatial\.conv\.bn\.", ".attn.spatial.bn."),
        (r"\.se\.", ".attn."),
    ],
    # BangguWu/ECANet: `layerX.Y.eca.conv.weight` (Conv1d, k per stage).
    "eca-official": _PREFIX + [(r"\.eca\.", ".attn.")],
    # akamaster/pytorch_resnet_cifar10: `module.` prefix, classifier `linear`.
    "cifar-resnet": _PREFIX + [(r"^linear\.", "fc.")],
    # The SENet notes' SE: `se.fc = Sequential(Linear(C, C/r), ReLU, Linear(C/r, C), gate)`.
    "senet-fc": _PREFIX + [(r"\.(?:se|attn)\.fc\.0\.", ".attn.fc1."), (r"\.(?:se|attn)\.fc\.2\.", ".attn.fc2.")],
}
_SE_FC = re.compile(r"\.(?:se|attn)\.fc\.[02]\.weight$")
_SE_CONV_WEIGHT = re.compile(r"\.attn\.fc[12]\.weight$")


def detect_source(keys) -> str:
    """Guess the source of a checkpoint from its key names."""
    keys = list(keys)
    if any(re.search(r"(^|\.)linear\.weight$", k) for k in keys) and any("layer3" in k for k in keys):
        return "cifar-resnet"
    if any(_SE_FC.search(k) for k in keys):
        return "senet-fc"
    if any(".eca." in k for k in keys):
        return "eca-official"
    if any(".se." in k for k in keys) or _is_timm_mobile(keys):
        return "timm"
    return "excite"


# --- timm MobileNetV2 / EfficientNet -> torchvision layout ----------------------------------------------
# timm names layers by role (`conv_stem`, `blocks.S.B.conv_dw`, `conv_head`); torchvision, and so this
# project, by position in nn.Sequentials (`features.I...`). Both list the same layers in the same order, so
# the map is by role within each block. Two block kinds (timm `_efficientnet_blocks.py`):
# DepthwiseSeparable (dw -> SE -> pointwise projection; the first stage, expansion 1) and InvertedResidual
# (pointwise expansion -> dw -> SE -> pointwise-linear projection).
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(\w+?)\.(.+)$")
_TIMM_LAYOUTS = {
    # torchvision EfficientNet: features.<stage+1>.<block>.block.<i>, each conv a Conv2dNormActivation
    # (.0 conv, .1 bn); SqueezeExcitation(fc1, fc2) sits between the depthwise conv and the projection.
    "efficientnet": {
        "ds": {"conv_dw": "block.0.0", "bn1": "block.0.1", "se": "block.1", "conv_pw": "block.2.0", "bn2": "block.2.1"},
        "ir": {"conv_pw": "block.0.0", "bn1": "block.0.1", "conv_dw": "block.1.0", "bn2": "block.1.1",
               "se": "block.2", "conv_pwl": "block.3.0", "bn3": "block.3.1"},
    },
    # torchvision MobileNetV2: blocks numbered through all stages (features.1 ... features.17); the
    # projection conv and its bn are bare (`conv.2`, `conv.3`); this project keeps attention after them.
    # timm's MobileNetV2 variants with SE put it after the depthwise conv, on the expanded channels,
    # where this layout has no slot: such keys stay unmapped and are reported, never loaded by guess.
    "mobilenetv2": {
        "ds": {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"},
        "ir": {"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1",
               "conv_pwl": "conv.2", "bn3": "conv.3"},
    },
}
# timm's SqueezeExcite names its two 1x1 convs (both with bias) conv_reduce / conv_expand; torchvision's
# SqueezeExcitation and this project's SE call the same convs fc1 / fc2.
_TIMM_SE = {"conv_reduce": "fc1", "conv_expand": "fc2"}


def _is_timm_mobile(keys) -> bool:
    keys = list(keys)
    return any(k.startswith("conv_stem.") for k in keys) and any(k.startswith("blocks.") for k in keys)


def _timm_layout(state, target) -> str:
    """Which torchvision layout the timm keys go to: the target model's if known, else by SE presence."""
    if target is not None:
        if any(re.match(r"^features\.\d+\.\d+\.block\.", k) for k in target):
            return "efficientnet"
        if any(re.match(r"^features\.\d+\.conv\.", k) for k in target):
            return "mobilenetv2"
    return "efficientnet" if any(".se." in k for k in state) else "mobilenetv2"


def _map_timm_mobile(state: dict, layout: str) -> dict:
    """Rename timm MobileNetV2 / EfficientNet keys to torchvision's; unknown layers keep their names."""
    roles: dict[tuple[int, int], set] = {}
    for k in state:
        m = _TIMM_BLOCK.match(k)
        if m:
            roles.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    stages = sorted({s for s, _ in roles})
    depth = {s: 1 + max(b for t, b in roles if t == s) for s in stages}
    # MobileNetV2 numbers blocks through all stages: block b of stage s is features.<1 + blocks before s + b>.
    offset, run = {}, 1
    for s in stages:
        offset[s], run = run, run + depth[s]
    head = (len(stages) + 1) if layout == "efficientnet" else run
    out = {}
    for key, value in state.items():
        new = key
        m = _TIMM_BLOCK.match(key)
        if m:
            s, b, role, rest = int(m[1]), int(m[2]), m[3], m[4]
            kind = "ir" if "conv_pwl" in roles[(s, b)] else "ds"
            slot = _TIMM_LAYOUTS[layout][kind].get(role)
            if slot is not None:
                if role == "se":
                    first, _, tail = rest.partition(".")
                    rest = f"{_TIMM_SE.get(first, first)}.{tail}" if tail else rest
                block = f"features.{s + 1}.{b}" if layout == "efficientnet" else f"features.{offset[s] + b}"
                new = f"{block}.{slot}.{rest}"
        else:
            for pat, rep in ((r"^conv_stem\.", "features.0.0."), (r"^bn1\.", "features.0.1."),
                             (r"^conv_head\.", f"features.{head}.0."), (r"^bn2\.", f"features.{head}.1."),
                             (r"^classifier\.", "classifier.1.")):  # torchvision: Sequential(Dropout, Linear)
                if re.match(pat, key):
                    new = re.sub(pat, rep, key)
                    break
        out[new] = value
    return out


def map_keys(state: dict[str, torch.Tensor], source: str, *, target=None) -> dict[str, torch.Tensor]:
    """Rename the keys of ``state`` from ``source`` naming to excite naming.

    ``target``: the receiving model's keys, when known; they pick between the two torchvision layouts a
    timm MobileNetV2 / EfficientNet checkpoint can map to.
    """
    if source == "timm":
        stripped = {re.sub(_PREFIX[0][0], _PREFIX[0][1], k): v for k, v in state.items()}
        if _is_timm_mobile(stripped):
            return _map_timm_mobile(stripped, _timm_layout(stripped, target))
    rules = [(re.compile(p), r) for p, r in _RULES[source]]
    out = {}
    for key, value in state.items():
        new = key
        for pat, rep in rules:
            new = pat.sub(rep, new)
        if source == "senet-fc" and value.dim() == 2 and _SE_CONV_WEIGHT.search(new):
            value = value.reshape(*value.shape, 1, 1)  # Linear (out, in) -> 1x1 conv (out, in, 1, 1)
        out[new] = value
    return out


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, by_position: bool = True):
    """Compare ``state`` with the model's: ``(missing, unexpected, mismatched)`` key lists.

    Keys still unmatched after renaming are paired *by position* when both sides list the same number of
    tensors with the same shapes in the same order: that covers attention placed at a different
    submodule name (the official ECA MobileNetV2 keeps ECA at ``conv.4``) without a rule per model.
    """
    target = model.state_dict()
    # BatchNorm's step counter is absent from checkpoints saved before PyTorch 0.4.1 (the akamaster CIFAR
    # ResNets); BatchNorm itself accepts that, and it does not affect the computed function.
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if by_position and missing and len(missing) == len(unexpected):
        if all(tuple(target[m].shape) == tuple(state[u].shape) for m, u in zip(missing, unexpected)):
            for m, u in zip(missing, unexpected):
                state[m] = state.pop(u)
            missing, unexpected = [], []
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    return missing, unexpected, mismatched


def _listing(title: str, items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
    return f"{len(items)} {title}: {shown}"


def load_checkpoint(model: nn.Module, path: str | Path, *, source: str = "auto", strict: bool = True) -> dict:
    """Load weights from ``path`` into ``model`` in place, mapping key names from ``source``.

    Args:
        model: any ``nn.Module`` (an excite model for the non-``excite`` sources).
        path: ``.safetensors`` or a pickled ``.pth`` / ``.pth.tar`` / ``.th`` / ``.pt`` file (read with
            ``torch.load(weights_only=True)``; a pickle that would run code is refused).
        source: ``"excite"``, ``"torchvision"``, ``"timm"``, ``"eca-official"``, ``"cifar-resnet"``,
            ``"senet-fc"`` (the SENet notes' ``se.fc.0`` / ``se.fc.2``) or ``"auto"`` (guessed from the key names).
        strict: raise unless every key matches with the right shape. With ``strict=False`` the matching
            tensors are loaded and the rest reported.

    Returns:
        ``{"source", "loaded", "missing", "unexpected", "mismatched"}``.

    Raises:
        ExciteError: one message listing missing, unexpected and mismatched keys.
    """
    expect_module(model, "load_checkpoint")
    if source not in SOURCES:
        raise ExciteError(f"unknown checkpoint source {source!r}; valid: {', '.join(SOURCES)}")
    state = dict(read_model_file(path).tensors)  # any format: excite files, old ones, other projects'
    if source == "auto":
        # Keys that already fit need no renaming (an excite model may itself hold a `.se.` key).
        fits = not any(match_state_dict(model, map_keys(state, "excite"), by_position=False))
        source = "excite" if fits else detect_source(state)
    state = map_keys(state, source, target=model.state_dict().keys())
    missing, unexpected, mismatched = match_state_dict(model, state)
    if strict and (missing or unexpected or mismatched):
        parts = [_listing(t, x) for t, x in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if x]
        raise ExciteError(f"{path} (source {source}) does not fit {type(model).__name__}: " + "; ".join(parts))
    bad = {m.split(" ")[0] for m in mismatched}
    loadable = {k: v for k, v in state.items() if k not in bad and k not in unexpected}
    model.load_state_dict(loadable, strict=False)
    return dict(source=source, loaded=len(loadable), missing=missing, unexpected=unexpected, mismatched=mismatched)
