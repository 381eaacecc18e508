"""excite.deploy: BN folding keeps outputs, ONNX export matches ONNX Runtime, bench reports what it says."""

from __future__ import annotations

import json
import operator
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import excite
from excite.cli import main
from excite.deploy.bench import attention_modules, bench, bench_variants, machine_info
from excite.deploy.onnx_export import export_onnx, quantize_int8
from excite.models.optimize import fold_batchnorm, fold_conv_bn, optimize_for_inference

# Models whose build alone takes seconds on 2 cores; the same code runs on their smaller siblings.
HEAVY = {"resnet1202", "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
         "wide_resnet101_2", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
         "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "densenet161", "densenet169", "densenet201",
         "resnet200", "resnext101_32x4d", "resnet1001", "resnext29_8x64d", "resnext29_16x64d"}
# Pre-activation networks: each unit's first BN reads the unit's input (no conv before it), so it stays.
PREACT = {"resnet164", "resnet1001"}


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding identity BNs can't pass by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.2 * (torch.rand(n, generator=g) - 0.5))
    return model.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def _densenet_preact_bns(name: str) -> int:
    from excite.models.densenet import CONFIGS

    if name not in CONFIGS:
        return 0
    blocks = CONFIGS[name][1]
    return sum(blocks) + (len(blocks) - 1) + 1


def _check_optimized(name: str, attention, size: int = 32) -> None:
    torch.manual_seed(0)
    # The Residual Attention Network's (1 + mask) products reach logits of 1e5 with random BN statistics,
    # where float32's different operation order alone differs by 1e-3 relative: it is checked in float64
    # (to rounding). The others stay in float32, where depthwise convolutions have fast kernels.
    dtype = torch.float64 if name.startswith("residual_attention") else torch.float32
    model = _randomize_bn(excite.create_model(name, attention=attention, num_classes=10)).to(dtype)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    opt = optimize_for_inference(model, channels_last=False)
    if name.startswith("stn"):  # the transformer's localisation net is sized for the model's own input
        size = model.default_input_size[-1]
    x = torch.randn(2, 3, size, size, dtype=dtype)
    with torch.no_grad():
        ref, got = model(x), opt(x)
    assert _rel_err(ref, got) < (1e-10 if dtype == torch.float64 else 1e-4)
    # Every BN of our backbones follows a conv and must be gone, except DenseNet's pre-activation BNs (they
    # read a concatenation): one per dense layer, one per transition and norm5 (DenseNet paper Table 1).
    preact = _densenet_preact_bns(name)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    assert left == opt.excite_unfolded_bn
    if name.startswith("residual_attention") or name in PREACT:  # pre-activation: BNs that read a unit's input
        assert left > 0
    elif name.startswith("sk"):  # a BN the pairing rule finds after two convolutions is folded into neither
        assert left < n_bn
    else:
        assert left == preact
    assert opt.excite_folded_bn == n_bn - left
    assert opt.excite_folded_bn > 0 or n_bn == 0  # stn_cnn, the STN paper's CNN, has no BatchNorm
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    if attention in ("se", "eca", "cbam") and "resne" in name:  # every residual block's rescale fused
        blocks = sum(getattr(m, "attn", None) is not None and hasattr(m, "attn_position") for m in model.modules())
        assert opt.excite_fused_attention == blocks > 0


