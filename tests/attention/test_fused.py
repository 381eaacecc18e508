"""The gates' training functions (pools and channel product with cheaper backward passes): outputs and
gradients equal PyTorch's own operators'; and the benchmark method's rules (rotation, quartiles,
too-noisy verdicts)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.autograd import gradcheck

import excite
from excite.attention.fused import (LARGE, amax_pool, channel_scale, few_channel_conv, mean_pool, plain_operators,
                                   recording, spatial_conv)
from excite.deploy.timing import compare, summarize, time_rotated

GATES = [("se", {"reduction": 2}), ("se", {"reduction": 2, "gate": "hard_sigmoid"}), ("se_var1", {}), ("se_var2", {}),
         ("se_var3", {}), ("se_gc", {"groups": 2}), ("eca", {}), ("eca", {"k_size": 5}), ("eca_ns", {}), ("cbam", {"reduction": 2}),
         ("cbam", {"reduction": 2, "arrangement": "parallel"}), ("triplet", {})]


def _outputs_and_grads(m, x, plain: bool):
    with plain_operators() if plain else contextlib.nullcontext():
        out = m(x)
        return (out, *torch.autograd.grad((out ** 2).sum(), [x, *m.parameters()]))


SMALL, LARGE_SHAPE = (2, 8, 4, 4), (4, 8, 256, 256)
# Every gate on a small activation; on a large one (the batch-normalization form of the channel
# product) once per kind of gate: SE's MLP, ECA's unfold, CBAM's two gates in both arrangements.
CASES = [(n, k, SMALL) for n, k in GATES] + [(n, k, LARGE_SHAPE) for n, k in GATES if n in ("se", "eca", "cbam", "triplet")]


@pytest.mark.parametrize("name,kwargs,shape", CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values() if isinstance(v, dict) else v)))
def test_training_functions_give_the_plain_operators_outputs_and_gradients(name, kwargs, shape):
    """Input and parameter gradients of every gate built on them, against PyTorch's own operators and
    backward formulas (float64)."""
    torch.manual_seed(0)
    m = excite.create_attention(name, shape[1], **kwargs).double().train()
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    assert (x.numel() >= LARGE) is (shape == LARGE_SHAPE)
    for a, b in zip(_outputs_and_grads(m, x, plain=False), _outputs_and_grads(m, x, plain=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_each_function_equals_its_operator_and_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    g = torch.rand(2, 3, 1, 1, dtype=torch.double, requires_grad=True)
    x[0, 1, 2, 3].data.fill_(9.0)
    x[0, 1, 0, 0].data.fill_(9.0)  # a tie at the maximum: the gradient split between the two, as amax's
    for dim in [1, (2, 3)]:
        torch.testing.assert_close(amax_pool(x, dim), x.amax(dim, keepdim=True))
        torch.testing.assert_close(mean_pool(x, dim), x.mean(dim, keepdim=True))
        gx, = torch.autograd.grad(amax_pool(x, dim).sum(), x)
        ref, = torch.autograd.grad(x.amax(dim, keepdim=True).sum(), x)
        torch.testing.assert_close(gx, ref)
    assert gx[0, 1, 2, 3] == gx[0, 1, 0, 0] == 0.5  # over H, W
    big = torch.randn(1, 2, 1024, 1024, dtype=torch.double, requires_grad=True)  # the batch-norm form
    assert gradcheck(lambda t, s: channel_scale(t, s), (x, g), fast_mode=True)
    assert gradcheck(lambda t: mean_pool(t, (2, 3)), (x,), fast_mode=True)
    assert gradcheck(lambda t: amax_pool(t, 1), (torch.randn(2, 3, 2, 2, dtype=torch.double, requires_grad=True),))
    gb = torch.rand(1, 2, 1, 1, dtype=torch.double, requires_grad=True)
    assert type(channel_scale(big, gb).grad_fn).__name__ != "MulBackward0"
    assert gradcheck(lambda t, s: channel_scale(t, s).sum((2, 3)), (big, gb), fast_mode=True)


def test_tracers_and_inference_see_the_plain_operators():
    """No autograd (inference), ``torch.fx`` (the rewrite) and ``torch.jit.trace`` (ONNX export) get
    mean, amax and mul, so every inference path and exporter sees what it knows."""
    m = excite.create_attention("cbam", 8, reduction=2).train()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert not recording(x.detach()) and recording(x)
    with torch.no_grad():
        assert type(m(x).grad_fn) is type(None)
    targets = {str(n.target) for n in torch.fx.symbolic_trace(m).graph.nodes}
    assert {"mean", "amax", "<built-in function mul>"} <= targets
    eca = excite.create_attention("eca", 8).train()
    traced = torch.jit.trace(eca, x.detach())
    assert "aten::mean" in str(traced.graph) and "batch_norm" not in str(traced.graph)
    with plain_operators():
        assert not recording(x)
    assert recording(x)


def test_gates_in_a_network_train_like_the_plain_operators():
    torch.manual_seed(0)
    for name in ("se", "cbam"):
        m = excite.create_model("resnet20", attention=name, num_classes=10)
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        grads = []
        for plain in (False, True):
            m.zero_grad()
            with plain_operators() if plain else contextlib.nullcontext():
                torch.nn.functional.cross_entropy(m(x), y).backward()
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_time_rotated_rotates_warms_alike_and_flags_noise():
    calls = []
    steps = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    t = time_rotated(steps, reps=9, warmup=2)
    assert calls[:6] == list("abcabc")  # the same warm-up for every variant
    rounds = [calls[6 + 3 * r: 9 + 3 * r] for r in range(9)]
    assert [r[0] for r in rounds[:3]] == ["a", "b", "c"]  # each round starts one variant later
    assert all(v["runs"] == 9 for v in t.values())
    with pytest.raises(excite.ExciteError, match="reps"):
        time_rotated(steps, reps=3)
    quiet, noisy = summarize([1.0] * 8 + [1.05]), summarize([1.0, 1.3, 0.8, 1.2, 0.9, 1.25, 0.85, 1.0, 1.1])
    assert not quiet["too_noisy"] and noisy["too_noisy"]
    assert quiet["q25_s"] == 1.0 and quiet["median_s"] == 1.0
    c = compare("x", noisy, quiet, 1.0, higher_is_better=False)
    assert c["met"] is None and c["verdict"] == "not measured: too noisy"
    c = compare("x", summarize([2.0] * 9), quiet, 1.5, higher_is_better=False)
    assert c["met"] is False and c["verdict"].startswith("missed by 33.3%")


def test_targets_pair_the_rounds_of_one_rotation():
    """A slow spell that moves whole rounds hits both sides of a round: timings of one rotation are
    compared round by round (measured), the same timings from two rotations by their medians (noisy)."""
    spells = [1.0, 1.3, 0.8, 1.2, 0.9, 1.25, 0.85, 1.0, 1.1]
    num, den = dict(summarize([1.05 * t for t in spells]), rotation="r"), dict(summarize(spells), rotation="r")
    assert num["too_noisy"] and den["too_noisy"]
    c = compare("x", num, den, 1.1, higher_is_better=False)
    assert c["paired"] and c["ratio"] == 1.05 and c["ratio_iqr_rel"] == 0 and c["met"] is True
    c = compare("x", dict(num, rotation="other"), den, 1.1, higher_is_better=False)
    assert "paired" not in c and c["verdict"] == "not measured: too noisy"
    c = compare("x", dict(summarize([1.05 * t for t in reversed(spells)]), rotation="r"), den, 1.1,
                higher_is_better=False)  # rounds that do not move together stay noisy when paired
    assert c["paired"] and c["verdict"] == "not measured: too noisy"
    one, two = time_rotated({"a": lambda: None, "b": lambda: None}), time_rotated({"a": lambda: None})
    assert one["a"]["rotation"] == one["b"]["rotation"] != two["a"]["rotation"]


def test_gated_add_fuses_only_unwatched_channel_gates_and_keeps_gradients():
    """A channel gate's rescale and the residual addition are one addcmul, with the plain operators'
    outputs and gradients; a hooked gate, another attention or a large activation in training keep
    ``attn(x) + identity``; without autograd it is one addcmul at any size."""
    from excite.attention import gated_add

    torch.manual_seed(0)
    se = excite.create_attention("se", 16, reduction=4).double()
    x, idt = (torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = gated_add(se, x, idt)
    assert type(out.grad_fn).__name__ == "AddcmulBackward0"
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (x, idt, *se.parameters())]
    for t in (x, idt, *se.parameters()):
        t.grad = None
    ref = se(x) + idt
    torch.testing.assert_close(out, ref)
    ref.square().sum().backward()
    for got, want in zip(grads, [t.grad for t in (x, idt, *se.parameters())]):
        torch.testing.assert_close(got, want)
    seen = []
    handle = se.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    assert type(gated_add(se, x, idt).grad_fn).__name__ == "AddBackward0" and seen == [x.shape]
    handle.remove()
    cbam = excite.create_attention("cbam", 16, reduction=4).double()
    assert type(gated_add(cbam, x, idt).grad_fn).__name__ == "AddBackward0"
    big = torch.randn(LARGE // 16, 16, 1, 1, dtype=torch.float64, requires_grad=True)
    assert type(gated_add(se, big, big.detach()).grad_fn).__name__ == "AddBackward0"
    with torch.no_grad():
        torch.testing.assert_close(gated_add(se, x, idt), se(x) + idt)
        torch.testing.assert_close(gated_add(se, big, big), se(big) + big)


def test_training_paths_of_the_gates_compute_what_their_modules_do():
    """ECA's training-time unfold, SE's and CBAM's matrix-product MLPs and CBAM's channels-last spatial
    convolution give the outputs and gradients of the plain module calls they replace (float64)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(3, 24, 5, 6, dtype=torch.float64)
    eca = excite.create_attention("eca", 24, k_size=5).double().train()
    y = x.mean((2, 3), keepdim=True).requires_grad_(True)
    got = eca.excite(y)
    got.sum().backward()
    y2 = y.detach().clone().requires_grad_(True)
    ref = torch.sigmoid(eca.conv(y2.flatten(1).unsqueeze(1)).squeeze(1))[:, :, None, None]
    ref.sum().backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(y.grad, y2.grad)

    se = excite.create_attention("se", 24, reduction=4).double()
    torch.testing.assert_close(se.excite(y2), torch.sigmoid(se.fc2(se.act(se.fc1(y2)))))

    cbam = excite.create_attention("cbam", 24, reduction=4).double().eval()
    cg, sg = cbam.channel, cbam.spatial
    mlp = lambda t: cg.fc2(cg.act(cg.fc1(t)))  # noqa: E731
    ref_c = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(cg(x), ref_c)
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
    torch.testing.assert_close(sg(x), torch.sigmoid(sg.bn(F.conv2d(pooled, sg.conv.weight, sg.conv.bias, padding=3))))


