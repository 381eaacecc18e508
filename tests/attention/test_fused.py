"""The fused pool -> gate -> rescale autograd function: gradients equal the plain chain's, and the
benchmark method's rules (rotation, quartiles, too-noisy verdicts)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import excite
from excite.attention.fused import PoolGateScale, fusable
from excite.deploy.timing import compare, summarize, time_rotated

GATES = [("se", {"reduction": 2}), ("se", {"reduction": 2, "gate": "hard_sigmoid"}), ("se_var1", {}), ("se_var2", {}),
         ("se_var3", {}), ("se_gc", {"groups": 2}), ("eca", {}), ("eca", {"k_size": 5}), ("eca_ns", {})]


@pytest.mark.parametrize("name,kwargs", GATES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_fused_function_passes_gradcheck(name, kwargs):
    """Input and parameter gradients against finite differences, on tiny double tensors."""
    torch.manual_seed(0)
    m = excite.create_attention(name, 4, **kwargs).double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.double, requires_grad=True)
    params = tuple(m.parameters())
    # fast_mode: a random projection of the Jacobian, far fewer evaluations than the full matrix.
    assert gradcheck(lambda x, *ps: PoolGateScale.apply(x, m, *ps), (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name,kwargs", GATES[:1] + GATES[6:7], ids=["se", "eca"])
def test_fused_training_equals_the_plain_chain(name, kwargs):
    """In a module: the same output and the same gradients (input and parameters), and only then the
    fused function in the graph."""
    torch.manual_seed(0)
    m = excite.create_attention(name, 8, **kwargs).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.double, requires_grad=True)
    grads = {}
    for fused in (False, True):
        m.fused_training = fused
        out = m(x)
        assert (type(out.grad_fn).__name__ == "PoolGateScaleBackward") is fused
        grads[fused] = (out, *torch.autograd.grad((out ** 2).sum(), [x, *m.parameters()]))
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no autograd: the plain ops (nothing to save)
        assert not fusable(m, x)


def test_fused_se_in_a_network_trains_like_the_plain_one():
    torch.manual_seed(0)
    a = excite.create_model("resnet20", attention="se", num_classes=10)
    b = excite.create_model("resnet20", attention="se", num_classes=10)
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if hasattr(m, "fused_training"):
            m.fused_training = True
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


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