def test_fused_blocks_compute_the_rescale_inside_the_addition():
    """After optimization a block runs attn's last multiply and the residual addition as one addcmul,
    written into the branch output; the attention module keeps its class and the state_dict its keys."""
    from excite.models.rewrite import rescale_add

    model = _randomize_bn(excite.create_model("resnet18", attention="eca", num_classes=10))
    opt = optimize_for_inference(model, channels_last=False)
    plain = optimize_for_inference(model, channels_last=False, fuse_attention=False)
    assert list(opt.state_dict()) == list(plain.state_dict())
    blocks = [m for m in opt.modules() if hasattr(m, "attn_position")]
    assert len(blocks) == 8 and all(isinstance(b.attn, excite.attention.ECA) for b in blocks)
    for b in blocks:
        calls = [n for n in b.graph.nodes if n.target is rescale_add]
        assert len(calls) == 1 and calls[0].args[3] is True  # into the conv output: nothing reads it later
        assert not any(n.target is operator.mul for n in b.graph.nodes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel_err(model(x), opt(x)) < 1e-4
    assert opt.excite_fused_attention == 8
    assert plain.excite_fused_attention == 0
    xg = x.clone().requires_grad_(True)  # with autograd recording, a new tensor, and the same gradient
    opt(xg).sum().backward()
    xp = x.clone().requires_grad_(True)
    plain(xp).sum().backward()
    torch.testing.assert_close(xg.grad, xp.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["se", "eca", "cbam"])
def test_bottleneck_squeeze_pools_the_narrow_input_of_conv3(attention):
    """mean(conv1x1(h)) = conv1x1(mean(h)): every bottleneck's squeeze reads conv3's input (a quarter of
    the channels), outputs and input gradients unchanged; the pool does not keep the rescale from being
    written into conv3's output (a new 51 MB output at batch 16 costs six times the arithmetic)."""
    from excite.models.rewrite import conv_relu, pool_through_conv, rescale_add

    model = _randomize_bn(excite.create_model("resnet50", attention=attention, num_classes=10))
    opt = optimize_for_inference(model, channels_last=False)
    blocks = [m for m in opt.modules() if hasattr(m, "attn_position")]
    assert len(blocks) == 16
    for b in blocks:
        pools = [n for n in b.graph.nodes if n.target is pool_through_conv]
        assert len(pools) == 1 and pools[0].args[0].target is conv_relu  # conv3's input: conv2 and its ReLU
        assert not any(n.target == "mean" and n.args[0].target == "conv3" for n in b.graph.nodes)
        fused = [n for n in b.graph.nodes if n.target is rescale_add]
        assert len(fused) == 1 and fused[0].args[3] is True
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel_err(model(x), opt(x)) < 1e-4
    # Gradients in float64: in float32 a ReLU or max of the gate whose input lands within rounding of
    # a kink can flip between the two ways of computing the pool, and move the gradient visibly.
    model, x = model.double(), x.double()
    opt = optimize_for_inference(model, channels_last=False)
    xg = x.clone().requires_grad_(True)
    opt(xg).sum().backward()
    xp = x.clone().requires_grad_(True)
    model(xp).sum().backward()
    assert _rel_err(xp.grad, xg.grad) < 1e-10


def test_pool_through_conv_only_where_the_identity_holds():
    """A padded 3x3 convolution (basic blocks) and a hooked one keep their pool; a grouped 1x1 convolution
    with or without bias is pooled through exactly."""
    from excite.models.rewrite import fuse_residual_blocks, pool_through_conv

    basic = optimize_for_inference(_randomize_bn(excite.create_model("resnet18", attention="se", num_classes=10)))
    assert not any(n.target is pool_through_conv for m in basic.modules() if hasattr(m, "graph") for n in m.graph.nodes)

    class Block(nn.Module):
        def __init__(self, groups, bias):
            super().__init__()
            self.conv = nn.Conv2d(8, 12, 1, groups=groups, bias=bias)
            self.attn = excite.create_attention("se", 12, reduction=4)

        def forward(self, x):
            return self.attn(self.conv(x)) + x.repeat(1, 2, 1, 1)[:, :12]

    x = torch.randn(3, 8, 5, 7)
    for groups, bias, hooked in [(1, True, False), (4, False, False), (2, True, True), (1, False, False)]:
        holder = nn.Sequential(Block(groups, bias)).eval()
        if hooked:
            holder[0].conv.register_forward_hook(lambda m, a, o: o * 2)
        with torch.no_grad():
            ref = holder(x)
        assert fuse_residual_blocks(holder) == 1
        pools = [n for n in holder[0].graph.nodes if n.target is pool_through_conv]
        assert len(pools) == (0 if hooked else 1)
        with torch.no_grad():
            torch.testing.assert_close(holder(x), ref, rtol=1e-5, atol=1e-6)


def test_rewrite_leaves_hooked_attention_and_unsafe_overwrites_alone():
    from excite.models.rewrite import fuse_residual_blocks, rescale_add

    model = _randomize_bn(excite.create_model("resnet20", attention="se", num_classes=10))
    seen = []
    model.layer1[0].attn.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    assert fuse_residual_blocks(model) == 8  # 9 blocks, the hooked one not fused
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert seen == [torch.Size([2, 16, 32, 32])]  # the hook still sees the attention's own output

    class Reads(nn.Module):  # the branch output is read again after the addition: never overwritten
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.attn = excite.create_attention("eca", 4)

        def forward(self, x):
            out = self.conv(x)
            return self.attn(out) + x, out

    holder = nn.Sequential(Reads()).eval()
    assert fuse_residual_blocks(holder) == 1
    node = next(n for n in holder[0].graph.nodes if n.target is rescale_add)
    assert node.args[3] is False
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        y, out = holder(x)
        torch.testing.assert_close(out, holder[0].conv(x))


def test_cbam_channel_gate_is_written_into_conv3_and_hooked_outputs_are_kept():
    """CBAM's channel-gated tensor (read by its spatial gate, so not fused with the addition) is
    computed in conv3's output; a conv output that a hook saw is never overwritten."""
    from excite.models.rewrite import fuse_residual_blocks, scale_into

    model = _randomize_bn(excite.create_model("resnet50", attention="cbam", num_classes=10))
    opt = optimize_for_inference(model, channels_last=False)
    for b in (m for m in opt.modules() if hasattr(m, "attn_position")):
        (node,) = [n for n in b.graph.nodes if n.target is scale_into]
        assert node.args[0].target == "conv3"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel_err(model(x), opt(x)) < 1e-4

    seen = []
    hooked = _randomize_bn(excite.create_model("resnet50", attention="cbam", num_classes=10))
    fold_batchnorm(hooked)  # conv3's output is then the tensor the gate scales
    hooked.layer1[0].conv3.register_forward_hook(lambda m, a, o: seen.append(o))
    fuse_residual_blocks(hooked)
    b = hooked.layer1[0]
    assert not any(n.target is scale_into for n in b.graph.nodes)
    inp = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        b(inp)
        torch.testing.assert_close(seen[0], b.conv3(b.relu(b.conv2(b.relu(b.conv1(inp))))))


@pytest.mark.parametrize("name", [n for n in excite.list_models() if n not in HEAVY])
def test_optimize_every_model_default_attention(name):
    _check_optimized(name, None)


# The heavy models' blocks are their lighter siblings' (tested above); one deep or wide network of each
# heavy family checks that nothing changes with depth and width. resnet1202 and resnet1001 (resnet20's
# and resnet164's units, 600 and 333 of them) take a minute each in float64.
HEAVY_CHECKED = {"resnet152", "resnet200", "resnext101_32x8d", "wide_resnet50_2", "efficientnet_b3", "densenet201",
                 "resnext29_8x64d"}


@pytest.mark.parametrize("name", sorted(HEAVY_CHECKED & set(excite.list_models())))
def test_optimize_heavy_models(name):
    _check_optimized(name, None)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "resnet20", "mobilenet_v2", "efficientnet_b0",
                                  "mobilenet_v3_small", "densenet121", "shufflenet_v2_x0_5"])
