"""ResNet (He et al. 2016), ResNeXt (Xie et al. 2017), Wide ResNet (Zagoruyko & Komodakis 2016) and the
CIFAR ResNets of the ResNet paper's section 4.2, all taking any channel attention module.

ImageNet models follow torchvision's design and key layout ("v1.5": the stride of a bottleneck sits on
its 3x3), so ``attention=None`` gives torchvision's ``state_dict`` key for key. ``variant="v1"`` puts the
stride on the first 1x1 as in the 2015 paper, whose Table 1 FLOPs are computed that way.

Attention sits on the residual branch after the last BN and before the addition (SENet Fig. 3,
CBAM Fig. 3, ECA-Net Fig. 2), stored as ``block.attn``. ``attention_position`` moves it to the other
integrations of the SENet journal version's Fig. 5 / Table 14 (before the unit, after the addition, on
the identity path), and ``attention_stages`` keeps it in chosen stages only (its Table 13).

The CIFAR ResNets also take the ablations of ResNet v2 (He et al. 2016, "Identity Mappings in Deep
Residual Networks"): the shortcut variants of its Fig. 2 / Table 1 (``shortcut=``) and the activation
orders of its Fig. 4 / Table 2 (``act_order=``; ``preact=True`` is the full pre-activation unit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from excite.attention import gated_add, init_attention, inside_attention, make_attention
from excite.core.errors import ExciteError, check_range
from excite.core.registry import register_model
from excite.models.head import ClassifierNet

__all__ = [
    "ResNet", "CifarResNet", "BasicBlock", "Bottleneck", "AggregatedBottleneck", "CifarBasicBlock",
    "PreActBasicBlock", "PreActBottleneck", "convert_resnext_form", "VARIANTS", "BLOCK_FORMS",
    "ATTENTION_POSITIONS", "SHORTCUTS", "ACT_ORDERS", "IMAGENET_SHORTCUTS",
]

VARIANTS = ("v1", "v1.5")
BLOCK_FORMS = ("a", "b", "c")
# SENet (journal version, TPAMI 2019) Fig. 5 / Table 14: where the attention module is integrated.
#   standard: on the residual branch, after its last BN, before the addition (Fig. 5b)
#   pre:      before the residual unit, on the branch's input; the identity keeps the raw input (Fig. 5c)
#   post:     after the addition (and after the ReLU that follows it) (Fig. 5d)
#   identity: on the identity path, in parallel to the residual branch (Fig. 5e)
ATTENTION_POSITIONS = ("standard", "pre", "post", "identity")
# ResNet v2 Fig. 2 / Table 1 (CIFAR-10 ResNet-110 error %): x_{l+1} = s(x_l) + F(x_l) with
#   identity        s = x, F                              (a) 6.61
#   scale           s = 0.5 x, F scaled by 0.5 too         (b) 12.35 (shortcut-only 0.5: fails)
#   exclusive_gate  s = (1 - g(x)) x, F scaled by g(x)     (c) 8.70 with the gate bias b_g = -6
#   shortcut_gate   s = (1 - g(x)) x, F unscaled           (d) 12.86 with b_g = 0 (6.91 with b_g = -6)
#   conv            s = 1x1 conv(x)                        (e) 12.22
#   dropout         s = dropout(x, p=0.5)                  (f) fails
#   scale_shortcut  s = 0.5 x, F unscaled                  (b, shortcut-only row) fails
#   none            no shortcut: the plain network of the ResNet paper (Fig. 3 middle, Table 2 / Fig. 6)
# where g(x) = sigmoid(1x1 conv(x) + b_g), one gate per channel and position. The shortcut-only scaling
# is the case of ResNet v2's Eq. 4-5: the signal through L units is multiplied by 0.5^L.
SHORTCUTS = ("identity", "scale", "exclusive_gate", "shortcut_gate", "conv", "dropout", "scale_shortcut", "none")
# The ImageNet ResNets: identity (projection when the shape changes, option B) or none (plain-18/34 ...).
IMAGENET_SHORTCUTS = ("identity", "none")
_GATE_BIAS = {"exclusive_gate": -6.0, "shortcut_gate": 0.0}  # the Table 1 rows the issue cites
# ResNet v2 Fig. 4 / Table 2 (CIFAR-10 error %, ResNet-110 / ResNet-164):
#   original         conv-BN-ReLU-conv-BN, add, ReLU        (a) 6.61 / 5.93
#   bn_after_add     conv-BN-ReLU-conv, add, BN, ReLU       (b) 8.17 / 6.50
#   relu_before_add  conv-BN-ReLU-conv-BN-ReLU, add         (c) 7.84 / 6.14
#   relu_preact      ReLU-conv-BN-ReLU-conv-BN, add         (d) 6.71 / 5.91
#   full_preact      BN-ReLU-conv-BN-ReLU-conv, add         (e) 6.37 / 5.46
ACT_ORDERS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


# ----------------------------------------------------------------------------------------------- blocks


class ResidualAttention:
    """Mixin of the residual blocks: where the attention ``attn`` acts (``attn_position``) and the addition.

    ``standard`` computes ``attn(out) + identity``, the step every attention paper adds; ``identity``
    computes ``out + attn(identity)``; ``pre`` and ``post`` apply it in :meth:`attn_in` / :meth:`attn_out`.

    ``excite.optimize_for_inference`` rewrites the block's graph so that the rescale multiply rides on
    the addition (``excite.models.rewrite``); the eager forward stays the plain sequence below.
    """

    attn_position = "standard"

    def attn_in(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch's input: ``attn(x)`` for SE-PRE, else ``x`` (the identity keeps ``x``)."""
        return self.attn(x) if self.attn is not None and self.attn_position == "pre" else x

    def attn_out(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output: ``attn(x)`` for SE-POST (after the addition and its ReLU), else ``x``."""
        return self.attn(x) if self.attn is not None and self.attn_position == "post" else x

    def attend_add(self, out: torch.Tensor, identity: torch.Tensor | None) -> torch.Tensor:
        """The addition, with the attention where ``attn_position`` puts it; ``identity=None`` is a plain
        block (no shortcut): the branch alone, attention where it stands."""
        if identity is None:
            return self.attn(out) if self.attn is not None and self.attn_position == "standard" else out
        if self.attn is None or self.attn_position in ("pre", "post"):
            return out + identity
        if self.attn_position == "identity":
            return out + self.attn(identity)
        return gated_add(self.attn, out, identity)


def _check_position(position: str) -> str:
    if position not in ATTENTION_POSITIONS:
        raise ExciteError(f"attention_position={position!r} is not valid; expected one of {', '.join(ATTENTION_POSITIONS)}")
    return position


def _check_stages(stages, num_stages: int) -> tuple[int, ...] | None:
    """``attention_stages``: 1-based stage numbers (``layer1`` is 1); ``None`` means every stage.

    SENet Table 13 names ResNet-50's stages after their conv groups: its "SE_Stage_2/3/4" are our
    stages 1/2/3 (``layer1..layer3``), "SE_ALL" is all four.
    """
    if stages is None:
        return None
    stages = (stages,) if isinstance(stages, int) else tuple(stages)
    for s_ in stages:
        if not isinstance(s_, int) or not 1 <= s_ <= num_stages:
            raise ExciteError(f"attention_stages={list(stages)} is not valid; expected stage numbers 1..{num_stages}")
    return stages


def _identity(block: nn.Module, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor | None:
    """The shortcut of a block: ``x``, its projection (of the pre-activated ``pre`` in a v2 unit), or
    ``None`` in a plain network."""
    if getattr(block, "plain", False):
        return None
    return x if block.downsample is None else block.downsample(x if pre is None else pre)


class BasicBlock(ResidualAttention, nn.Module):
    """Two 3x3 convolutions (ResNet-18/34, ResNet paper Fig. 5 left)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn=None, attn_position="standard", **_):
        super().__init__()
        self.attn_position = attn_position
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = _identity(self, x)
        out = self.relu(self.bn1(self.conv1(self.attn_in(x))))
        out = self.bn2(self.conv2(out))
        return self.attn_out(self.relu(self.attend_add(out, identity)))


