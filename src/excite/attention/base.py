"""What every channel gate shares: ``attn(x) = x * channel_weights(x)``.

Keeping the weights separate from the multiply lets the fused training path
(:mod:`excite.attention.fused`) compute pool -> gate -> rescale in one autograd function, and the
inference rewrite (``excite.deploy.rewrite``) see the last multiply and merge it with the residual
addition that follows. The module itself only has ``forward(x)``.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Base class of the channel gates (SE and its variants, ECA, ECA-NS)."""

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) excitation in (0, 1) that scales ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)
