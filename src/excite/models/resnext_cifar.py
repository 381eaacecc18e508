"""ResNeXt-29 for CIFAR (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR
2017, section 6 / Table 7: 8x64d 34.4M and 16x64d 68.1M parameters).

Built as the authors' released code builds it (facebookresearch/ResNeXt, ``models/resnext.lua``): a 3x3
convolution to 64 channels with BN-ReLU, three stages of ``n = (depth - 2) / 9 = 3`` bottleneck blocks
with outputs 256, 512, 1024 (strides 1, 2, 2; the stride on the grouped 3x3), cardinality C paths of
width d = 64 in the first stage (doubling with each stage), projection shortcuts (1x1 conv + BN, the
code's default type B) where the width changes, global average pooling and a linear classifier.

The blocks are this project's ResNet bottlenecks, so all three equivalent forms of the paper's Fig. 3
are here (``block_form`` "a", "b", "c"; :func:`excite.models.resnet.convert_resnext_form` maps weights
between them), and attention sits where it sits in every ResNet block (after the last BN, before the
addition). ``width_mult`` scales the stem and every stage (and so d) for small-compute studies.
"""

from __future__ import annotations

from torch import nn

from excite.attention import make_attention
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet
from excite.models.resnet import BLOCK_FORMS, AggregatedBottleneck, Bottleneck, _init_weights, conv1x1, conv3x3

__all__ = ["CifarResNeXt"]

_PAPER = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"


class CifarResNeXt(ClassifierNet):
    """ResNeXt for 32x32 inputs, depth 9n + 2, cardinality ``groups``, path width ``width_per_group``.

    ``groups=1`` is the ResNet bottleneck network of the same layout (the paper's ResNet baselines).
    """

    def __init__(self, depth: int = 29, *, groups: int, width_per_group: int = 64, block_form="c",
                 width_mult: float = 1.0, attention=None, attention_kwargs=None, num_classes=10, in_chans=3,
                 zero_init_residual=False):
        super().__init__()
        if (depth - 2) % 9 or depth < 11:
            raise ExciteError(f"depth={depth} is not valid; expected 9n + 2 with n >= 1 (29)")
        if block_form not in BLOCK_FORMS:
            raise ExciteError(f"block_form={block_form!r} is not valid; expected one of {', '.join(BLOCK_FORMS)}")
        check_range("groups", groups, low=1)
        check_range("width_per_group", width_per_group, low=1)
        check_range("width_mult", width_mult, low=1e-3)
        stem, *planes = (max(1, round(c * width_mult)) for c in (64, 64, 128, 256))
        if int(planes[0] * width_per_group / 64) < 1:
            raise ExciteError(f"width_mult={width_mult} with width_per_group={width_per_group} leaves paths of "
                              "width 0; raise either")
        block = Bottleneck if block_form == "c" else AggregatedBottleneck
        kwargs = dict(groups=groups, base_width=width_per_group, variant="v1.5")
        if block_form != "c":
            kwargs["form"] = block_form
        self.conv1 = conv3x3(in_chans, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        inplanes, n, stages = stem, (depth - 2) // 9, []
        for stage, (p, stride) in enumerate(zip(planes, (1, 2, 2))):
            blocks, out = [], p * block.expansion
            for i in range(n):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or inplanes != out:  # projection shortcut, the code's type B
                    down = nn.Sequential(conv1x1(inplanes, out, s), nn.BatchNorm2d(out))
                attn = make_attention(attention, out, attention_kwargs, stage=stage, num_stages=3)
                blocks.append(block(inplanes, p, s, down, attn=attn, **kwargs))
                inplanes = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        _init_weights(self, zero_init_residual)  # He normal (fan_out), BN identity: the authors' init too

    def forward_features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


@register_model(family="resnext-cifar", input_size=(3, 32, 32), paper=_PAPER)
def resnext29_8x64d(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, groups=8,
                    width_per_group=64, block_form="c", width_mult=1.0, zero_init_residual=False) -> CifarResNeXt:
    """ResNeXt-29 (8x64d) for CIFAR: 34.4M parameters (ResNeXt paper Table 7)."""
    return CifarResNeXt(29, **locals())


@register_model(family="resnext-cifar", input_size=(3, 32, 32), paper=_PAPER)
def resnext29_16x64d(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, groups=16,
                     width_per_group=64, block_form="c", width_mult=1.0, zero_init_residual=False) -> CifarResNeXt:
    """ResNeXt-29 (16x64d) for CIFAR: 68.1M parameters (ResNeXt paper Table 7)."""
    return CifarResNeXt(29, **locals())
