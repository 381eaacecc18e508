"""The classifier interface every family shares (timm's): ``forward_features`` -> ``forward_head``
(global average pooling, then the head) -> logits; ``get_classifier`` / ``reset_classifier`` /
``num_features`` for fine-tuning and feature extraction.

A family sets ``num_features``, names its head (``head_path``: what runs after pooling, dropout
included) and its final linear layer (``classifier_path``), and writes ``forward_features``. The names
are the published ones (``fc``; ``classifier``; ``classifier.1``), so torchvision's and timm's weights
load key for key.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from excite.attention import init_attention, inside_attention
from excite.core.errors import check_range


class ClassifierNet(nn.Module):
    """Base of every backbone: pooling + head on top of ``forward_features``."""

    head_path = "fc"
    classifier_path = "fc"
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if x.ndim == 4 else x
        return x if pre_logits else self.get_submodule(self.head_path)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_path)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised linear layer with ``num_classes`` outputs (0: no classifier)."""
        check_range("num_classes", num_classes, low=0)
        new = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        parent_path, _, key = self.classifier_path.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self
        if key.isdigit():
            parent[int(key)] = new
        else:
            setattr(parent, key, new)


def init_torchvision(model: nn.Module, *, conv_mode: str = "fan_out", linear: str = "normal") -> None:
    """torchvision's initialisation of its mobile and dense families: Kaiming-normal convolutions
    (``conv_mode``: ``"fan_out"``, DenseNet's ``"fan_in"``) with zero bias, BN weight 1 and bias 0, and the
    linear layers as each family has them (``"normal"``: N(0, 0.01); ``"uniform"``: EfficientNet's
    U(+-1/sqrt(out)); ``"bias"``: PyTorch's default weight, zero bias). Attention modules are left to
    their own initialisation (:func:`excite.attention.init_attention`), the same in every family."""
    skip = inside_attention(model)
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            elif linear == "uniform":
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)
    init_attention(model)
