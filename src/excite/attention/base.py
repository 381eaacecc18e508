"""What every channel gate shares: ``attn(x) = x * channel_weights(x)``.

Keeping the weights separate from the multiply lets a residual block compute ``attn(x) + identity``
as one ``torch.addcmul`` pass instead of a multiply pass and an addition pass over the activation:
``attn(x, residual)``. ``excite.optimize_for_inference`` switches blocks to that form; going through
``__call__`` keeps hooks on the module (timing, profiling) working.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Base class of the channel gates (SE and its variants, ECA, ECA-NS)."""

    fuses_residual = True  # forward(x, residual) returns self(x) + residual in one pass

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) excitation in (0, 1) that scales ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        w = self.channel_weights(x)
        return x * w if residual is None else torch.addcmul(residual, x, w)
