"""Pre-activation bottleneck ResNets for CIFAR: ResNet-164 and ResNet-1001 (He et al., "Identity Mappings in
Deep Residual Networks", ECCV 2016, Table 3 / Table 4: 1.7M and 10.2M parameters).

Built as the authors' released code builds them (KaimingHe/resnet-1k-layers, ``resnet-pre-act.lua``):
a bare 3x3 convolution to 16 channels, three stages of ``n = (depth - 2) / 9`` full pre-activation
bottleneck units with outputs 64, 128, 256 (bottleneck widths 16, 32, 64), a final BN-ReLU, global
average pooling and a linear classifier. The first unit of each stage changes the width, so its
shortcut is a 1x1 convolution (no BN) on the pre-activated input; its stride sits on the first 1x1
(``variant="v1"``), and the convolutions have no bias (the code drops them under cuDNN >= 4).

Attention sits as SENet puts it in every residual unit: at the end of the residual branch (after the
last 1x1), before the addition, stored as ``block.attn``.
"""

from __future__ import annotations

from torch import nn

from excite.attention import make_attention
from excite.core.errors import ExciteError
from excite.core.registry import register_model
from excite.models.head import ClassifierNet
from excite.models.resnet import VARIANTS, PreActBottleneck, _init_weights, conv1x1, conv3x3

__all__ = ["PreActCifarResNet"]

_PAPER = "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016"


class PreActCifarResNet(ClassifierNet):
    """The 9n+2-layer pre-activation bottleneck ResNet for 32x32 inputs (ResNet v2, section 4.3).

    Args:
        depth: 9n + 2 (164: n = 18, 1001: n = 111).
        attention, attention_kwargs: see :func:`excite.create_model`; one module per unit (3 stages).
        variant: ``"v1"`` (stride on the first 1x1, the authors' code) or ``"v1.5"`` (on the 3x3).
        zero_init_residual: zero each unit's last convolution, so every unit starts as the identity.
    """

    def __init__(self, depth: int, *, attention=None, attention_kwargs=None, num_classes=10, in_chans=3,
                 variant="v1", zero_init_residual=False):
        super().__init__()
        if (depth - 2) % 9 or depth < 11:
            raise ExciteError(f"depth={depth} is not valid; expected 9n + 2 with n >= 1 (164, 1001)")
        if variant not in VARIANTS:
            raise ExciteError(f"variant={variant!r} is not valid; expected one of {', '.join(VARIANTS)}")
        n = (depth - 2) // 9
        self.conv1 = conv3x3(in_chans, 16)  # no BN-ReLU here: the first unit starts with its own
        inplanes, stages = 16, []
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            units = []
            for i in range(n):
                out = planes * PreActBottleneck.expansion
                down = nn.Sequential(conv1x1(inplanes, out, stride if i == 0 else 1)) if inplanes != out else None
                attn = make_attention(attention, out, attention_kwargs, stage=stage, num_stages=3)
                units.append(PreActBottleneck(inplanes, planes, stride if i == 0 else 1, down, attn=attn,
                                              variant=variant))
                inplanes = out
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.norm = nn.BatchNorm2d(inplanes)  # the un-activated sum of the last unit gets one BN-ReLU
        self.relu = nn.ReLU(inplace=True)
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        _init_weights(self, zero_init_residual)  # He normal (fan_out), BN identity: the authors' init too

    def forward_features(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.relu(self.norm(x))

    def forward_head(self, x, pre_logits: bool = False):
        # Without a branch on the input's shape, so that torch.fx can trace the model (BN folding does).
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


@register_model(family="preresnet-cifar", input_size=(3, 32, 32), paper=_PAPER)
def resnet164(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, variant="v1",
              zero_init_residual=False) -> PreActCifarResNet:
    """Pre-activation ResNet-164 for CIFAR (n = 18 bottleneck units per stage; 1.7M parameters, Table 3)."""
    return PreActCifarResNet(164, **locals())


@register_model(family="preresnet-cifar", input_size=(3, 32, 32), paper=_PAPER)
def resnet1001(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, variant="v1",
               zero_init_residual=False) -> PreActCifarResNet:
    """Pre-activation ResNet-1001 for CIFAR (n = 111 bottleneck units per stage; 10.2M parameters, Table 3)."""
    return PreActCifarResNet(1001, **locals())
