"""DenseNet-121/161/169/201 (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

torchvision's module names and parameter counts (7,978,856 / 28,681,000 / 14,149,480 / 20,013,928):
``attention=None`` gives its ``state_dict`` key for key. DenseNet-BC: each dense layer is BN-ReLU-1x1 conv
(to ``bn_size x k`` channels) then BN-ReLU-3x3 conv to ``k`` new channels (the growth rate), concatenated
to everything before it; transitions halve the channels (compression 0.5) and the resolution.

Where the attention goes. Neither the SENet nor the CBAM paper builds a DenseNet, so there is no
published placement to copy. SENet's rule (Hu et al., Sec. 6 and Fig. 2/3) is to recalibrate the output of
a block's transformation before it is merged with the identity path; in a DenseNet the merge is the
concatenation, so by default (``attention_at="layer"``) every dense layer gates its ``k`` new feature
maps after its 3x3 conv, before they join the block's concatenation (``denseblockN.denselayerM.attn``).
Features already in the concatenation are not re-weighted, as a ResNet's identity path is not.
``attention_at="transition"`` is the other common choice in follow-up work: one module per transition
layer on its compressed output, after the 1x1 conv and before the pooling (``transitionN.attn``), i.e.
once per block instead of once per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import make_attention
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet, init_torchvision

# DenseNet paper Table 1 (ImageNet): layers per dense block; growth rate k and stem width 2k
# (DenseNet-161: k = 48, stem 96). bn_size 4 (the 1x1 "bottleneck" makes 4k channels, Sec. 3).
CONFIGS = {
    # name: (growth rate k, layers per block, stem channels)
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}
ATTENTION_AT = ("layer", "transition")


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(4k) -> BN-ReLU-Conv3x3(k) (-> attention on the k new maps) (-> dropout)."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int, drop_rate: float, attn: nn.Module | None):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.attn = attn
        self.drop_rate = float(drop_rate)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.attn is not None:
            out = self.attn(out)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``n`` dense layers, each fed the concatenation of the block input and every earlier layer's output."""

    def __init__(self, layers: list[DenseLayer]):
        super().__init__({f"denselayer{i + 1}": layer for i, layer in enumerate(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (halving the channels) (-> attention) -> 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, attn: nn.Module | None):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
        if attn is not None:
            self.add_module("attn", attn)
        self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNet(ClassifierNet):
    """DenseNet-BC for ImageNet with any attention module (placement: see the module docstring)."""

    head_path = classifier_path = "classifier"


    def __init__(self, growth_rate, block_config, num_init_features, *, attention=None, attention_kwargs=None,
                 num_classes=1000, in_chans=3, bn_size=4, drop_rate=0.0, attention_at="layer"):
        super().__init__()
        check_range("drop_rate", drop_rate, low=0, high=1)
        check_range("bn_size", bn_size, low=1)
        if attention_at not in ATTENTION_AT:
            raise ExciteError(f"attention_at={attention_at!r} is not valid; expected one of {', '.join(ATTENTION_AT)}")
        n_stages = len(block_config)

        def attn(channels, stage):
            return make_attention(attention, channels, attention_kwargs, stage=stage, num_stages=n_stages)

        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_chans, num_init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = num_init_features
        for i, n in enumerate(block_config):
            layers = [DenseLayer(c + j * growth_rate, growth_rate, bn_size, drop_rate,
                                 attn(growth_rate, i) if attention_at == "layer" else None) for j in range(n)]
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(layers))
            c += n * growth_rate
            if i != n_stages - 1:
                # Compression 0.5 (DenseNet-BC, Sec. 3 "Compression").
                self.features.add_module(f"transition{i + 1}", Transition(
                    c, c // 2, attn(c // 2, i) if attention_at == "transition" else None))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        init_torchvision(self, conv_mode="fan_in", linear="bias")


    def forward_features(self, x):
        return F.relu(self.features(x))  # the final BN (norm5) is followed by a ReLU before pooling


def _builder(name: str):
    growth, blocks, stem = CONFIGS[name]

    def build(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, drop_rate=0.0,
              attention_at="layer"):
        return DenseNet(growth, blocks, stem, attention=attention, attention_kwargs=attention_kwargs,
                        num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, attention_at=attention_at)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"DenseNet-{name[8:]} (k={growth}, blocks {blocks}); attention per dense layer on its {growth} "
                     "new maps, or per transition with attention_at='transition'.")
    register_model(family="densenet", paper="Huang et al., Densely Connected Convolutional Networks, CVPR 2017")(build)
    return build


for _name in CONFIGS:
    globals()[_name] = _builder(_name)
