"""Per-op formulas: pure functions of input/output shapes (the "formula" layer, as in fvcore).

Each formula returns ``(macs, elementwise)`` for one aten op:

* ``macs``: multiply-accumulates of convolutions and matrix products (one multiply-add = 1).
* ``elementwise``: every other arithmetic operation, one per output element per primitive op
  (a reduction costs one per *input* element; a pooling window one per element of the window).

Ops that only move or re-describe data (views, copies, concatenation) are in ``MOVEMENT`` or
``IGNORED``; anything absent from all three tables is reported as unsupported, never counted as zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

from excite.core.errors import unknown_name

aten = torch.ops.aten


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def conv_macs(x_shape, w_shape, out_shape, transposed: bool = False) -> int:
    """MACs of a (grouped, depthwise, dilated, strided, 1D/2D/3D) convolution.

    Non-transposed: every output element is a dot product over ``C_in / groups x prod(K)`` inputs,
    which is ``w_shape[1] * prod(w_shape[2:])`` (the weight is ``C_out x C_in/groups x K...``);
    stride and dilation only change the output size. Transposed: every *input* element is scattered
    through ``C_out / groups x prod(K)`` weights (weight ``C_in x C_out/groups x K...``).
    """
    per = w_shape[1] * prod(w_shape[2:])
    return prod(x_shape) * per if transposed else prod(out_shape) * per


def _conv(args, out):
    x, w, bias = args[0], args[1], args[2] if len(args) > 2 else None
    transposed = bool(args[6]) if len(args) > 6 else False
    macs = conv_macs(tuple(x.shape), tuple(w.shape), tuple(out.shape), transposed)
    return macs, (_numel(out) if isinstance(bias, torch.Tensor) else 0)


def _mm(args, out):  # (M x K) @ (K x N)
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1], 0


def _addmm(args, out):  # bias + (M x K) @ (K x N): the bias add is elementwise
    a, b = args[1], args[2]
    return a.shape[0] * a.shape[1] * b.shape[1], _numel(out)


def _bmm(args, out):  # (B x M x K) @ (B x K x N)
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], 0


def _baddbmm(args, out):
    a, b = args[1], args[2]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], _numel(out)


def _per_output(k: int):
    def f(args, out):
        return 0, k * _numel(out[0] if isinstance(out, (tuple, list)) else out)

    return f


def _reduce(args, out):  # sum/mean/amax over a tensor: one op per input element
    return 0, _numel(args[0])


def _pool(args, out):  # max/avg pool: one op per window element per output element
    k = args[1]
    k = list(k) if isinstance(k, (list, tuple)) else [k]
    y = out[0] if isinstance(out, (tuple, list)) else out
    dims = y.dim() - 2
    if len(k) == 1:
        k = k * dims
    return 0, _numel(y) * prod(k)


def _adaptive_pool(args, out):  # each output element averages ~ input/output elements
    return 0, _numel(args[0])


def _batch_norm_eval(args, out):
    # Inference batch norm folds to x * scale + shift: 2 ops per element (ResNet/BN paper form).
    return 0, 2 * _numel(out[0] if isinstance(out, (tuple, list)) else out)


def _native_batch_norm(args, out):
    # native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)
    training = bool(args[5]) if len(args) > 5 else True
    return (_batch_norm_train if training else _batch_norm_eval)(args, out)


def _batch_norm_train(args, out):
    # Training: mean, variance (2 passes) plus normalise, scale and shift: ~5 ops per element.
    return 0, 5 * _numel(out[0] if isinstance(out, (tuple, list)) else out)


def _layer_norm(args, out):
    return 0, 5 * _numel(out[0] if isinstance(out, (tuple, list)) else out)


def _softmax(args, out):  # max, subtract, exp, sum, divide
    return 0, 5 * _numel(out)


def _affine_grid(args, out):
    # affine_grid_generator(theta [N, 2, 3], size, align_corners) -> [N, H, W, 2]: every output
    # coordinate is the dot product of a base point (x, y, 1) with one row of theta: 3 MACs.
    return 3 * _numel(out), 0


# Bilinear sampling (STN paper Eq. 5) weighs the 4 neighbours of a source point: 4 multiplies and
# 3 additions per output element. Per output *location* (shared by all channels), grid_sampler_2d
# also unnormalises the 2 coordinates (multiply-add each), floors them and forms the 4 weights from
# the 2 fractions (2 subtractions, 4 multiplies): 14 operations.
_GRID_PER_LOCATION = 14
_GRID_PER_ELEMENT = {0: 7, 1: 0, 2: 31}  # bilinear; nearest (a gather); bicubic: 16 taps, 16 mul + 15 add


def _grid_sampler(args, out):
    # grid_sampler_2d(input, grid [N, Ho, Wo, 2], interpolation_mode, padding_mode, align_corners)
    grid = args[1]
    mode = int(args[2]) if len(args) > 2 else 0
    locations = grid.shape[0] * grid.shape[1] * grid.shape[2]
    return 0, _GRID_PER_ELEMENT.get(mode, 7) * _numel(out) + _GRID_PER_LOCATION * locations


def _upsample_linear(taps: int):
    # Separable interpolation: per output element, ``taps`` multiplies and ``taps - 1`` additions;
    # the per-row and per-column weights are computed once per row/column (not per element): omitted.
    def f(args, out):
        return 0, (2 * taps - 1) * _numel(out)

    return f


FORMULAS = {}


def _reg(names, fn):
    for n in names:
        op = getattr(aten, n, None)
        if op is not None:
            FORMULAS[op] = fn


_reg(["convolution", "_convolution", "conv2d", "conv1d", "conv3d"], _conv)
_reg(["mm"], _mm)
_reg(["addmm"], _addmm)
_reg(["bmm"], _bmm)
_reg(["baddbmm"], _baddbmm)
_reg(["add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "relu", "relu_",
      "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "pow", "abs", "maximum",
      "minimum", "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "hardtanh", "hardtanh_",
      "threshold", "leaky_relu", "leaky_relu_", "elu", "gelu", "silu", "silu_", "hardsigmoid",
      "hardsigmoid_", "hardswish", "hardswish_", "mish", "softplus", "where", "reciprocal", "erf",
      "sign", "floor", "ceil", "round", "eq", "ne", "gt", "lt", "ge", "le", "bitwise_and",
      "logical_not", "bernoulli_", "native_dropout"], _per_output(1))
_reg(["addcmul", "addcdiv", "lerp"], _per_output(2))
_reg(["sum", "mean", "amax", "amin", "max", "min", "var", "std", "norm", "linalg_vector_norm",
      "prod", "logsumexp", "var_mean", "std_mean"], _reduce)
_reg(["max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
      "avg_pool1d", "avg_pool2d", "avg_pool3d"], _pool)
_reg(["_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_max_pool2d",
      "adaptive_max_pool1d", "_adaptive_avg_pool2d_backward"], _adaptive_pool)
_reg(["_native_batch_norm_legit_no_training"], _batch_norm_eval)
_reg(["native_batch_norm"], _native_batch_norm)
_reg(["_native_batch_norm_legit", "_native_batch_norm_legit_functional",
      "native_group_norm"], _batch_norm_train)
_reg(["native_layer_norm"], _layer_norm)
_reg(["_softmax", "_log_softmax"], _softmax)
_reg(["affine_grid_generator"], _affine_grid)
_reg(["grid_sampler_2d", "cudnn_grid_sampler"], _grid_sampler)
_reg(["upsample_linear1d"], _upsample_linear(2))
_reg(["upsample_bilinear2d", "_upsample_bilinear2d_aa"], _upsample_linear(4))
_reg(["upsample_bicubic2d", "_upsample_bicubic2d_aa"], _upsample_linear(16))

# Data movement: no arithmetic, but bytes are read and written (counted in ``memory``).
MOVEMENT = set()
for _n in ["cat", "stack", "clone", "_to_copy", "copy_", "copy", "constant_pad_nd", "index_select",
           "gather", "index", "repeat", "flip", "roll", "contiguous", "_unsafe_index", "pad",
           "reflection_pad2d", "replication_pad2d", "upsample_nearest1d", "upsample_nearest2d", "_upsample_nearest_exact2d", "zero_", "fill_", "zeros_like", "ones_like",
           "empty_like", "full_like"]:
    if getattr(aten, _n, None) is not None:
        MOVEMENT.add(getattr(aten, _n))

# Views, metadata and allocation: nothing computed and nothing moved.
IGNORED = set()
for _n in ["view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze",
           "unsqueeze", "flatten", "detach", "alias", "as_strided", "select", "slice", "split",
           "split_with_sizes", "chunk", "unbind", "narrow", "unflatten", "view_as", "expand_as",
           "empty", "empty_strided", "new_empty", "new_empty_strided", "zeros", "ones", "full",
           "new_zeros", "new_ones", "arange", "lift_fresh", "_reshape_alias", "sym_size", "sym_stride",
           "sym_numel", "is_same_size", "dim", "size", "stride", "_local_scalar_dense", "scalar_tensor",
           "resize_", "set_", "item", "lift_fresh_copy", "detach_", "as_strided_", "t_", "squeeze_",
           "unsqueeze_", "transpose_", "unfold"]:
    if getattr(aten, _n, None) is not None:
        IGNORED.add(getattr(aten, _n))


def packet_of(func):
    """The overload packet (``aten.conv2d``) of an overload (``aten.conv2d.default``)."""
    return getattr(func, "overloadpacket", func)


# ------------------------------------------------------------------ attention modules in closed form
# One function per registered attention module: its parameters and MACs (batch 1, the "paper"
# convention: convolutions, fully connected layers and matrix products) from the widths the built
# module resolved (hidden width, kernel size, groups) and the map it sees (C x H x W). Tests compare each
# with the module's own parameters and the traced count, and with hand-derived numbers, so the
# comparison table (``excite list attention --compare``) can be computed without tracing.


@dataclass(frozen=True)
class AttentionCost:
    """Parameters and MACs of one attention module on one C x H x W map (batch 1)."""

    params: int
    macs: int


ATTENTION_FORMULAS: dict = {}


def attention_formula(*names: str):
    """Register the closed-form cost of the attention modules ``names``: ``fn(module, c, h, w) -> AttentionCost``."""

    def wrap(fn):
        for n in names:
            ATTENTION_FORMULAS[n] = fn
        return fn

    return wrap


def _bias(conv) -> int:
    return 0 if conv.bias is None else conv.bias.numel()


@attention_formula("none", "se_var1", "ge_theta_minus", "simam")
def _free(m, c, h, w):  # parameter-free: pooling, gates and multiplies only
    return AttentionCost(0, 0)


@attention_formula("se")
def _se(m, c, h, w):
    r = m.fc1.out_channels
    return AttentionCost(2 * c * r + _bias(m.fc1) + _bias(m.fc2), 2 * c * r)


@attention_formula("se_var2", "gct", "srm", "sge", "sa", "eca_ns")
def _per_channel(m, c, h, w):  # per-channel (or per-group) affine weights: elementwise work only
    per = {"SEVar2": c, "GCT": 3 * c, "SRM": 4 * c, "ECANS": c * getattr(m, "k_size", 0)}
    if type(m).__name__ == "SpatialGroupEnhance":
        return AttentionCost(2 * m.groups, 0)
    if type(m).__name__ == "ShuffleAttention":
        return AttentionCost(3 * c // m.groups, 0)
    return AttentionCost(per[type(m).__name__], 0)


@attention_formula("se_var3", "se_gc")
def _full_or_grouped(m, c, h, w):
    n = c * c // m.fc.groups
    return AttentionCost(n, n)


@attention_formula("eca", "ceca")
def _eca(m, c, h, w):  # one k-tap filter slid over C positions
    return AttentionCost(m.k_size, c * m.k_size)


@attention_formula("ecam")
def _ecam(m, c, h, w):
    rd, k = m.conv.out_channels, m.k_size
    return AttentionCost(2 * rd + rd * k + 1, rd * c + rd * k * c)


@attention_formula("ese")
def _ese(m, c, h, w):
    return AttentionCost(c * c + c, c * c)


@attention_formula("fca")
def _fca(m, c, h, w):  # the DCT pooling is a fixed buffer (elementwise); the MLP is SE's without biases
    r = m.fc[0].out_channels
    return AttentionCost(2 * c * r, 2 * c * r)


@attention_formula("cbam")
def _cbam(m, c, h, w):
    params = macs = 0
    if m.channel is not None:  # the shared MLP runs on the average- and the max-pooled vector
        r = m.channel.fc1.out_channels
        params += 2 * c * r + _bias(m.channel.fc1) + _bias(m.channel.fc2)
        macs += 2 * 2 * c * r
    if m.spatial is not None:
        k = m.spatial.conv.kernel_size[0]
        params += 2 * k * k + _bias(m.spatial.conv) + (2 if isinstance(m.spatial.bn, torch.nn.BatchNorm2d) else 0)
        macs += h * w * 2 * k * k
    return AttentionCost(params, macs)


def _stride2(n: int, steps: int) -> int:  # a 3x3 / stride 2 / padding 1 conv: ceil(n / 2) per step
    for _ in range(steps):
        n = (n + 1) // 2
    return n


@attention_formula("ge_theta", "ge_theta_plus")
def _ge(m, c, h, w):
    if m.extent == "global":
        f = m.gather.conv1.kernel_size[0]
        params, macs, gh, gw = c * f * f + 2 * c, c * f * f, 1, 1
    else:
        n = len([x for x in m.gather if isinstance(x, torch.nn.Conv2d)])
        params = n * (9 * c + 2 * c)
        macs = sum(9 * c * _stride2(h, i + 1) * _stride2(w, i + 1) for i in range(n))
        gh, gw = _stride2(h, n), _stride2(w, n)
    if m.mlp is not None:  # GE-theta+: SE's MLP (with biases) on the gathered map
        r = m.mlp.fc1.out_channels
        params += 2 * c * r + r + c
        macs += 2 * c * r * gh * gw
    return AttentionCost(params, macs)


@attention_formula("gc")
def _gc(m, c, h, w):
    branches = [b for b in (m.mlp_add, m.mlp_scale) if b is not None]
    r = branches[0].fc1.out_channels
    # mask conv C -> 1 at every position, attention pooling (a C x HW by HW x 1 product), the transforms
    return AttentionCost(c + 1 + len(branches) * (2 * c * r + 3 * r + c), 2 * c * h * w + len(branches) * 2 * c * r)


@attention_formula("a2")
def _a2(m, c, h, w):
    cm, cn, n = m.c_m, m.c_n, h * w
    params = c * (cm + 2 * cn) + cm + 2 * cn + cm * c + c
    # convs A, B, V; gathering (c_m x HW by HW x c_n); distribution (c_m x c_n by c_n x HW); reconstruction
    return AttentionCost(params, n * c * (cm + 2 * cn) + 2 * cm * n * cn + n * cm * c)


@attention_formula("gsop")
def _gsop(m, c, h, w):
    d, s = m.conv_for_DR.out_channels, m.conv_for_DR.stride[0]
    n = ((h - 1) // s + 1) * ((w - 1) // s + 1)
    # reduce (C -> d at n positions), covariance (d x n by n x d), row-wise conv (4 outputs x d per row), expand
    return AttentionCost(5 * d * c + c + 4 * d * d + 9 * d, n * c * d + d * d * n + 4 * d * d + 4 * d * c)


@attention_formula("bam")
def _bam(m, c, h, w):
    linears = [x for x in m.channel_att.gate_c if isinstance(x, torch.nn.Linear)]
    params = sum(x.in_features * x.out_features + x.out_features for x in linears)
    params += sum(2 * x.num_features for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm))
    macs = sum(x.in_features * x.out_features for x in linears)
    for x in m.spatial_att.gate_s:
        if isinstance(x, torch.nn.Conv2d):
            k = x.in_channels * x.kernel_size[0] * x.kernel_size[1]
            params += k * x.out_channels + x.out_channels
            macs += h * w * k * x.out_channels
    return AttentionCost(params, macs)


@attention_formula("coord")
def _coord(m, c, h, w):
    mip = m.conv1.out_channels
    params = 3 * c * mip + _bias(m.conv1) + _bias(m.conv_h) + _bias(m.conv_w) + 2 * mip
    return AttentionCost(params, 2 * (h + w) * c * mip)  # the shared conv on H + W positions, then one per axis


@attention_formula("triplet")
def _triplet(m, c, h, w):
    k = m.cw.conv.conv.kernel_size[0]
    planes = [c * w, h * c] + ([] if m.hw is None else [h * w])  # each branch's conv runs over one plane
    return AttentionCost(len(planes) * (2 * k * k + 2), sum(planes) * 2 * k * k)


@attention_formula("ema")
def _ema(m, c, h, w):
    g = m.groups
    cg = c // g
    # per group: the 1x1 conv on H + W positions, the 3x3 conv, two (1 x cg) by (cg x HW) products
    return AttentionCost(10 * cg * cg + 4 * cg, g * (cg * cg * (h + w) + 9 * cg * cg * h * w + 2 * cg * h * w))


def attention_cost(name: str, module, c: int, h: int, w: int) -> AttentionCost:
    """The closed-form cost of the registered attention ``name`` built as ``module`` on a C x H x W map."""
    if name not in ATTENTION_FORMULAS:
        raise unknown_name("attention formula", name, ATTENTION_FORMULAS)
    return ATTENTION_FORMULAS[name](module, c, h, w)