class Bottleneck(ResidualAttention, nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand (ResNet paper Fig. 5 right; ResNeXt Fig. 3c).

    ``variant="v1.5"`` strides the 3x3 (torchvision; about +0.5% top-1 per NVIDIA's ResNet-50 v1.5
    notes), ``"v1"`` strides the first 1x1 (the 2015 paper), which skips 3/4 of the input positions.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64, attn=None,
                 variant="v1.5", attn_position="standard"):
        super().__init__()
        self.attn_position = attn_position
        # Inner width: C paths of width d (ResNeXt "CxWd"); 64 for ResNet, 128 for Wide ResNet-x-2.
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = _identity(self, x)
        out = self.relu(self.bn1(self.conv1(self.attn_in(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.attn_out(self.relu(self.attend_add(out, identity)))


class ResNeXtPath(nn.Module):
    """One of the C paths of ResNeXt Fig. 3(a)/(b): 1x1 to d channels, BN, ReLU, 3x3, BN, ReLU."""

    def __init__(self, inplanes, d, stride, variant):
        super().__init__()
        s1, s3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv1x1(inplanes, d, s1)
        self.bn1 = nn.BatchNorm2d(d)
        self.conv2 = conv3x3(d, d, s3)
        self.bn2 = nn.BatchNorm2d(d)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class AggregatedBottleneck(ResidualAttention, nn.Module):
    """ResNeXt block in the forms (a) and (b) of the paper's Fig. 3, equivalent to the grouped form (c).

    (a): every path ends in its own 1x1 to the output width, and the paths are summed.
    (b): the paths are concatenated, then one 1x1 maps them to the output width.
    Both are followed by one BN (BN is per channel, so it commutes with the split into paths).
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64, attn=None,
                 variant="v1.5", form="a", attn_position="standard"):
        super().__init__()
        self.attn_position = attn_position
        d = int(planes * (base_width / 64.0))
        out = planes * self.expansion
        self.form = form
        self.paths = nn.ModuleList(ResNeXtPath(inplanes, d, stride, variant) for _ in range(groups))
        if form == "a":
            self.proj = nn.ModuleList(conv1x1(d, out) for _ in range(groups))
        else:
            self.proj = conv1x1(d * groups, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        identity = _identity(self, x)
        x = self.attn_in(x)
        if self.form == "a":
            out = sum(p(path(x)) for path, p in zip(self.paths, self.proj))
        else:
            out = self.proj(torch.cat([path(x) for path in self.paths], 1))
        out = self.bn3(out)
        return self.attn_out(self.relu(self.attend_add(out, identity)))


class PreActBasicBlock(ResidualAttention, nn.Module):
    """ResNet v2's full pre-activation unit with two 3x3 convolutions (Fig. 1b / Fig. 4e):
    BN-ReLU-conv twice, the addition left un-activated.

    A projection shortcut takes the pre-activated input (``relu(norm1(x))``), as the authors' code does;
    SE-PRE (``attn_position="pre"``) acts on the same pre-activated input, on the branch only. The BNs are
    ``norm1``, ``norm2`` (timm's names): ``bnN`` would say it follows ``convN``, as in the v1 units.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn=None, attn_position="standard", **_):
        super().__init__()
        self.attn_position = attn_position
        self.norm1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.norm2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        pre = self.relu(self.norm1(x))
        identity = _identity(self, x, pre)
        out = self.conv1(self.attn_in(pre))
        out = self.conv2(self.relu(self.norm2(out)))
        return self.attn_out(self.attend_add(out, identity))


class PreActBottleneck(ResidualAttention, nn.Module):
    """ResNet v2's full pre-activation bottleneck (ResNet-164/1001, the ImageNet ResNet-200 of its Table 5):
    BN-ReLU-1x1, BN-ReLU-3x3 (grouped for ResNeXt), BN-ReLU-1x1, the addition left un-activated.

    Attention sits where SENet puts it in every residual unit: on the branch's output (here the last
    1x1 conv, there being no BN after it), before the addition. ``variant="v1.5"`` strides the 3x3
    (timm's ``resnetv2``), ``"v1"`` the first 1x1 (the authors' CIFAR code, resnet-1k-layers).
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64, attn=None,
                 variant="v1.5", attn_position="standard"):
        super().__init__()
        self.attn_position = attn_position
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if variant == "v1" else (1, stride)
        self.norm1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups)
        self.norm3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn
        self.downsample = downsample

    def forward(self, x):
        pre = self.relu(self.norm1(x))
        identity = _identity(self, x, pre)
        out = self.conv1(self.attn_in(pre))
        out = self.conv2(self.relu(self.norm2(out)))
        out = self.conv3(self.relu(self.norm3(out)))
        return self.attn_out(self.attend_add(out, identity))


_PREACT_BLOCKS = {BasicBlock: PreActBasicBlock, Bottleneck: PreActBottleneck}


# ------------------------------------------------------------------------------------------------ model


class ResNet(ClassifierNet):
    """ImageNet ResNet / ResNeXt / Wide ResNet with torchvision's module names.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage (ResNet paper Table 1).
        attention, attention_kwargs: see :func:`excite.create_model`.
        groups, width_per_group: ResNeXt cardinality C and bottleneck width d (Xie et al. Table 1).
        variant: ``"v1.5"`` (torchvision) or ``"v1"`` (the 2015 paper).
        block_form: ResNeXt Fig. 3 form ``"a"``, ``"b"`` or ``"c"`` (grouped convolution).
        attention_position: ``"standard"``, ``"pre"``, ``"post"`` or ``"identity"`` (SENet Table 14).
        attention_stages: stage numbers 1-4 that get attention (``None``: all; SENet Table 13).
        preact: ResNet v2's full pre-activation units; the stem is a bare 7x7 convolution and max pool,
            and a final BN-ReLU (``norm``) follows the last unit (the layout of timm's ``resnetv2_50``).
        shortcut: ``"identity"`` (projection where the shape changes) or ``"none"``: the plain network of
            the ResNet paper (Table 2, Fig. 4: plain-34 trains worse than plain-18), without projections.
    """

    def __init__(self, block, layers, *, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3,
                 groups=1, width_per_group=64, variant="v1.5", block_form="c", zero_init_residual=False,
                 drop_rate=0.0, attention_position="standard", attention_stages=None, preact=False,
                 shortcut="identity"):
        super().__init__()
        if shortcut not in IMAGENET_SHORTCUTS:
            raise ExciteError(f"shortcut={shortcut!r} is not valid; expected one of {', '.join(IMAGENET_SHORTCUTS)}")
        if shortcut == "none" and attention_position == "identity":
            raise ExciteError("attention_position='identity' needs a shortcut; this network has shortcut='none'")
        self.plain, self.preact = shortcut == "none", bool(preact)
        if variant not in VARIANTS:
            raise ExciteError(f"variant={variant!r} is not valid; expected one of {', '.join(VARIANTS)}")
        if block_form not in BLOCK_FORMS:
            raise ExciteError(f"block_form={block_form!r} is not valid; expected one of {', '.join(BLOCK_FORMS)}")
        check_range("groups", groups, low=1)
        check_range("width_per_group", width_per_group, low=1)
        check_range("drop_rate", drop_rate, low=0, high=1)
        self.block_kwargs = dict(groups=groups, base_width=width_per_group, variant=variant,
                                 attn_position=_check_position(attention_position))
        self.attention_stages = _check_stages(attention_stages, 4)
        if block_form != "c":  # ResNeXt Fig. 3 (a)/(b): the same function as the grouped form (c)
            if block is not Bottleneck:
                raise ExciteError(f"block_form={block_form!r} needs a bottleneck ResNet/ResNeXt")
            if preact:
                raise ExciteError(f"block_form={block_form!r} has no pre-activation form; use block_form='c'")
            block, self.block_kwargs["form"] = AggregatedBottleneck, block_form
        block = _PREACT_BLOCKS[block] if preact else block
        self.attention, self.attention_kwargs = attention, dict(attention_kwargs or {})
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64) if not preact else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stage=0)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, stage=1)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, stage=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, stage=3)
        self.num_features = 512 * block.expansion
        if preact:  # v2: the last unit's sum is un-activated; one BN-ReLU before the pooling
            self.norm = nn.BatchNorm2d(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop_rate = drop_rate
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        _init_weights(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1, stage=0):
        downsample = None
        out = planes * block.expansion
        if (stride != 1 or self.inplanes != out) and not self.plain:
            # v2: the projection reads the pre-activated input, so it needs no BN of its own.
            bn = [] if self.preact else [nn.BatchNorm2d(out)]
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), *bn)
        layers = []
        on = self.attention_stages is None or stage + 1 in self.attention_stages
        for i in range(blocks):
            # SE-PRE acts on the unit's input, so it is built for the input's channels.
            c = self.inplanes if self.block_kwargs["attn_position"] == "pre" else out
            attn = make_attention(self.attention, c, self.attention_kwargs, stage=stage, num_stages=4) if on else None
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                                attn=attn, **self.block_kwargs))
            layers[-1].plain = self.plain
            self.inplanes = out
        return nn.Sequential(*layers)

    def forward_features(self, x):
        if self.preact:  # v2: a bare convolution; the first unit starts with BN-ReLU
            x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(self.conv1(x))))))
            return self.relu(self.norm(x))
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = torch.flatten(self.avgpool(x), 1)
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x
        return x if pre_logits else self.fc(x)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's initialisation: He normal (fan_out) for convolutions, BN set to the identity.

    Attention modules keep their own initialisation (:func:`excite.attention.init_attention`).
    """
    skip = inside_attention(model)
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Goyal et al. 2017 (sec. 5.1): zero the last BN's scale so every block starts as the identity.
        for m in model.modules():
            if isinstance(m, PreActBottleneck):  # no BN after the last conv: zero the conv (timm)
                nn.init.zeros_(m.conv3.weight)
            elif isinstance(m, PreActBasicBlock):
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, (Bottleneck, AggregatedBottleneck)):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock) or (isinstance(m, CifarBasicBlock) and m.act_order != "bn_after_add"):
                nn.init.zeros_(m.bn2.weight)  # bn_after_add: bn2 follows the addition, zeroing it kills the unit
    init_attention(model)


# ---------------------------------------------------------------------- ResNeXt block-form conversion


def convert_resnext_form(state_dict_or_model, src_form: str, dst_form: str, *, groups: int | None = None) -> dict:
    """Map a ResNeXt ``state_dict`` (or a model's) between the block forms of the ResNeXt paper's Fig. 3.

    The three forms compute the same function with the weights laid out differently: path i of (a)/(b)
    owns output channels ``[i*d, (i+1)*d)`` of the first 1x1 and of the grouped 3x3 of (c), and the
    matching slice of their BN parameters and statistics (BN is per channel, so it splits exactly);
    (b)'s single last 1x1 is (c)'s ``conv3``, and (a)'s per-path last 1x1 are its column blocks.
    Every other entry (stem, shortcuts, ``bn3``, attention, classifier) is copied unchanged.

    Args:
        state_dict_or_model: a ``state_dict`` or an ``nn.Module`` built with ``block_form=src_form``.
        src_form, dst_form: ``"a"``, ``"b"`` or ``"c"``.
        groups: the cardinality C; inferred from the weights when ``None``.

    Returns:
        A new ``state_dict`` for the same architecture built with ``block_form=dst_form``.
    """
    sd = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, nn.Module) else state_dict_or_model
    for f in (src_form, dst_form):
        if f not in BLOCK_FORMS:
            raise ExciteError(f"block form {f!r} is not valid; expected one of {', '.join(BLOCK_FORMS)}")
    if groups is None:
        groups = _infer_groups(sd, src_form)
    grouped = _to_grouped(sd, src_form, groups) if src_form != "c" else dict(sd)
    return _from_grouped(grouped, dst_form, groups) if dst_form != "c" else grouped


def _infer_groups(sd: dict, form: str) -> int:
    # (c): the grouped 3x3 weight is (width, width / C, 3, 3); (a)/(b): count the paths of one block.
    if form == "c":
        w = next(v for k, v in sd.items() if k.startswith("layer1.0.conv2.weight"))
        return w.shape[0] // w.shape[1]
    return len({k.split(".")[3] for k in sd if k.startswith("layer1.0.paths.")})


_BN = ("weight", "bias", "running_mean", "running_var")


def _block_prefixes(sd: dict, marker: str) -> list[str]:
    return sorted({k[: k.index(marker)] for k in sd if marker in k})


def _to_grouped(sd: dict, src: str, g: int) -> dict:
    out = {}
    prefixes = _block_prefixes(sd, "paths.0.conv1.weight")
    for k, v in sd.items():
        if not any(k.startswith(p + "paths.") or k.startswith(p + "proj") for p in prefixes):
            out[k] = v
    for p in prefixes:
        path = lambda i, name: sd[f"{p}paths.{i}.{name}"]  # noqa: E731
        out[p + "conv1.weight"] = torch.cat([path(i, "conv1.weight") for i in range(g)], 0)
        out[p + "conv2.weight"] = torch.cat([path(i, "conv2.weight") for i in range(g)], 0)
        for bn_src, bn_dst in (("bn1", "bn1"), ("bn2", "bn2")):
            for t in _BN:
                out[f"{p}{bn_dst}.{t}"] = torch.cat([path(i, f"{bn_src}.{t}") for i in range(g)], 0)
            out[f"{p}{bn_dst}.num_batches_tracked"] = path(0, f"{bn_src}.num_batches_tracked")
        if src == "a":
            out[p + "conv3.weight"] = torch.cat([sd[f"{p}proj.{i}.weight"] for i in range(g)], 1)
        else:
            out[p + "conv3.weight"] = sd[p + "proj.weight"]
    return out


def _from_grouped(sd: dict, dst: str, g: int) -> dict:
    out = {}
    prefixes = [p for p in _block_prefixes(sd, "conv2.weight") if sd[p + "conv2.weight"].shape[1] * g ==
                sd[p + "conv2.weight"].shape[0] and p.startswith("layer")]
    owned = {p + n for p in prefixes for n in ("conv1.weight", "conv2.weight", "conv3.weight")}
    owned |= {f"{p}{bn}.{t}" for p in prefixes for bn in ("bn1", "bn2") for t in (*_BN, "num_batches_tracked")}
    out.update({k: v for k, v in sd.items() if k not in owned})
    for p in prefixes:
        d = sd[p + "conv2.weight"].shape[1]
        for i in range(g):
            rows = slice(i * d, (i + 1) * d)
            out[f"{p}paths.{i}.conv1.weight"] = sd[p + "conv1.weight"][rows].clone()
            out[f"{p}paths.{i}.conv2.weight"] = sd[p + "conv2.weight"][rows].clone()
            for bn in ("bn1", "bn2"):
                for t in _BN:
                    out[f"{p}paths.{i}.{bn}.{t}"] = sd[f"{p}{bn}.{t}"][rows].clone()
                out[f"{p}paths.{i}.{bn}.num_batches_tracked"] = sd[f"{p}{bn}.num_batches_tracked"].clone()
            if dst == "a":
                out[f"{p}proj.{i}.weight"] = sd[p + "conv3.weight"][:, rows].clone()
        if dst == "b":
            out[p + "proj.weight"] = sd[p + "conv3.weight"].clone()
    return out


# -------------------------------------------------------------------------------------- CIFAR ResNets


class CifarBasicBlock(ResidualAttention, nn.Module):
    """ResNet paper section 4.2 block with option-A shortcuts: stride-2 subsampling, zero-padded channels.

    ``act_order`` places BN and ReLU as in one of ResNet v2's Fig. 4 units (see ``ACT_ORDERS``);
    ``"full_preact"`` (``preact=True``) is its pre-activation unit, BN-ReLU-conv twice, the addition
    left un-activated. ``shortcut`` is one of its Fig. 2 shortcuts (see ``SHORTCUTS``); the gates and the
    1x1 conv are the only variants with parameters (a 1x1 conv from the input, the gates with a bias
    initialised to ``gate_bias``, by default the value of the Table 1 row: -6 exclusive, 0 shortcut-only).
    Attention sits at the end of the residual branch (whatever that branch's last layer is), or where
    ``attn_position`` puts it.
    """

    def __init__(self, inplanes, planes, stride=1, *, attn=None, preact=False, act_order=None,
                 shortcut="identity", gate_bias=None, attn_position="standard"):
        super().__init__()
        self.act_order = _act_order(preact, act_order)
        self.preact = self.act_order == "full_preact"
        if shortcut not in SHORTCUTS:
            raise ExciteError(f"shortcut={shortcut!r} is not valid; expected one of {', '.join(SHORTCUTS)}")
        self.shortcut_kind = shortcut
        self.attn_position = _check_position(attn_position)
        if shortcut == "none" and attn_position == "identity":
            raise ExciteError("attention_position='identity' needs a shortcut; this network has shortcut='none'")
        self.pad = planes - inplanes  # option A: extra channels are zeros, no parameters
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(inplanes if self.preact else planes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.conv2 = conv3x3(planes, planes)
        # The second BN: after conv2 (original, relu_*), before conv2 (full_preact) or after the addition
        # (bn_after_add); always ``planes`` channels, so every order has the same parameter count.
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.attn = attn
        if shortcut in ("exclusive_gate", "shortcut_gate"):
            # g(x) = sigmoid(1x1 conv(x) + b_g): C_in x C_out weights + C_out biases (Fig. 2c/d).
            self.gate = nn.Conv2d(inplanes, planes, 1, stride, bias=True)
            nn.init.constant_(self.gate.bias, _GATE_BIAS[shortcut] if gate_bias is None else gate_bias)
        elif shortcut == "conv":
            self.proj = conv1x1(inplanes, planes, stride)  # Fig. 2e: a 1x1 conv replaces the identity
        elif shortcut == "dropout":
            self.drop = nn.Dropout(0.5)  # Fig. 2f

    def shortcut(self, x):
        """The identity path before any gating: option A (subsample, zero-pad) or Fig. 2e's 1x1 conv."""
        if self.shortcut_kind == "conv":
            return self.proj(x)
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def residual(self, x):
        """F(x): the residual branch in the block's activation order, up to where attention sits."""
        o, relu = self.act_order, self.relu
        if o == "full_preact":
            return self.conv2(relu(self.bn2(self.conv1(relu(self.bn1(x))))))
        if o == "relu_preact":
            return self.bn2(self.conv2(relu(self.bn1(self.conv1(relu(x))))))
        out = self.conv2(relu(self.bn1(self.conv1(x))))
        if o == "bn_after_add":
            return out
        out = self.bn2(out)
        return relu(out) if o == "relu_before_add" else out

    def forward(self, x):
        out = self.residual(self.attn_in(x))
        k = self.shortcut_kind
        if k == "identity":
            out = self.attend_add(out, self.shortcut(x))
        else:
            if self.attn is not None and self.attn_position == "standard":
                out = self.attn(out)
            s = self.shortcut(x) if k != "none" else None
            if self.attn is not None and self.attn_position == "identity":
                s = self.attn(s)
            if k == "scale":  # Fig. 2b: both paths halved
                out = 0.5 * out + 0.5 * s
            elif k == "scale_shortcut":  # Table 1's shortcut-only row: 0.5 x, F unscaled
                out = out + 0.5 * s
            elif k == "none":  # the plain network: no addition at all
                pass
            elif k == "exclusive_gate":  # Fig. 2c
                g = torch.sigmoid(self.gate(x))
                out = g * out + (1 - g) * s
            elif k == "shortcut_gate":  # Fig. 2d
                out = out + (1 - torch.sigmoid(self.gate(x))) * s
            elif k == "dropout":
                out = out + self.drop(s)
            else:  # conv
                out = out + s
        if self.act_order == "original":
            out = self.relu(out)
        elif self.act_order == "bn_after_add":
            out = self.relu(self.bn2(out))
        return self.attn_out(out)


def _act_order(preact: bool, act_order: str | None) -> str:
    """``preact=True`` is the name for ``act_order="full_preact"``; ``None`` follows ``preact``."""
    if act_order is None:
        return "full_preact" if preact else "original"
    if act_order not in ACT_ORDERS:
        raise ExciteError(f"act_order={act_order!r} is not valid; expected one of {', '.join(ACT_ORDERS)}")
    if preact and act_order != "full_preact":
        raise ExciteError(f"preact=True is act_order='full_preact'; it cannot be combined with act_order={act_order!r}")
    return act_order


class CifarResNet(ClassifierNet):
    """The 6n+2-layer CIFAR ResNets: 3x3 stem with 16 channels, three stages of n blocks with 16/32/64
    channels (strides 1, 2, 2), global average pooling and a linear classifier (ResNet paper section 4.2).

    ``act_order``, ``shortcut`` and ``gate_bias`` are ResNet v2's unit variants (``CifarBasicBlock``);
    ``attention_position`` and ``attention_stages`` (1-3) place the attention (SENet Tables 13, 14);
    ``depth_mult``, ``width_mult`` and ``resolution_mult`` are EfficientNet's compound-scaling
    factors d, w, r (see :mod:`excite.profiling.scaling`): ``ceil(n * d)`` blocks per stage, ``round(c * w)``
    channels, and the input resized by ``r`` (bilinear) on entry, so a model trained on 32x32 images
    sees them at ``32 r`` as a network fed larger images would.
    """

    def __init__(self, n: int, *, attention=None, attention_kwargs=None, num_classes=10, in_chans=3,
                 preact=False, zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
                 attention_position="standard", attention_stages=None, depth_mult: float = 1.0,
                 width_mult: float = 1.0, resolution_mult: float = 1.0):
        super().__init__()
        check_range("n", n, low=1)
        check_range("depth_mult", depth_mult, low=1e-3)
        check_range("width_mult", width_mult, low=1e-3)
        check_range("resolution_mult", resolution_mult, low=1e-3)
        n = max(1, math.ceil(n * depth_mult - 1e-9))  # EfficientNet's ceil(d * repeats); 1e-9: 3 * 1.0 stays 3
        self.n, self.resolution_mult = n, float(resolution_mult)
        self.act_order = _act_order(preact, act_order)
        self.preact = self.act_order == "full_preact"
        _check_position(attention_position)
        self.attention_stages = _check_stages(attention_stages, 3)
        c1, c2, c3 = (max(1, round(c * width_mult)) for c in (16, 32, 64))
        self.conv1 = conv3x3(in_chans, c1)
        # Full pre-activation puts BN-ReLU after the last unit instead of after the stem convolution;
        # ReLU-only pre-activation keeps the stem's BN-ReLU (the paper's "first activation right after
        # conv1", sec. 4.1) and ends with an extra ReLU after the last addition.
        self.bn1 = nn.BatchNorm2d(c1) if not self.preact else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        inplanes, stages = c1, []
        for stage, (planes, stride) in enumerate(((c1, 1), (c2, 2), (c3, 2))):
            on = self.attention_stages is None or stage + 1 in self.attention_stages
            blocks = []
            for i in range(n):
                c = inplanes if attention_position == "pre" else planes
                attn = make_attention(attention, c, attention_kwargs, stage=stage, num_stages=3) if on else None
                blocks.append(CifarBasicBlock(inplanes, planes, stride if i == 0 else 1, attn=attn,
                                              act_order=self.act_order, shortcut=shortcut, gate_bias=gate_bias,
                                              attn_position=attention_position))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = nn.BatchNorm2d(c3) if self.preact else nn.Identity()
        self.num_features = c3
        self.fc = nn.Linear(c3, num_classes) if num_classes else nn.Identity()
        _init_weights(self, zero_init_residual)

    def forward_features(self, x):
        if self.resolution_mult != 1.0:  # compound scaling's r: the image at r times its side
            x = F.interpolate(x, scale_factor=self.resolution_mult, mode="bilinear", align_corners=False)
        if self.preact:  # v2: the stem is a bare convolution; the first unit starts with BN-ReLU
            x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
            return self.relu(self.bn_final(x))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.relu(x) if self.act_order == "relu_preact" else x


# ------------------------------------------------------------------------------------------- builders
# Keyword-only builders whose signatures list every option, so that create_model can name the valid
# ones; the ImageNet builders pass their own arguments (``**locals()``) straight on to ``ResNet``.

_PAPER_RESNET = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
_PAPER_RESNEXT = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"
_PAPER_WRN = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet18(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
             zero_init_residual=False, drop_rate=0.0, attention_position="standard",
             attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2] (ResNet paper Table 1)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **locals())


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet34(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
             zero_init_residual=False, drop_rate=0.0, attention_position="standard",
             attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3] (ResNet paper Table 1)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **locals())


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet50(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
             zero_init_residual=False, drop_rate=0.0, attention_position="standard",
             attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3] (ResNet paper Table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **locals())


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet101(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
              zero_init_residual=False, drop_rate=0.0, attention_position="standard",
              attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3] (ResNet paper Table 1)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **locals())


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet152(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
              zero_init_residual=False, drop_rate=0.0, attention_position="standard",
              attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3] (ResNet paper Table 1)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), **locals())


