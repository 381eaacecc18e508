"""An independent torchvision-style ResNet-50 (and its ECA variant, as the ECA-Net authors' code
writes it), the eager baseline's cross-check: torchvision and timm do not import on every machine,
so the benchmark carries a look-alike of torchvision's ``models/resnet.py`` written without excite.

The state_dict keys are torchvision's, so excite's model's weights load into it and both compute the
same function; if their eager times disagree beyond noise, the baseline is suspect.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ECALayer(nn.Module):
    """The ECA-Net reference layer: avg pool, Conv1d over channels (adaptive k), sigmoid, scale."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        t = int(abs((math.log2(channels) + b) / gamma))
        k = t if t % 2 else t + 1
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, eca=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.attn = ECALayer(planes * 4) if eca else None
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """torchvision's ``resnet50()`` layout: stem, layers [3, 4, 6, 3], avgpool, fc."""

    def __init__(self, eca: bool = False, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 3, 1, eca)
        self.layer2 = self._layer(128, 4, 2, eca)
        self.layer3 = self._layer(256, 6, 2, eca)
        self.layer4 = self._layer(512, 3, 2, eca)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def _layer(self, planes, blocks, stride, eca):
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down, eca)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, eca=eca) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