@pytest.mark.parametrize("b,cin,cout,h,w,k", [(2, 2, 1, 32, 32, 7), (3, 2, 1, 13, 7, 7), (2, 3, 2, 16, 16, 5),
                                             (1, 2, 1, 5, 6, 3), (1, 2, 1, 3, 2, 9), (2, 1, 1, 9, 9, 1)])
def test_few_channel_conv_is_the_convolution(b, cin, cout, h, w, k):
    """On folded pixel blocks, any H and W (padded to the block size), every odd kernel up to 9: the
    output and the gradients of input, weight and bias equal ``F.conv2d``'s (float64)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(b, cin, h, w, dtype=torch.double, requires_grad=True)
    wt = torch.randn(cout, cin, k, k, dtype=torch.double, requires_grad=True)
    bias = torch.randn(cout, dtype=torch.double, requires_grad=True)
    got, ref = few_channel_conv(x, wt, bias), F.conv2d(x, wt, bias, padding=k // 2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    d = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(got, [x, wt, bias], d), torch.autograd.grad(ref, [x, wt, bias], d)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_spatial_conv_picks_the_folded_form_where_it_is_faster_and_the_module_for_tracers():
    conv = torch.nn.Conv2d(2, 1, 7, padding=3, bias=False)
    big, small = torch.randn(8, 2, 32, 32, requires_grad=True), torch.randn(2, 2, 8, 8, requires_grad=True)
    assert type(spatial_conv(big, conv).grad_fn).__name__ != "ConvolutionBackward0"  # folded
    assert type(spatial_conv(small, conv).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        torch.testing.assert_close(spatial_conv(big, conv), conv(big), rtol=1e-5, atol=1e-5)
    strided = torch.nn.Conv2d(2, 1, 7, padding=3, stride=2)
    assert type(spatial_conv(big, strided).grad_fn).__name__ == "ConvolutionBackward0"  # not one it computes

    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return spatial_conv(x, self.conv)

    ops = [n.op for n in torch.fx.symbolic_trace(Gate()).graph.nodes]
    assert "call_module" in ops
