"""Global second-order pooling block, GSoP-Net1's channel attention (Gao et al., CVPR 2019; reference
code ZilinGao/Global-Second-order-Pooling-Convolutional-Networks).

ReLU, a 1x1 conv C -> d (d = 128, with bias) + BN + ReLU, the d x d covariance matrix over positions,
BN over its rows, a row-wise convolution (a grouped conv with kernel (d, 1): 4 outputs per row), a
1x1 conv 4d -> C (with bias), sigmoid: the gate of each channel sees the correlations of all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from excite.core.errors import check_range
from excite.core.registry import register_attention
from excite.attention.base import ChannelAttention


@register_attention("gsop")
class GSoP(ChannelAttention):
    """GSoP: covariance of a C -> d reduction, row-wise conv to 4d, 1x1 conv back to C, sigmoid.

    The keys follow the reference code (``conv_for_DR``, ``bn_for_DR``, ``row_bn``, ``row_conv_group``,
    ``fc_adapt_channels``).

    Args:
        channels: C.
        att_dim: d, the reduced width whose covariance is taken (128 in the released models).
        dr_stride: stride of the reducing conv (the reference code uses 2 in the first stage, where
            the map is largest: ``dr_stride=[2, 1, 1, 1]``).
    """

    paper = "Gao et al., Global Second-order Pooling Convolutional Networks, CVPR 2019"
    kind = "channel"
    dim_reduction = True
    interaction = "global (second-order)"
    params_formula = "5dC + C + 4d^2 + 9d (d = 128)"

    def __init__(self, channels: int, *, att_dim: int = 128, dr_stride: int = 1):
        super().__init__()
        check_range("att_dim", att_dim, low=1, integer=True)
        check_range("dr_stride", dr_stride, low=1, high=2, integer=True)
        d = att_dim
        self.conv_for_DR = nn.Conv2d(channels, d, 1, stride=dr_stride, bias=True)
        self.bn_for_DR = nn.BatchNorm2d(d)
        self.row_bn = nn.BatchNorm2d(d)
        self.row_conv_group = nn.Conv2d(d, 4 * d, (d, 1), groups=d, bias=True)
        self.fc_adapt_channels = nn.Conv2d(4 * d, channels, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference network's init: He normal (fan_out) for every conv, BN scale 1 and shift 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()  # the bias keeps PyTorch's default, as in the reference code
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_for_DR(self.conv_for_DR(torch.relu(x))))
        b, d = y.shape[:2]
        y = y.reshape(b, d, -1)
        y = y - y.mean(-1, keepdim=True)
        # The code's covariance x I_hat x^T with I_hat = (I - 11^T/M)/M is the centred product over M.
        cov = torch.bmm(y, y.transpose(1, 2)) / y.shape[-1]  # (B, d, d)
        z = self.row_conv_group(self.row_bn(cov.unsqueeze(-1)))  # (B, 4d, 1, 1)
        return torch.sigmoid(self.fc_adapt_channels(z))
