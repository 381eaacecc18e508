"""Spatial Transformer: identity start, placement, profiler, ONNX, the digits-rts data and its study."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import excite
from excite.attention.stn import SpatialTransformer, stn_of, with_stn
from excite.core.errors import ExciteError


def _theta(stn: SpatialTransformer, x):
    return stn.transform(x).detach()


def test_regression_layer_starts_at_the_identity_transform():
    stn = SpatialTransformer(3)
    assert torch.count_nonzero(stn.theta.weight) == 0
    assert stn.theta.bias.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_theta(stn, x), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    # At a power-of-two size the sampling points are exact pixel centres: the output is the input.
    assert torch.equal(stn(x), x)


def test_identity_stn_in_front_equals_the_plain_model_exactly():
    torch.manual_seed(0)
    plain = excite.create_model("resnet20", num_classes=10).eval()
    stn_model = with_stn(copy.deepcopy(plain)).eval()
    assert set(stn_model.state_dict()) - set(plain.state_dict()) == {k for k in stn_model.state_dict() if k.startswith("stn.")}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stn_model(x), plain(x))


def test_registered_stn_models_with_stn_false_are_the_plain_models():
    torch.manual_seed(1)
    a = excite.create_model("resnet20")
    torch.manual_seed(1)
    b = excite.create_model("resnet20_stn", stn=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # with the transformer the base weights are still resnet20's (the STN is built after the model)
    torch.manual_seed(1)
    c = excite.create_model("resnet20_stn", stn=True).eval()
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        # 42 is not a power of two: the identity grid is exact to float rounding only
        torch.testing.assert_close(c(x), a.eval()(x), rtol=1e-4, atol=1e-4)


def test_stn_after_a_stage_sees_that_stage_and_starts_as_identity():
    torch.manual_seed(0)
    plain = excite.create_model("resnet20").eval()
    m = with_stn(copy.deepcopy(plain), "layer1").eval()
    assert m.stn_layer1.loc.features[0].in_channels == 16  # the stage's width, found by running the model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), plain(x))
    seen = {}

    def record(mod, inp, out):
        seen["shape"] = tuple(inp[0].shape)

    m.stn_layer1.register_forward_hook(record)
    m(x)
    assert seen["shape"] == (2, 16, 32, 32)
    assert list(stn_of(m)) == ["stn_layer1"]


def test_a_moved_transform_really_transforms():
    """A translation by one pixel in theta (2/W in normalised units) shifts the image by one pixel."""
    stn = SpatialTransformer(1)
    with torch.no_grad():
        stn.theta.bias.copy_(torch.tensor([1.0, 0, 2 / 16, 0, 1.0, 0]))
    x = torch.arange(256.0).view(1, 1, 16, 16)
    y = stn(x).detach()
    torch.testing.assert_close(y[..., :-1], x[..., 1:], rtol=0, atol=1e-3)
    torch.testing.assert_close(y[..., -1], torch.zeros(1, 1, 16), rtol=0, atol=1e-3)  # zeros enter from outside


def test_bad_placement_is_one_clear_error():
    m = excite.create_model("resnet20")
    with pytest.raises(ExciteError, match="not a submodule.*layer1"):
        with_stn(m, "layer9")
    with_stn(m)
    with pytest.raises(ExciteError, match="already"):
        with_stn(m)
    with pytest.raises(ExciteError, match="stn="):
        excite.create_model("stn_cnn", stn=3)


@pytest.mark.parametrize("attention", ["none", "se", "eca", "cbam"])
def test_stn_models_train_with_every_attention(attention):
    for name in ("stn_cnn", "resnet20_stn"):  # at 28 px to keep the test fast
        torch.manual_seed(0)
        m = excite.create_model(name, attention=attention, attention_kwargs={"reduction": 4} if attention == "se" else None,
                                input_size=28)
        out = m(torch.randn(2, 3, 28, 28))
        assert out.shape == (2, 10)
        out.sum().backward()
        # every parameter gets a gradient: the transformer (and each attention module) is really used
        assert all(p.grad is not None for p in m.parameters()), name


def test_models_with_a_transformer_pickle_and_deepcopy():
    m = excite.create_model("resnet20_stn", stn="layer2").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with torch.no_grad():
            m.stn_layer2.theta.bias.copy_(torch.tensor([0.9, 0.1, 0.0, -0.1, 0.9, 0.0]))
        ref = m(x)
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            assert torch.equal(other(x), ref)
            # the copy's hook calls the copy's transformer, not the original's
            other.stn_layer2.theta.bias.data[0] = 0.5
            assert not torch.equal(other(x), ref)


def test_profiler_counts_the_grid_generator_and_the_sampler():
    m = excite.create_model("stn_cnn")
    p = excite.profile(m, input_size=(3, 42, 42))
    assert p.unsupported == {}
    ops = {str(k): v for k, v in p.ops.items()}
    # affine_grid: 42*42 output points x 2 coordinates x a 3-term dot product (hand-derived)
    assert ops["affine_grid_generator"]["macs"] == 42 * 42 * 2 * 3
    # bilinear sampling: 7 ops per output element (3 channels) + 14 per output location
    assert ops["grid_sampler_2d"]["elementwise"] == 7 * 3 * 42 * 42 + 14 * 42 * 42
    plain = excite.profile(excite.create_model("stn_cnn", stn=False), input_size=(3, 42, 42))
    # the transformer's MACs: loc convs (3->20 at 42x42, 20->20 at 21x21), pooled 10x10 -> 5x5, fc
    # 500->50->6, and the grid
    assert m.stn.loc.features[-1].output_size == 5
    loc = 42 * 42 * 20 * 3 * 25 + 21 * 21 * 20 * 20 * 25 + 500 * 50 + 50 * 6 + 42 * 42 * 6
    assert p.macs - plain.macs == loc
    assert p.params - plain.params == (3 * 25 * 20 + 20) + (20 * 25 * 20 + 20) + (500 * 50 + 50) + (50 * 6 + 6)


@pytest.mark.parametrize("opset", [17, 20])
def test_onnx_export_of_a_transformer_matches_onnx_runtime(tmp_path, opset):
    pytest.importorskip("onnxruntime")
    import onnx

    from excite.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    m = excite.create_model("stn_cnn").eval()
    with torch.no_grad():  # a non-identity transform, so the sampler really interpolates
        m.stn.theta.weight.normal_(0, 0.01)
    r = export_onnx(m, str(tmp_path / "stn.onnx"), input_size=(3, 42, 42), opset=opset, dynamic_batch=True)
    assert r.max_abs_err < 1e-4, r.summary()
    assert "GridSample" in {n.op_type for n in onnx.load(str(tmp_path / "stn.onnx")).graph.node}


def test_onnx_export_below_opset_16_cannot_express_the_sampler(tmp_path):
    from excite.deploy.onnx_export import export_onnx

    m = excite.create_model("stn_cnn").eval()
    with pytest.raises(Exception, match="grid_sampler"):  # GridSample is an ONNX operator from opset 16 on
        export_onnx(m, str(tmp_path / "old.onnx"), input_size=(3, 42, 42), opset=15)


def test_matmul_grid_equals_affine_grid():
    from excite.attention.stn import _affine_grid_matmul

    theta = torch.randn(3, 2, 3)
    for h, w in ((42, 42), (7, 12)):
        torch.testing.assert_close(_affine_grid_matmul(theta, h, w), F.affine_grid(theta, [3, 1, h, w], align_corners=False))


def test_digits_rts_is_deterministic_with_the_digits_split():
    from excite.data import load_dataset, load_digits

    tr, te = load_dataset("digits-rts")
    tr2, te2 = load_dataset("digits-rts")
    assert tr.images.shape == (1347, 3, 42, 42) and te.images.shape == (450, 3, 42, 42)
    assert tr.images.dtype == torch.uint8 and not tr.flip
    assert torch.equal(tr.images, tr2.images) and torch.equal(te.images, te2.images)
    dtr, dte = load_digits()
    assert torch.equal(tr.labels, dtr.labels) and torch.equal(te.labels, dte.labels)
    # every image is distorted differently: no two share a rotation/scale/offset, so none equal the
    # plain digit centred on the canvas
    centred = F.pad(dtr.images[:50], (5, 5, 5, 5))
    assert not any(torch.equal(a, b) for a, b in zip(tr.images[:50], centred))
    # the digits stay on the canvas: only rotated corners reach the border, which has under a tenth
    # of the average ink
    ink = tr.images[:, 0].float()
    border = torch.cat([ink[:, 0], ink[:, -1], ink[:, :, 0], ink[:, :, -1]], 1)
    assert border.mean() < 0.1 * ink.mean()
    # the normalisation statistics are the training split's (within the rounding of _STATS)
    assert abs(ink.mean().item() / 255 - tr.mean[0]) < 0.01 and abs(ink.std().item() / 255 - tr.std[0]) < 0.01


def test_stn_rts_study_runs_one_seed_with_a_tiny_recipe(tmp_path):
    from excite.study import load_study
    from excite.study.report import write_report
    from excite.study.runner import run_study

    s = load_study("stn-rts", overrides=dict(seeds=[0], recipe={"name": "digits-short", "epochs": 1, "subset": 32,
                                                                   "batch_size": 16}))
    assert [v.published for v in s.variants] == [99.2, 99.5]  # STN Table 1, RTS: 0.8% and 0.5% error
    counts = run_study(s, tmp_path / "st", log=None)
    assert counts == {"total": 4, "skipped": 0, "done": 4}
    paths = write_report(tmp_path / "st")
    text = paths["md"].read_text() if "md" in paths else next(iter(paths.values())).read_text()
    assert "resnet20_stn" in text and "stn_cnn" in text


def test_create_model_stn_option_on_any_model_round_trips(tmp_path):
    """`create_model(name, stn=...)` puts a transformer in front of any registered model; identity-started,
    recorded in the model description, so a model file rebuilds it."""
    import excite

    torch.manual_seed(0)
    m = excite.create_model("resnet20", stn=True).eval()
    plain = excite.create_model("resnet20").eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("stn")})
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), plain(x))
    assert m.excite_spec.options == {"stn": True}
    back = excite.load_model(excite.save_model(m, tmp_path / "s.safetensors")).eval()
    assert torch.equal(back(x), m(x))