@pytest.mark.parametrize("attention", ["se", "eca", "cbam"])
def test_optimize_with_attention(name, attention):
    _check_optimized(name, attention)


def test_optimize_keeps_attention_attached_by_hooks_and_children():
    """attach() may hang attention on a BN (a hook or a child) or blend through a hook (identity init):
    neither BN folding nor the residual fusion may drop or bypass it."""
    from excite import attach

    torch.manual_seed(0)
    m = _randomize_bn(excite.create_model("resnet20", num_classes=10))
    attach(m, "se", init="identity", profile=False)
    for p in m.parameters():  # move the identity blend away from 1 so that the attention matters
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 32, 32)
    opt = optimize_for_inference(m, channels_last=False)
    with torch.no_grad():
        assert _rel_err(m(x), opt(x)) < 1e-4

    seq = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)))
    attach(seq, "eca", where=["1", "4"], profile=False)
    opt = optimize_for_inference(seq, channels_last=False)
    with torch.no_grad():
        assert _rel_err(seq(x), opt(x)) < 1e-4


def test_fold_conv_bn_matches_formula():
    # Hand-derived: BN(Wx + b) = gamma * (Wx + b - mu) / sqrt(var + eps) + beta.
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), _randomize_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        expect = (conv(x) - bn.running_mean[:, None, None]) * s[:, None, None] + bn.bias[:, None, None]
        fold_conv_bn(conv, bn)
        assert torch.allclose(conv(x), expect, atol=1e-5)


