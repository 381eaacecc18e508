"""Backbones. Each family lives in one file; importing it registers its builders."""

from excite.models import resnet  # noqa: F401  ResNet, ResNeXt, Wide ResNet (ImageNet) and CIFAR ResNets
from excite.models import mobilenetv2, efficientnet  # noqa: F401
from excite.models import mobilenetv3, densenet, shufflenetv2  # noqa: F401
from excite.models import stn  # noqa: F401  the Spatial Transformer paper's CNN and ResNet-20 with a transformer
from excite.models import residual_attention  # noqa: F401  Residual Attention Network (Attention-56/92)
from excite.models import sknet, resnest  # noqa: F401  SK and split-attention convolutions (SKNet, ResNeSt)
