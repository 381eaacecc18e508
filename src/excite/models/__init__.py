"""Backbones. Each family lives in one file; importing it registers its builders."""

from . import resnet  # noqa: F401  ResNet, ResNeXt, Wide ResNet (ImageNet) and CIFAR ResNets
from . import mobilenetv2, efficientnet  # noqa: F401
from . import mobilenetv3, densenet, shufflenetv2  # noqa: F401
from . import stn  # noqa: F401  the Spatial Transformer paper's CNN and ResNet-20 with a transformer
from . import residual_attention  # noqa: F401  Residual Attention Network (Attention-56/92)