def test_fold_skips_conv_with_two_users():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    m = _randomize_bn(Branchy())
    assert fold_batchnorm(m) == 0


def test_fold_needs_eval_mode():
    with pytest.raises(excite.ExciteError, match="eval"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train())


def test_channels_last_options():
    m = excite.create_model("resnet20", attention="eca").eval()
    x = torch.randn(2, 3, 32, 32)
    for choice in (True, False, "auto", "measure"):
        o = optimize_for_inference(m, channels_last=choice)
        with torch.no_grad():
            assert _rel_err(m(x), o(x)) < 1e-4  # a contiguous input needs no conversion by the caller
    assert optimize_for_inference(m).excite_channels_last is True  # the rule: conv nets go channels-last
    assert optimize_for_inference(m, channels_last=False).excite_channels_last is False
    assert optimize_for_inference(nn.Sequential(nn.Linear(4, 4))).excite_channels_last is False
    with pytest.raises(excite.ExciteError, match="channels_last"):
        optimize_for_inference(m, channels_last="yes")


def test_channels_last_measure_decides_per_shape(monkeypatch):
    import excite.models.optimize as opt_mod

    calls = []

    def fake(model, x, reps=5):  # the decision for each shape, without timing anything
        calls.append(tuple(x.shape))
        return x.shape[0] > 1

    monkeypatch.setattr(opt_mod, "_faster_channels_last", fake)
    m = excite.create_model("resnet20", attention="eca").eval()
    o = optimize_for_inference(m, channels_last="measure")
    x1, x4 = torch.randn(1, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        o(x1)
        assert o.excite_channels_last is False and o.conv1.weight.is_contiguous()
        o(x4)
        assert o.excite_channels_last is True and o.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        o(x1), o(x4)
    assert calls == [(1, 3, 32, 32), (4, 3, 32, 32)]  # decided once per shape, then cached
    assert set(o.excite_format_cache.values()) == {False, True}
    with torch.no_grad():
        assert _rel_err(m(x1), o(x1)) < 1e-4


def test_channels_last_measure_times_the_real_input():
    m = excite.create_model("resnet20", attention="eca").eval()
    o = optimize_for_inference(m, channels_last="measure", example_input=torch.randn(2, 3, 32, 32))
    assert list(o.excite_format_cache) == [((2, 3, 32, 32), torch.float32, "cpu")]
    assert o.excite_channels_last == o.excite_format_cache[((2, 3, 32, 32), torch.float32, "cpu")]


@pytest.mark.parametrize("channels_last", [True, "measure"])
def test_optimized_model_works_with_grad_mode_on(channels_last):
    # A format switch inside inference mode used to make the weights inference tensors, and the
    # first call outside torch.no_grad() raised "Inference tensors cannot be saved for backward".
    m = _randomize_bn(excite.create_model("resnet20", attention="eca"))
    o = optimize_for_inference(m, channels_last=channels_last, example_input=torch.randn(1, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        o(x)
    y = o(x)  # grad mode on
    assert not y.requires_grad  # frozen parameters: no graph recorded
    assert all(not p.requires_grad for p in o.parameters())
    with torch.no_grad():
        ref = m(x)
    assert _rel_err(ref, y) < 1e-4
    xg = x.clone().requires_grad_()  # an input that wants a gradient still gets one (saliency maps)
    out = o(xg)
    out.sum().backward()
    assert xg.grad is not None and _rel_err(ref, out.detach()) < 1e-4


@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_export_onnx_matches_ort(tmp_path, attention):
    m = excite.create_model("resnet20", attention=attention).eval()
    r = export_onnx(m, str(tmp_path / "m.onnx"), input_size=(3, 32, 32), dynamic_batch=True)
    assert r.input_shape[0] == 2  # dynamic batch exercised with a batch other than the export one
    assert r.max_rel_err < 1e-4 and r.max_abs_err < 1e-3


def test_export_optimized_model_matches_original(tmp_path):
    import onnxruntime as ort

    m = _randomize_bn(excite.create_model("resnet20", attention="eca"))
    opt = optimize_for_inference(m, channels_last=False)
    path = str(tmp_path / "o.onnx")
    export_onnx(opt, path, input_size=(3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert _rel_err(m(x), torch.from_numpy(got)) < 1e-4


@pytest.mark.parametrize("batch", [1, 4])
def test_int8_quantization_reports(tmp_path, batch):
    import onnx

    m = excite.create_model("resnet20", attention="eca").eval()
    fp32 = str(tmp_path / "m.onnx")
    export_onnx(m, fp32, input_size=(3, 32, 32), batch_size=batch)  # a fixed batch is calibrated in whole batches
    q = quantize_int8(fp32, str(tmp_path / "m8.onnx"), input_size=32, num_calibration=8, num_eval=16, reps=1)
    ops = {n.op_type for n in onnx.load(q["path"]).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantized (QDQ format)
    assert 0.0 <= q["top1_agreement"] <= 1.0 and q["num_eval"] == 16
    assert q["speedup"] == pytest.approx(q["fp32_s"] / q["int8_s"])
    assert q["reduce_range"] is (not machine_info()["vnni"])  # 7-bit weights where u8 x s8 can saturate


def test_int8_calibration_methods_set_different_ranges(tmp_path):
    """The moving average of per-batch ranges is narrower than the global min-max over the same images."""
    import onnx
    from onnx import numpy_helper

    m = excite.create_model("resnet20", attention="eca").eval()
    fp32 = str(tmp_path / "m.onnx")
    export_onnx(m, fp32, input_size=(3, 32, 32), batch_size=4)

    def input_scale(method):
        q = quantize_int8(fp32, str(tmp_path / f"{method}.onnx"), input_size=32, num_calibration=16, num_eval=4,
                          reps=1, method=method)
        assert q["method"] == method
        g = onnx.load(q["path"]).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        first = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        return float(inits[first.input[1]])

    assert input_scale("moving-average") < input_scale("minmax")
    with pytest.raises(excite.ExciteError, match="calibration method 'kl'"):
        quantize_int8(fp32, str(tmp_path / "x.onnx"), input_size=32, method="kl")


def test_cli_export_int8(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["export", "onnx", "resnet20", str(out), "--attention", "eca", "--int8", "--num-calibration", "4",
                 "--num-eval", "4", "--calibration-method", "minmax"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "r.int8.onnx").exists() and "minmax ranges from 4 digits images" in text
    assert "top-1 agreement with fp32" in text


def test_cli_export_onnx(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["export", "onnx", "resnet20", str(out), "--attention", "eca", "--dynamic-batch"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "max abs err" in text and "max rel err" in text


def test_cli_export_from_checkpoint(tmp_path, capsys):
    ck = tmp_path / "m.safetensors"
    excite.save_model(excite.create_model("resnet20", attention="eca"), ck)
    assert main(["export", "onnx", str(ck), str(tmp_path / "c.onnx")]) == 0
    assert "max rel err" in capsys.readouterr().out


def test_cli_export_unknown_model(tmp_path, capsys):
    assert main(["export", "onnx", "resnet21", str(tmp_path / "x.onnx")]) == 2
    assert "resnet21" in capsys.readouterr().err


def test_attention_modules_found():
    # resnet20: 3 stages x 3 basic blocks, one attention module each (ResNet paper Table 6, n=3).
    assert len(attention_modules(excite.create_model("resnet20", attention="eca"))) == 9
    assert attention_modules(excite.create_model("resnet20")) == []


def test_bench_variants_report():
    a = excite.create_model("resnet20")
    b = excite.create_model("resnet20", attention="eca")
    r = bench_variants([("plain", a), ("eca", b)], batch_size=2, input_size=32, runs=3, warmup=1, measure_peak=False)
    assert [v.label for v in r.variants] == ["plain", "eca"]
    assert r.variants[0].ratio == 1.0
    for v in r.variants:
        assert v.runs == 3 and v.q25_s <= v.median_s <= v.q75_s
        assert v.img_per_s == pytest.approx(2 / v.median_s)
    assert r.variants[0].attention_share is None and 0 < r.variants[1].attention_share < 1
    assert "eca" in r.table()


def _two_logit_model(gap: float) -> nn.Module:
    fc = nn.Linear(3, 2)
    with torch.no_grad():
        fc.weight.fill_(1.0)
        fc.bias.copy_(torch.tensor([0.0, gap]))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()


def test_bf16_agreement_detects_flipped_predictions():
    from excite.deploy.bench import bf16_agreement

    # Logits a few units large differing by 1e-3: fp32 picks class 1, bf16 (8-bit mantissa) rounds them equal.
    assert bf16_agreement(_two_logit_model(1e-3), 16) < 0.5
    assert bf16_agreement(_two_logit_model(100.0), 16) == 1.0
    r = bench_variants([("m", _two_logit_model(100.0))], batch_size=2, input_size=16, runs=2, warmup=1,
                       dtype="bf16", measure_peak=False)
    assert r.variants[0].bf16_top1_agreement == 1.0 and "bf16 top-1 = fp32: 100%" in r.table()


def test_bench_train_mode_updates_weights():
    m = excite.create_model("resnet20", attention="eca")
    before = m.conv1.weight.detach().clone()
    bench_variants([("eca", m)], batch_size=2, input_size=32, runs=1, warmup=1, mode="train", measure_peak=False)
    assert not torch.equal(before, m.conv1.weight)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_bench_compiled_train_step_runs_the_compiled_graph():
    # In a fresh process: Inductor's compile workers and OpenMP state left by hundreds of earlier tests in
    # one pytest process crashed it once (a segfault in the full suite, never alone).
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from torch._dynamo.utils import counters
        import excite
        from excite.deploy.bench import bench_variants

        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), excite.create_attention("eca", 8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        before = m[0].weight.detach().clone()
        r = bench_variants([("eca", m)], batch_size=2, input_size=16, mode="train", runs=2, compile=True,
                           measure_peak=False)
        assert r.compiled and "torch.compile" in r.table()
        assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured the model
        assert not torch.equal(before, m[0].weight)  # the optimizer steps the module's own parameters
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_bench_compile_failure_is_one_line(monkeypatch):
    def broken(model, **_):
        def run(x):
            raise RuntimeError("C++ compile error\nlong log ...")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(excite.ExciteError, match=r"torch.compile failed \(RuntimeError: C\+\+ compile error\)"):
        bench_variants([("m", nn.Conv2d(3, 4, 1))], batch_size=1, input_size=8, runs=1, compile=True,
                       measure_peak=False)


def test_cli_bench_json(capsys):
    assert main(["bench", "resnet20", "--attention", "none", "eca", "--batch-size", "2", "--runs", "2",
                 "--warmup", "1", "--optimized", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [v["label"] for v in d["variants"]] == ["none eager", "none optimized", "eca eager", "eca optimized"]
    assert d["machine"]["cores"] >= 1 and d["peak_macs_per_s"] > 0


def test_cli_bench_bad_value(capsys):
    assert main(["bench", "resnet20", "--batch-size", "0"]) == 2
    assert "--batch-size: 0 is out of range" in capsys.readouterr().err


def test_machine_info_has_cpu_and_torch():
    info = machine_info()
    assert info["torch"] == torch.__version__ and info["cpu"]


def test_bench_train_mode_reports_attention_share():
    r = bench_variants([("none", excite.create_model("resnet20")), ("eca", excite.create_model("resnet20", attention="eca"))],
                       batch_size=2, input_size=16, runs=1, warmup=1, mode="train", measure_peak=False)
    assert r.variants[0].attention_share is None
    assert 0 < r.variants[1].attention_share < 1
    assert "forward+backward" in r.table()


def test_bf16_peak_is_never_below_fp32_peak(monkeypatch):
    import excite.deploy.bench as bench_mod

    monkeypatch.setattr(bench_mod, "matmul_peak", lambda dtype=torch.float32, **_: 4e8 if dtype == torch.bfloat16 else 1e11)
    r = bench_variants([("eca", excite.create_model("resnet20", attention="eca"))], batch_size=2, input_size=16,
                       runs=1, warmup=1, dtype="bf16")
    assert r.peak_macs_per_s == 1e11  # emulated bf16 (0.4 GMAC/s) would give "% peak" in the hundreds
    assert r.variants[0].peak_fraction < 1


def test_bench_optimized_variants_share_one_format():
    r = bench("resnet20", attention=["none", "eca"], optimized=True, batch_size=2, runs=1, warmup=1)
    assert [v.label for v in r.variants] == ["none eager", "none optimized", "eca eager", "eca optimized"]


def test_free_cores_and_auto_threads(monkeypatch):
    from excite.deploy import threads

    monkeypatch.delenv("EXCITE_THREADS", raising=False)
    assert threads.busy_cores(samples=2, interval=0) >= 0 and 1 <= threads.free_cores() <= threads.usable_cores()
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 1.0)
    assert threads.free_cores() == 1 and threads.auto_threads() == 1
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 5.0)
    assert threads.free_cores() == 1  # never below one
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 0.0)
    assert threads.auto_threads() == 2
    monkeypatch.setenv("EXCITE_THREADS", "3")
    assert threads.auto_threads() == 3


def test_export_openvino_matches_pytorch(tmp_path, capsys):
    pytest.importorskip("openvino")  # an optional peer (excite[openvino]); the ONNX path is always tested
    from excite.deploy.openvino_export import export_openvino

    m = _randomize_bn(excite.create_model("resnet20", attention="eca"))
    r = export_openvino(m, str(tmp_path / "m.xml"), input_size=(3, 32, 32), dynamic_batch=True)
    assert (tmp_path / "m.bin").exists() and r.input_shape[0] == 2
    assert r.max_rel_err < 1e-4 and r.max_abs_err < 1e-3
    assert main(["export", "openvino", "resnet20", str(tmp_path / "c.xml"), "--attention", "se"]) == 0
    assert "OpenVINO vs PyTorch" in capsys.readouterr().out
    with pytest.raises(excite.ExciteError, match=".xml"):
        export_openvino(m, str(tmp_path / "m.onnx"))


def test_time_interleaved_alternates_and_respects_budget():
    import time as _time

    from excite.deploy.bench import time_interleaved

    calls = []
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), _time.sleep(0.01))},
                         runs=50, warmup=1, budget_s=0.05, min_runs=2)
    assert calls[:6] == ["a", "b"] * 3  # warm-up, then rounds, interleaved
    assert 2 <= t["a"]["runs"] == t["b"]["runs"] < 50  # stopped by the budget, never below min_runs
    assert t["b"]["median_s"] >= 0.01 > t["a"]["median_s"]


def test_one_channel_models_export_and_bench_with_their_own_channels(tmp_path, capsys, monkeypatch):
    """A grayscale model file: every deploy command feeds it its own channel count, `--input-size N` keeps
    it, and an input size naming other channels is one line before anything is written."""
    monkeypatch.chdir(tmp_path)
    excite.save_model(excite.create_model("resnet20", in_chans=1), "gray.safetensors")
    assert main(["export", "onnx", "gray.safetensors", "gray.onnx", "--input-size", "40"]) == 0
    assert "input 1x1x40x40" in capsys.readouterr().out
    assert main(["bench", "gray.safetensors", "--batch-size", "1", "--runs", "1", "--warmup", "0",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == 32
    for cmd in (["export", "onnx", "gray.safetensors", "bad.onnx", "--input-size", "3x32x32"],
                ["bench", "gray.safetensors", "--input-size", "2x32x32"],
                ["export", "onnx", "gray.safetensors", "bad.onnx", "--int8"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "channel" in err, err
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.int8.onnx").exists()
    # a registered name takes its channels from the input size
    model = excite.resolve_model("resnet20", input_size=(1, 28, 28))
    assert model.conv1.in_channels == 1 and model.default_input_size == (1, 28, 28)


def test_prepacked_convolutions_keep_outputs_state_and_copies():
    """Large convolution weights are packed once per input shape and reused; outputs, state_dict keys,
    copies, pickles, new weights and autograd behave as with nn.Conv2d."""
    import copy
    import io

    from excite.models.prepack import PrepackedConv2d

    model = _randomize_bn(excite.create_model("resnet50", attention="se", num_classes=10))
    opt = optimize_for_inference(model)
    convs = [m for m in opt.modules() if isinstance(m, nn.Conv2d)]
    assert opt.excite_prepacked == len(convs) and all(type(c) is PrepackedConv2d for c in convs)
    assert list(opt.state_dict()) == list(optimize_for_inference(model, prepack=False).state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert _rel_err(ref, opt(x)) < 1e-4
        assert _rel_err(ref, opt(x)) < 1e-4  # the second call reuses the packed weights
    big = opt.layer4[0].conv2  # 512 x 512 x 3 x 3: packed; the SE gate's convolutions are not
    assert len(big.__dict__["_packed_weights"]) == 1 and not opt.layer1[0].attn.fc1.__dict__.get("_packed_weights")
    twin = copy.deepcopy(opt)  # the cache is not copied: the twin packs its own
    assert "_packed_weights" not in twin.layer4[0].conv2.__dict__
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    other = _randomize_bn(excite.create_model("resnet50", attention="se", num_classes=10))
    twin.load_state_dict(optimize_for_inference(other).state_dict())  # new weights in place: repacked
    with torch.no_grad():
        assert _rel_err(other(x), twin(x)) < 1e-4
        twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        assert _rel_err(ref, twin(x)) < 1e-4
    xg = x.clone().requires_grad_(True)  # autograd recording: the plain convolution, the same gradient
    opt(xg).sum().backward()
    xp = x.clone().requires_grad_(True)
    optimize_for_inference(model, prepack=False)(xp).sum().backward()
    torch.testing.assert_close(xg.grad, xp.grad, rtol=1e-4, atol=1e-6)


def _kernel_calls(model, x) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return {e.key: e.count for e in prof.key_averages()}


def test_relus_ride_on_convolutions_and_the_last_addition():
    """In a bottleneck the ReLUs after conv1 and conv2 are oneDNN post-ops of those convolutions and the
    last addition and ReLU are one pass; outputs unchanged, hooks registered afterwards still run."""
    from excite.models.rewrite import add_relu_into, conv_relu

    model = _randomize_bn(excite.create_model("resnet50", num_classes=10))
    opt, unfused = optimize_for_inference(model), optimize_for_inference(model, fuse_attention=False)
    blocks = [m for m in opt.modules() if hasattr(m, "graph")]
    assert len(blocks) == 16
    for b in blocks:
        targets = [n.target for n in b.graph.nodes]
        assert targets.count(conv_relu) == 2 and targets.count(add_relu_into) == 1
        assert not any(n.op == "call_module" and n.target == "relu" for n in b.graph.nodes)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert _rel_err(model(x), opt(x)) < 1e-4
    fused, plain = _kernel_calls(opt, x), _kernel_calls(unfused, x)
    assert fused.get("aten::_add_relu_", 0) == 16 and "aten::_add_relu_" not in plain
    relus = lambda calls: calls.get("aten::relu_", 0)  # noqa: E731
    assert relus(plain) == 49 and relus(fused) < 49 - 16 - 8  # ReLUs fused into at least 8 convolutions
    seen = []
    opt.layer1[0].conv1.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    opt.layer1[0].relu.register_forward_hook(lambda m, a, o: seen.append("relu"))
    with torch.no_grad():
        assert _rel_err(model(x), opt(x)) < 1e-4
    assert len(seen) == 4 and seen[1:] == ["relu"] * 3  # conv1's output before its ReLU, then 3 ReLUs
    assert (seen[0] < 0).any()


def test_results_of_another_machine_on_the_same_day_are_not_overwritten(tmp_path, monkeypatch):
    import json

    from excite.deploy import bench

    info = dict(bench.machine_info(), cpu="Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(bench, "machine_info", lambda: info)
    first = bench.save_results({"x": 1}, "inference-cpu", results_dir=tmp_path)
    assert bench.save_results({"x": 2}, "inference-cpu", results_dir=tmp_path) == first  # same machine: rewritten
    monkeypatch.setattr(bench, "machine_info", lambda: dict(info, cpu="AMD EPYC"))
    other = bench.save_results({"x": 3}, "inference-cpu", results_dir=tmp_path)
    assert other.name == first.name[:-len(".json")] + "-amd-epyc.json"
    assert json.loads(first.read_text())["x"] == 2 and json.loads(other.read_text())["x"] == 3
