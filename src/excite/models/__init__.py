"""Backbones. Each family lives in one file; importing it registers its builders."""

from excite.models import resnet  # noqa: F401  ResNet, ResNeXt, Wide ResNet (ImageNet) and CIFAR ResNets
from excite.models import mobilenetv2, efficientnet  # noqa: F401
from excite.models import mobilenetv3, densenet, shufflenetv2  # noqa: F401
from excite.models import stn  # noqa: F401  the Spatial Transformer paper's CNN and ResNet-20 with a transformer
from excite.models import residual_attention  # noqa: F401  Residual Attention Network (Attention-56/92)
from excite.models import preresnet_cifar, resnext_cifar  # noqa: F401  ResNet-164/1001, ResNeXt-29 (CIFAR)
from excite.models import mobilenetv1, shufflenetv1  # noqa: F401  MobileNet v1, ShuffleNet v1
