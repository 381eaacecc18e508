"""timm's two ECA variants, which differ from the ECA-Net paper's module (:mod:`excite.attention.eca`).

* ``ceca``: ECA with circular padding of the channel axis (the first and last channels are neighbours);
  same k parameters.
* ``ecam``: the 1D convolution replaced by a small MLP over the channel axis, Conv1d(1, rd, 1) -> ReLU ->
  Conv1d(rd, 1, k), rd = C/8 rounded to a multiple of 8; a timm experiment, not in the paper.

Both take k from the channel count with timm's rule (the paper's, floored at 3), and use timm's keys
(``conv``, ``conv2``), so timm weights load.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention
from excite.attention.eca import _resolve_k
from excite.attention.layers import make_divisible


def timm_kernel_size(channels: int, k_size, gamma: float, b: float) -> int:
    """The ECA-Net rule with timm's floor of 3 (only C < 8 differs from the paper)."""
    k = _resolve_k(channels, k_size, gamma, b)
    return max(k, 3) if k_size == "adaptive" else k


@register_attention("ceca")
class CircularECA(ChannelAttention):
    """ECA with circular padding across channels (k parameters)."""

    paper = "Wang et al., ECA-Net, CVPR 2020 (circular padding: timm's CecaModule)"
    kind = "channel"
    dim_reduction = False
    interaction = "local (circular)"
    params_formula = "k"

    def __init__(self, channels: int, k_size: int | str = "adaptive", *, gamma: float = 2, b: float = 1):
        super().__init__()
        self.k_size = timm_kernel_size(channels, k_size, gamma, b)
        self.conv = nn.Conv1d(1, 1, self.k_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Conv1d init (as ECA's reference code)."""
        self.conv.reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C)
        p = (self.k_size - 1) // 2
        # Circular padding by concatenation: exports to every ONNX opset (Pad "wrap" needs opset 19).
        s = torch.cat([s[..., s.shape[-1] - p:], s, s[..., :p]], dim=-1) if p else s
        return torch.sigmoid(self.conv(s)).squeeze(1)[:, :, None, None]


@register_attention("ecam")
class ECAMlp(ChannelAttention):
    """ECA whose 1D conv is an MLP across channels: 2 rd + rd k + 1 parameters."""

    paper = "timm's EcaModule(use_mlp=True), an extension of ECA-Net (Wang et al., CVPR 2020)"
    kind = "channel"
    dim_reduction = False
    interaction = "local"
    params_formula = "2rd + rd k + 1 (rd = C/8)"

    def __init__(self, channels: int, k_size: int | str = "adaptive", *, gamma: float = 2, b: float = 1,
                 rd_ratio: float = 1 / 8, rd_divisor: int = 8):
        super().__init__()
        self.k_size = timm_kernel_size(channels, k_size, gamma, b)
        rd = make_divisible(channels * rd_ratio, rd_divisor)
        self.conv = nn.Conv1d(1, rd, 1, bias=True)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv1d(rd, 1, self.k_size, padding=(self.k_size - 1) // 2, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Conv1d init (timm keeps it)."""
        self.conv.reset_parameters()
        self.conv2.reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C)
        return torch.sigmoid(self.conv2(self.act(self.conv(s)))).squeeze(1)[:, :, None, None]
