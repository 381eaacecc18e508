"""What every channel gate shares: ``attn(x) = x * channel_weights(x)``.

Keeping the weights separate from the multiply lets a residual block compute ``attn(x) + identity``
as one ``torch.addcmul`` pass instead of a multiply pass and an addition pass over the activation
(:meth:`rescale_add`); ``excite.optimize_for_inference`` switches blocks to that form.
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

    def rescale_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``self(x) + residual`` in one pass over the activation."""
        return torch.addcmul(residual, x, self.channel_weights(x))
