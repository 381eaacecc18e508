"""Attention modules: the contract, closed-form parameter counts (ECA-Net Table 2) and the ECA kernel rule."""

import math

import pytest
import torch

import excite
from excite.attention import ECA, ECANS, eca_kernel_size
from excite.core.errors import ExciteError


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", excite.list_attention())
@pytest.mark.parametrize("channels", [16, 64])
def test_contract_shape_and_gradient(name, channels):
    m = excite.create_attention(name, channels)
    x = torch.randn(2, channels, 5, 7, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for p in m.parameters():  # every parameter is used (timm's num_params == num_params_with_grad check)
        assert p.grad is not None, name


# ECA-Net Table 2, for one block with C channels (biases only in SE).
C = 256
TABLE2 = {
    ("se", ()): 2 * C * C // 16 + C // 16 + C,
    ("se", (("bias", False),)): 2 * C * C // 16,
    ("se_var1", ()): 0,
    ("se_var2", ()): C,
    ("se_var3", ()): C * C,
    ("se_gc", (("groups", 16),)): C * C // 16,  # SE-GC1
    ("se_gc", (("group_size", 16),)): 16 * C,  # SE-GC2: C/16 groups
    ("se_gc", (("group_size", 8),)): 8 * C,  # SE-GC3: C/8 groups
    ("eca_ns", (("k_size", 3),)): 3 * C,
    ("eca", (("k_size", 3),)): 3,
    ("eca", ()): 5,  # psi(256) = 5
}


@pytest.mark.parametrize("key", TABLE2, ids=lambda k: k[0] + "".join(f"-{a}{b}" for a, b in k[1]))
def test_table2_parameter_counts(key):
    name, kw = key
    assert n_params(excite.create_attention(name, C, **dict(kw))) == TABLE2[key]


def test_se_reduction_sets_hidden_width():
    for r in (2, 4, 8, 16, 32):
        m = excite.create_attention("se", 512, reduction=r)
        assert m.fc1.out_channels == 512 // r


def test_cbam_parameters_follow_the_paper():
    # Channel MLP shared by avg and max paths: 2 C^2/r + biases; spatial: 2*7*7 conv (no bias) + BN(1).
    m = excite.create_attention("cbam", C)
    assert n_params(m) == 2 * C * C // 16 + C // 16 + C + 2 * 49 + 2
    assert n_params(excite.create_attention("cbam", C, arrangement="channel")) == 2 * C * C // 16 + C // 16 + C
    assert n_params(excite.create_attention("cbam", C, arrangement="spatial")) == 2 * 49 + 2


def test_cbam_arrangements_differ():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    outs = {}
    for a in ("channel-spatial", "spatial-channel", "parallel"):
        torch.manual_seed(1)
        outs[a] = excite.create_attention("cbam", 32, reduction=4, arrangement=a).eval()(x)
    assert not torch.allclose(outs["channel-spatial"], outs["spatial-channel"])
    assert not torch.allclose(outs["channel-spatial"], outs["parallel"])


def reference_k(c, gamma=2, b=1):
    # The ECA paper's formula |log2(C)/gamma + b/gamma|_odd, written independently of the module.
    t = int(abs(math.log(c, 2) / gamma + b / gamma))
    return t if t % 2 == 1 else t + 1


@pytest.mark.parametrize("c", [16, 24, 32, 40, 64, 96, 128, 192, 256, 320, 512, 1024, 1280, 2048])
def test_eca_adaptive_kernel_rule(c):
    assert eca_kernel_size(c) == reference_k(c)
    assert ECA(c).conv.weight.shape == (1, 1, reference_k(c))


def test_eca_kernel_sizes_of_resnet_stages():
    # ResNet-50 stage widths 256/512/1024/2048 -> k = 5, 5, 5, 7 (timm's resnet50_eca: 86 extra parameters).
    assert [eca_kernel_size(c) for c in (256, 512, 1024, 2048)] == [5, 5, 5, 7]


def test_eca_matches_reference_computation():
    # The official code: conv1d over avgpool(x).squeeze(-1).transpose(-1, -2), sigmoid, scale.
    torch.manual_seed(0)
    m = ECA(64, k_size=3)
    x = torch.randn(2, 64, 4, 4)
    y = torch.nn.functional.adaptive_avg_pool2d(x, 1)
    y = m.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    assert torch.allclose(m(x), x * torch.sigmoid(y).expand_as(x), atol=1e-6)


def test_eca_ns_with_shared_weights_equals_eca():
    torch.manual_seed(0)
    eca, ns = ECA(32, k_size=5), ECANS(32, k_size=5)
    with torch.no_grad():
        ns.weight.copy_(eca.conv.weight.view(1, 5).expand(32, 5))
    x = torch.randn(3, 32, 4, 4)
    assert torch.allclose(eca(x), ns(x), atol=1e-6)


@pytest.mark.parametrize(
    "name, kwargs, needle",
    [
        ("eca", {"k_size": 4}, "k_size=4"),
        ("eca", {"k_size": "big"}, "k_size='big'"),
        ("se", {"reduction": 0}, "reduction=0"),
        ("se", {"gate": "softmax"}, "gate='softmax'"),
        ("se_gc", {"groups": 3}, "groups=3"),
        ("cbam", {"arrangement": "diagonal"}, "arrangement='diagonal'"),
    ],
)
def test_invalid_arguments_name_the_argument(name, kwargs, needle):
    with pytest.raises(ExciteError, match=needle.replace("(", r"\(")):
        excite.create_attention(name, 64, **kwargs)


def test_unknown_attention_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean.*eca"):
        excite.create_attention("ecaa", 64)
    with pytest.raises(ExciteError, match="no argument 'k'"):
        excite.create_attention("eca", 64, k=3)


FUSABLE = [(n, {}) for n in ("se", "se_var1", "se_var2", "se_var3", "se_gc", "eca", "eca_ns")] + [
    ("cbam", {"arrangement": a}) for a in ("channel-spatial", "spatial-channel", "parallel", "channel", "spatial")]


@pytest.mark.parametrize("name,kwargs", FUSABLE, ids=lambda v: v if isinstance(v, str) else "-".join(v.values()))
def test_attention_forward_takes_the_activation_only(name, kwargs):
    """The module contract is forward(x): the residual fusion is the inference rewrite's job."""
    import inspect

    m = excite.create_attention(name, 32, **kwargs)
    assert list(inspect.signature(m.forward).parameters) == ["x"]
    assert not hasattr(m, "fuses_residual")


def test_cbam_channel_then_spatial_is_the_papers_order():
    """CBAM Eq. (1): F' = M_c(F) * F, F'' = M_s(F') * F'."""
    torch.manual_seed(0)
    m = excite.create_attention("cbam", 32, reduction=4).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        f1 = m.channel(x) * x
        torch.testing.assert_close(m(x), m.spatial(f1) * f1)
