"""Residual Attention Network: counts against the released prototxt, the mask, attention residual learning."""

import pytest
import torch

import excite
from excite.models.residual_attention import AttentionModule, PreActBottleneck, ResidualAttentionNet, SoftMaskBranch
from excite.profiling.papers import paper_table

# Counted from the authors' imagenet_model/Attention-{56,92}-deploy.prototxt (conv weights, BN scale and
# shift, the classifier; conv+fc multiply-adds at 224x224) by a separate prototxt reader, not by excite.
PROTOTXT = {"residual_attention56": (31_810_728, 6_270_836_736), "residual_attention92": (52_466_344, 10_533_789_696)}


@pytest.mark.parametrize("name", sorted(PROTOTXT))
def test_imagenet_counts_equal_the_released_prototxt(name):
    with torch.device("meta"):
        m = excite.create_model(name)
    p = excite.profile(m, input_size=(3, 224, 224))
    assert (p.params, p.macs) == PROTOTXT[name]
    assert p.unsupported == {}  # the mask's bilinear upsampling is counted


def test_paper_table_rows_are_ours_or_explained():
    table, rows = paper_table("residual-attention")
    by = {r.label: r for r in rows}
    assert by["Attention-56"].params == 31_810_728 and by["Attention-92"].params == 52_466_344
    assert by["Attention-92 (CIFAR)"].params == 2_240_026
    assert all(r.gap for r in rows if "gap" in str(r.params_status) + str(r.complexity_status))


def test_attention92_has_1_2_3_modules_and_mask_depths_3_2_1():
    with torch.device("meta"):
        m = excite.create_model("residual_attention92")
    mods = [[x for x in stage if isinstance(x, AttentionModule)] for stage in m.stages[:3]]
    assert [len(s) for s in mods] == [1, 2, 3]
    assert [len(s[0].mask.down) for s in mods] == [3, 2, 1]
    # the prototxt's mask units: A: down 1+1+2, skip 2, up 2 (8); B: down 1+2, skip 1, up 1 (5); C: down 2
    units = [sum(isinstance(u, PreActBottleneck) for u in s[0].mask.modules()) for s in mods]
    assert units == [8, 5, 2]


def test_soft_mask_returns_to_the_input_size_through_ceil_pooling():
    mask = SoftMaskBranch(8, 3, lambda: PreActBottleneck(8, 8))
    for side in (56, 32, 15):  # 15 -> 8 -> 4 -> 2 with Caffe's ceil rounding
        out = mask(torch.randn(2, 8, side, side))
        assert out.shape == (2, 8, side, side) and bool(((out > 0) & (out < 1)).all())


def test_attention_residual_learning_keeps_the_trunk_when_the_mask_is_zero():
    """H = (1 + M) * T: with the mask's last conv zeroed the mask is sigmoid(0) = 0.5 everywhere, so the
    module's last unit sees exactly 1.5 x the trunk's output."""
    torch.manual_seed(0)
    mod = AttentionModule(8, 1, lambda: PreActBottleneck(8, 8)).eval()
    with torch.no_grad():
        mod.mask.head[-2].weight.zero_()
        seen = {}

        def record(m, inp, out):
            seen["in"] = inp[0]

        mod.last.register_forward_hook(record)
        x = torch.randn(1, 8, 12, 12)
        mod(x)
        torch.testing.assert_close(seen["in"], 1.5 * mod.trunk(mod.first(x)))


def _small(attention="none", **kw):
    """The CIFAR layout (masks of depth 3/2/1) at a sixteenth of the width: same code paths, fast."""
    return ResidualAttentionNet((1, 1, 1), widths=(16, 32, 64), depths=(3, 2, 1), stem="cifar", stem_width=8, tail=0,
                                attention=attention, num_classes=10, **kw)


@pytest.mark.parametrize("attention", ["none", "se", "eca", "cbam"])
def test_residual_attention_trains_with_every_attention(attention):
    torch.manual_seed(0)
    m = _small(attention, attention_kwargs={"reduction": 4} if attention == "se" else None)
    out = m(torch.randn(2, 3, 16, 16))  # masks go down to 2x2
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())  # every mask, trunk and attention module used
    units = [mod for mod in m.modules() if isinstance(mod, PreActBottleneck)]
    assert all((u.attn is None) == (attention == "none") for u in units)


def test_cifar_attention92_runs():
    m = excite.create_model("residual_attention92_cifar").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_small_imagenet_layout_runs_at_a_small_size():
    """The ImageNet layout (7x7 stem, four stages) at 64 px with narrow widths: shapes end to end."""
    m = ResidualAttentionNet((1, 1, 1), widths=(16, 32, 64, 128), stem_width=8, num_classes=5)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_onnx_export_matches_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    from excite.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    m = _small().eval()
    r = export_onnx(m, str(tmp_path / "ran.onnx"), input_size=(3, 16, 16))
    assert r.max_rel_err < 1e-4, r.summary()
