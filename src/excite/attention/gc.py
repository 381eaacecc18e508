"""Global context block (Cao et al., GCNet, ICCVW 2019 / TPAMI 2020; reference code xvjiarui/GCNet).

Context modelling: a 1x1 conv C -> 1 and a softmax over positions give one attention-pooled
C-vector per image (the query-independent non-local block); transform: a bottleneck 1x1 conv C -> C/r,
LayerNorm, ReLU, 1x1 conv C/r -> C; fusion: added to every position (``"add"``, the paper's default) or
as a sigmoid gate (``"scale"``), or both. The key layout follows timm's ``GlobalContext``
(``conv_attn``, ``mlp_add`` / ``mlp_scale`` with ``fc1``, ``norm``, ``fc2``), so timm's ``gc`` (scale) and
``gca`` (add) weights load.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.errors import ExciteError
from excite.core.registry import register_attention
from excite.attention.layers import reduced

FUSIONS = ("add", "scale", "both")


class _ContextMlp(nn.Module):
    """1x1 conv C -> rd, LayerNorm over the rd channels, ReLU, 1x1 conv rd -> C."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.norm = nn.LayerNorm(hidden)  # on a (B, rd, 1, 1) map: GCNet's LayerNorm([rd, 1, 1])
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x)
        y = self.norm(y.flatten(1)).view_as(y)
        return self.fc2(self.act(y))


@register_attention("gc")
class GlobalContext(nn.Module):
    """GC block: attention pooling, bottleneck transform, additive and/or multiplicative fusion.

    Args:
        channels: C.
        reduction: r of the bottleneck (GCNet: 16 for its ImageNet and COCO results, also 4; timm: 8).
        fusion: ``"add"`` (GCNet's channel_add, its best), ``"scale"`` (channel_mul) or ``"both"``.
    """

    paper = "Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, ICCVW 2019"
    kind = "context"
    dim_reduction = True
    interaction = "global"
    params_formula = "C + 1 + f (2C^2/r + C + 3C/r), f = fusion branches"

    def __init__(self, channels: int, reduction: float = 16, *, fusion: str = "add"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ExciteError(f"fusion={fusion!r} is not valid; expected one of {', '.join(FUSIONS)}")
        self.fusion = fusion
        hidden = reduced("reduction", channels, reduction)
        self.conv_attn = nn.Conv2d(channels, 1, 1)
        self.mlp_add = _ContextMlp(channels, hidden) if fusion in ("add", "both") else None
        self.mlp_scale = _ContextMlp(channels, hidden) if fusion in ("scale", "both") else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: He (fan_in) for the mask conv, the last conv of each fusion branch zero
        (``last_zero_init``), so the additive branch starts as the identity."""
        nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_attn.bias)
        for mlp in (self.mlp_add, self.mlp_scale):
            if mlp is not None:
                mlp.fc1.reset_parameters()
                mlp.norm.reset_parameters()
                nn.init.zeros_(mlp.fc2.weight)
                nn.init.zeros_(mlp.fc2.bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) attention-pooled context: sum over positions of x weighted by softmax(conv(x))."""
        b, c, h, w = x.shape
        attn = torch.softmax(self.conv_attn(x).reshape(b, 1, h * w), dim=-1)  # (B, 1, HW)
        return torch.bmm(x.reshape(b, c, h * w), attn.transpose(1, 2)).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context(x)
        out = x
        if self.mlp_scale is not None:
            out = out * torch.sigmoid(self.mlp_scale(ctx))
        if self.mlp_add is not None:
            out = out + self.mlp_add(ctx)
        return out
