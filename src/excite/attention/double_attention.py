"""A^2-Net: the double attention block (Chen et al., NeurIPS 2018).

Step 1, feature gathering: c_m feature maps A = conv_A(x) are pooled with c_n attention maps
softmax_HW(conv_B(x)) into c_n global descriptors G = A softmax(B)^T (a second-order pooling);
step 2, feature distribution: every position takes a mix of the descriptors with its own attention
vector softmax_n(conv_V(x)); a 1x1 conv maps the c_m channels back to C, and the result is added to the
input (the block is residual, as the paper's Fig. 2). The authors released no code; the layout follows
the paper's Eq. 1-4 (1x1 convs with bias, ``convA``, ``convB``, ``convV``, ``conv_reconstruct``).
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.registry import register_attention
from excite.attention.layers import reduced


@register_attention("a2")
class DoubleAttention(nn.Module):
    """Double attention: gather c_n descriptors of c_m channels, distribute them, add to the input.

    Args:
        channels: C.
        reduction: c_m = c_n = C / reduction (4: the paper's blocks use a quarter of the channels).
        c_m, c_n: the widths given directly.
    """

    paper = "Chen et al., A^2-Nets: Double Attention Networks, NeurIPS 2018"
    kind = "context"
    dim_reduction = True
    interaction = "global (second-order)"
    params_formula = "C (c_m + 2 c_n) + c_m + 2 c_n + c_m C + C"

    def __init__(self, channels: int, reduction: float = 4, *, c_m: int | None = None, c_n: int | None = None):
        super().__init__()
        c_m = c_m or reduced("reduction", channels, reduction)
        c_n = c_n or reduced("reduction", channels, reduction)
        self.c_m, self.c_n = c_m, c_n
        self.convA = nn.Conv2d(channels, c_m, 1)
        self.convB = nn.Conv2d(channels, c_n, 1)
        self.convV = nn.Conv2d(channels, c_n, 1)
        self.conv_reconstruct = nn.Conv2d(c_m, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init (the paper names none)."""
        for m in (self.convA, self.convB, self.convV, self.conv_reconstruct):
            m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = self.convA(x).reshape(b, self.c_m, h * w)
        maps = torch.softmax(self.convB(x).reshape(b, self.c_n, h * w), dim=-1)  # attention over positions
        vecs = torch.softmax(self.convV(x).reshape(b, self.c_n, h * w), dim=1)  # attention over descriptors
        g = torch.bmm(a, maps.transpose(1, 2))  # (B, c_m, c_n): gathered global descriptors
        z = torch.bmm(g, vecs).reshape(b, self.c_m, h, w)  # distributed to every position
        return x + self.conv_reconstruct(z)
