"""Models for the Spatial Transformer experiments (Jaderberg et al. 2015): the paper's small CNN for
distorted MNIST, and the CIFAR ResNet-20 with a transformer in front, both with ``stn=`` to switch it.

``stn`` takes what :func:`excite.attention.stn.resolve_stn_option` takes: ``False`` (the plain model,
``state_dict`` identical to it), ``True``/``"input"`` (the paper's ST-CNN: transform the image), a
submodule name (transform that module's output) or ``{"where": ..., **SpatialTransformer options}``.
"""

from __future__ import annotations

from torch import nn

from excite.attention import init_attention, make_attention
from excite.attention.stn import resolve_stn_option, with_stn
from excite.core.errors import check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet
from excite.models.resnet import CifarResNet

__all__ = ["STNPaperCNN"]

_PAPER_STN = "Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015"


class STNPaperCNN(ClassifierNet):
    """The CNN baseline of the STN paper's distorted-MNIST experiments (Sec. 4.1, Appendix A): a 9x9
    convolution, 2x2 max-pooling, a 7x7 convolution, 2x2 max-pooling and a linear softmax classifier,
    ReLU after each convolution. The paper gives the layer shapes; the widths (32 and 64) are ours.

    The classifier reads the whole flattened map, not a global pool: like the paper's CNN the model
    is not translation invariant by construction, which is what a spatial transformer adds.
    """

    def __init__(self, *, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, input_size=42,
                 widths=(32, 64)):
        super().__init__()
        check_range("input_size", input_size, low=20)
        w1, w2 = widths
        self.conv1 = nn.Conv2d(in_chans, w1, 9)
        self.attn1 = make_attention(attention, w1, attention_kwargs, stage=0, num_stages=2) or nn.Identity()
        self.conv2 = nn.Conv2d(w1, w2, 7)
        self.attn2 = make_attention(attention, w2, attention_kwargs, stage=1, num_stages=2) or nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        side = ((input_size - 8) // 2 - 6) // 2  # valid 9x9, pool, valid 7x7, pool
        # Other input sizes are pooled to side x side, the grid the classifier reads; at input_size the
        # map already has that size and nothing is done (no op in the profile or the ONNX graph).
        self.side = side
        self.resize = nn.AdaptiveAvgPool2d(side)
        self.num_features = w2 * side * side
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        init_attention(self)  # PyTorch's default initialisation for the rest

    def forward_features(self, x):
        x = self.pool(self.attn1(self.relu(self.conv1(x))))
        x = self.pool(self.attn2(self.relu(self.conv2(x))))
        if x.shape[-2:] != (self.side, self.side):
            x = self.resize(x)
        return x.flatten(1)


def _attach(model: nn.Module, stn, input_size: int) -> nn.Module:
    opt = resolve_stn_option(stn)
    if opt is not None:
        # The size the localisation network is laid out for (create_model sets the registered default
        # only after the builder returns).
        model.default_input_size = (3, input_size, input_size)
        where, kw = opt
        with_stn(model, where, **kw)
    return model


@register_model(family="stn", input_size=(3, 42, 42), paper=_PAPER_STN)
def stn_cnn(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, input_size=42,
            stn=True) -> STNPaperCNN:
    """The STN paper's distorted-MNIST CNN; ``stn=True`` (default) is its ST-CNN, ``stn=False`` its CNN."""
    model = STNPaperCNN(attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                        in_chans=in_chans, input_size=input_size)
    return _attach(model, stn, input_size)


@register_model(family="stn", input_size=(3, 42, 42), paper=_PAPER_STN)
def resnet20_stn(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
                 zero_init_residual=False, input_size=42, stn=True) -> CifarResNet:
    """CIFAR ResNet-20 with a spatial transformer in front (``stn=True``) or after a stage
    (``stn="layer1"``); ``stn=False`` is exactly ``resnet20``. ``input_size`` is the image side the
    transformer's localisation network is laid out for (any size runs)."""
    model = CifarResNet(3, attention=attention, attention_kwargs=attention_kwargs, num_classes=num_classes,
                        in_chans=in_chans, preact=preact, zero_init_residual=zero_init_residual)
    return _attach(model, stn, input_size)
