"""FcaNet: multi-spectral channel attention (Qin et al., ICCV 2021; reference code cfzd/FcaNet).

Global average pooling is the lowest frequency of the 2D DCT; FcaNet splits the channels into n
parts and pools part i with the DCT basis of frequency (u_i, v_i) instead, then runs SE's bias-free
MLP. The frequencies are the paper's selections (Sec. 4.2, Fig. 4) on a 7x7 grid, scaled to the DCT size:
``top16`` (the best 16 frequencies found one by one, the released models), ``low16``, ``bot16``, and
their first 1, 2, 4, 8 or 32 entries. The DCT filters are a fixed buffer, not parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention
from excite.attention.layers import reduced

# The reference code's frequency tables (u, v on a 7x7 grid), in order of selection.
_TOP_U = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1]
_TOP_V = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3]
_LOW_U = [0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
_LOW_V = [0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3]
_BOT_U = [6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6]
_BOT_V = [6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3]
_TABLES = {"top": (_TOP_U, _TOP_V), "low": (_LOW_U, _LOW_V), "bot": (_BOT_U, _BOT_V)}
SELECTIONS = tuple(f"{k}{n}" for k in _TABLES for n in (1, 2, 4, 8, 16, 32))


def frequencies(selection: str) -> list[tuple[int, int]]:
    """The (u, v) pairs of a selection on the paper's 7x7 grid: ``frequencies("top2") == [(0, 0), (0, 1)]``."""
    if selection not in SELECTIONS:
        raise ExciteError(f"freq_sel={selection!r} is not valid; expected one of {', '.join(SELECTIONS)}")
    u, v = _TABLES[selection[:3]]
    n = int(selection[3:])
    return list(zip(u[:n], v[:n]))


def _basis(pos: int, freq: int, size: int) -> float:
    """Orthonormal DCT-II basis value (the reference code's ``build_filter``)."""
    value = math.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return value if freq == 0 else value * math.sqrt(2)


def dct_filters(channels: int, size: int, selection: str) -> torch.Tensor:
    """The ``(C, size, size)`` buffer: channel part i holds the 2D DCT basis of frequency i."""
    freqs = [(u * (size // 7), v * (size // 7)) for u, v in frequencies(selection)]
    part = channels // len(freqs)
    w = torch.zeros(channels, size, size, dtype=torch.float64)
    for i, (u, v) in enumerate(freqs):
        bu = torch.tensor([_basis(t, u, size) for t in range(size)], dtype=torch.float64)
        bv = torch.tensor([_basis(t, v, size) for t in range(size)], dtype=torch.float64)
        # The reference code requires C divisible by n; when it is not (MobileNet widths), the last
        # frequency also takes the remaining channels instead of leaving them unpooled.
        end = channels if i == len(freqs) - 1 else (i + 1) * part
        w[i * part:end] = bu[:, None] * bv[None, :]
    return w.float()


@register_attention("fca")
class FcaNet(ChannelAttention):
    """Multi-spectral channel attention: DCT pooling of C/n-channel parts, bias-free SE MLP, sigmoid.

    Args:
        channels: C (the reference code needs C divisible by the number of frequencies; otherwise the
            last frequency takes the remainder).
        reduction: MLP reduction r (16).
        freq_sel: frequency selection (``top16``, the released models; see ``SELECTIONS``).
        dct_size: side of the DCT grid, a multiple of 7 (the released ResNets use 56, 28, 14, 7 in
            stages 1-4: ``dct_size=[56, 28, 14, 7]``); larger maps are average-pooled to it first.
    """

    paper = "Qin et al., FcaNet: Frequency Channel Attention Networks, ICCV 2021"
    kind = "channel"
    dim_reduction = True
    interaction = "global"
    params_formula = "2C^2/r"

    def __init__(self, channels: int, reduction: float = 16, *, freq_sel: str = "top16", dct_size: int = 7):
        super().__init__()
        n = len(frequencies(freq_sel))
        check_range("dct_size", dct_size, low=7, integer=True)
        if dct_size % 7:
            raise ExciteError(f"dct_size={dct_size} is not valid; expected a multiple of 7 (the paper's 7x7 grid scaled)")
        if channels < n:
            raise ExciteError(f"freq_sel={freq_sel!r} splits channels into {n} parts; channels={channels} must be >= {n}")
        hidden = reduced("reduction", channels, reduction)
        self.dct_size = dct_size
        # The reference code's names (``dct_layer.weight``, ``fc.0`` / ``fc.2``); its two bias-free Linear
        # layers as 1x1 convs, the layout of every MLP here (a checkpoint's 2D weights reshape to them).
        self.dct_layer = _DCTPool(dct_filters(channels, dct_size, freq_sel))
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, channels, 1, bias=False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init of the reference code's two bias-free ``nn.Linear`` (the same bounds)."""
        self.fc[0].reset_parameters()
        self.fc[2].reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.dct_size, self.dct_size):
            x = F.adaptive_avg_pool2d(x, self.dct_size)
        return torch.sigmoid(self.fc(self.dct_layer(x)))


class _DCTPool(nn.Module):
    """Pools each channel with its fixed DCT basis: ``sum_hw x * basis`` (a buffer: not trained)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum((2, 3), keepdim=True)
