"""What every channel gate shares: ``attn(x) = x * channel_weights(x)``.

Keeping the weights separate from the multiply lets a residual block compute the rescale and its
addition as one ``addcmul`` (:func:`gated_add`), and the inference rewrite (``excite.models.rewrite``)
see the last multiply and merge it with the residual addition that follows. The module itself only
has ``forward(x)``.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module  # torch keeps global hooks here

from excite.attention.fused import LARGE, channel_scale, eager, mean_pool

__all__ = ["pointwise", "ChannelAttention", "gated_add", "hooked", "watched"]


@torch.fx.wrap
def pointwise(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution (``weight`` of shape (out, in, 1, 1)) of ``y``, as a matrix product when ``y``
    is a pooled (B, C, 1, 1) map. A gate's 1x1 convolutions keep their 4-D weights (the torchvision and
    timm key layout), but on a 1x1 map PyTorch's convolution costs 4x a matrix product in a training
    step (forward and backward: about 230 against 50 microseconds on this project's CPU at batch 32),
    and SE runs two per block."""
    if y.dim() == 4 and y.shape[2] == 1 and y.shape[3] == 1:
        return F.linear(y.flatten(1), weight.flatten(1), bias)[:, :, None, None]
    return F.conv2d(y, weight, bias)


class ChannelAttention(nn.Module):
    """Base class of the channel gates (SE and its variants, ECA, ECA-NS): ``x * excite(pool(x))``.

    In training the pool and the rescale run through :mod:`excite.attention.fused`, whose backward
    passes read each full-size tensor once; outputs and gradients are the plain operators' (up to
    rounding), and tracers and compilers see the plain operators.
    """

    def excite(self, y: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) gate in (0, 1) from the (B, C, 1, 1) average-pooled ``y``."""
        raise NotImplementedError

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) excitation that scales ``x``."""
        return self.excite(mean_pool(x, (2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_scale(x, self.channel_weights(x))


def hooked(module: nn.Module) -> bool:
    """``module`` has hooks of its own (forward, forward-pre, backward or backward-pre)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def watched(module: nn.Module) -> bool:
    """A hook on ``module`` (:func:`hooked`) or a global one (kept in torch's module-private dicts) that
    a call which bypasses the module's ``__call__`` would skip."""
    return hooked(module) or bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                                  or _torch_module._global_backward_hooks)


def gated_add(attn: nn.Module, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``attn(x) + identity``, a residual block's attended addition. For a channel gate that rescales
    with :func:`channel_scale` (its class keeps the gate's ``forward``) and that no hook watches, run
    eagerly, the rescale and the addition are one ``torch.addcmul``: a pass and a full-size tensor
    fewer forward (eager inference then allocates what a torchvision-style ``out += identity`` block
    does), the same backward. In training on activations from ``LARGE`` elements on, the rescale's
    one-pass backward as batch normalization saves more than the fused forward, and it is kept."""
    # (eager() first: under a tracer x is a proxy, whose size no Python condition may read)
    if (getattr(type(attn), "forward", None) is not ChannelAttention.forward or not eager(x, identity)
            or x.shape != identity.shape or watched(attn)
            or x.numel() >= LARGE and torch.is_grad_enabled() and (x.requires_grad or identity.requires_grad)):
        return attn(x) + identity
    return torch.addcmul(identity, x, attn.channel_weights(x))