@register_model(family="resnet", paper=_PAPER_RESNET)
def resnet200(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
              zero_init_residual=False, drop_rate=0.0, attention_position="standard",
              attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """ResNet-200: bottleneck blocks [3, 24, 36, 3] (ResNet v2 Table 5; timm's 64,673,832 parameters)."""
    return ResNet(Bottleneck, (3, 24, 36, 3), **locals())


# ResNeXt "CxWd": cardinality C, bottleneck width d per path (ResNeXt paper Table 1 and section 5.1).


@register_model(family="resnext", paper=_PAPER_RESNEXT)
def resnext50_32x4d(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                    block_form="c", groups=32, width_per_group=4, zero_init_residual=False,
                    drop_rate=0.0, attention_position="standard", attention_stages=None, preact=False,
                    shortcut="identity") -> ResNet:
    """ResNeXt-50 (32x4d): the ResNet-50 layout with 32 paths of width 4 (ResNeXt paper Table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **locals())


@register_model(family="resnext", paper=_PAPER_RESNEXT)
def resnext101_32x4d(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                     block_form="c", groups=32, width_per_group=4, zero_init_residual=False,
                     drop_rate=0.0, attention_position="standard", attention_stages=None, preact=False,
                     shortcut="identity") -> ResNet:
    """ResNeXt-101 (32x4d): the ResNet-101 layout with 32 paths of width 4 (ResNeXt paper Table 4;
    timm's 44,177,704 parameters). Its Table 4: better than ResNet-200 at about half the complexity."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **locals())


@register_model(family="resnext", paper=_PAPER_RESNEXT)
def resnext101_32x8d(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                     block_form="c", groups=32, width_per_group=8, zero_init_residual=False,
                     drop_rate=0.0, attention_position="standard", attention_stages=None, preact=False,
                    shortcut="identity") -> ResNet:
    """ResNeXt-101 (32x8d): the ResNet-101 layout with 32 paths of width 8 (ResNeXt paper Table 5)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **locals())


@register_model(family="resnext", paper=_PAPER_RESNEXT)
def resnext101_64x4d(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                     block_form="c", groups=64, width_per_group=4, zero_init_residual=False,
                     drop_rate=0.0, attention_position="standard", attention_stages=None, preact=False,
                    shortcut="identity") -> ResNet:
    """ResNeXt-101 (64x4d): the ResNet-101 layout with 64 paths of width 4 (ResNeXt paper Table 5)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **locals())


# Wide ResNet-50/101-2: torchvision's bottleneck ResNets with the 3x3 (and first 1x1) twice as wide;
# the outer 1x1 widths are unchanged (the WRN paper widens basic-block CIFAR nets the same way).


@register_model(family="wide-resnet", paper=_PAPER_WRN)
def wide_resnet50_2(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                    zero_init_residual=False, drop_rate=0.0, attention_position="standard",
                    attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with bottleneck width 128 instead of 64."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width_per_group=128, **locals())


@register_model(family="wide-resnet", paper=_PAPER_WRN)
def wide_resnet101_2(*, attention=None, attention_kwargs=None, num_classes=1000, in_chans=3, variant="v1.5",
                     zero_init_residual=False, drop_rate=0.0, attention_position="standard",
                    attention_stages=None, preact=False, shortcut="identity") -> ResNet:
    """Wide ResNet-101-2: ResNet-101 with bottleneck width 128 instead of 64."""
    return ResNet(Bottleneck, (3, 4, 23, 3), width_per_group=128, **locals())


# CIFAR ResNets, ResNet paper section 4.2: depth 6n+2, n blocks per stage; Table 6 lists
# n = 3, 5, 7, 9, 18 and 200 (0.27M to 19.4M parameters).


def _cifar(n: int, **kwargs):
    return CifarResNet(n, **kwargs)


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet20(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
             zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
             attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
             resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-20 (n=3, 0.27M parameters), option-A shortcuts."""
    return _cifar(3, **locals())


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet32(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
             zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
             attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
             resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-32 (n=5, 0.46M parameters), option-A shortcuts."""
    return _cifar(5, **locals())


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet44(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
             zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
             attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
             resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-44 (n=7, 0.66M parameters), option-A shortcuts."""
    return _cifar(7, **locals())


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet56(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
             zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
             attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
             resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-56 (n=9, 0.85M parameters), option-A shortcuts."""
    return _cifar(9, **locals())


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet110(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
              zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
              attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
              resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-110 (n=18, 1.7M parameters), option-A shortcuts."""
    return _cifar(18, **locals())


@register_model(family="resnet-cifar", input_size=(3, 32, 32), paper=_PAPER_RESNET)
def resnet1202(*, attention=None, attention_kwargs=None, num_classes=10, in_chans=3, preact=False,
               zero_init_residual=False, act_order=None, shortcut="identity", gate_bias=None,
               attention_position="standard", attention_stages=None, depth_mult=1.0, width_mult=1.0,
              resolution_mult=1.0) -> CifarResNet:
    """CIFAR ResNet-1202 (n=200, 19.4M parameters), option-A shortcuts."""
    return _cifar(200, **locals())
