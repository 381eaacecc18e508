"""Per-op formulas: pure functions of input/output shapes (the "formula" layer, as in fvcore).

Each formula returns ``(macs, elementwise)`` for one aten op:

* ``macs``: multiply-accumulates of convolutions and matrix products (one multiply-add = 1).
* ``elementwise``: every other arithmetic operation, one per output element per primitive op
  (a reduction costs one per *input* element; a pooling window one per element of the window).

Ops that only move or re-describe data (views, copies, concatenation) are in ``MOVEMENT`` or
``IGNORED``; anything absent from all three tables is reported as unsupported, never counted as zero.
"""

from __future__ import annotations

from math import prod

import torch

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
