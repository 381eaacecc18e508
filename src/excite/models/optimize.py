"""Inference-time rewrites that keep the model's outputs: BatchNorm folding, attention rescale fused
with the residual addition, memory format, prepacked convolution weights, compile.

Folding BN into the convolution before it removes one full read and write of every normalized
activation (ResNet-50 has 53 BNs); the result is an ordinary eager ``nn.Module`` with the same
``forward``, so everything that works on the model (hooks, attention, export) keeps working.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.fx
from torch import nn

from excite.core.errors import ExciteError, expect_module
from excite.models.compiled import compile_inference
from excite.models.memory import keep_memory_during_calls
from excite.models.prepack import prepack_convolutions
from excite.models.rewrite import fuse_residual_blocks

__all__ = ["fold_conv_bn", "find_conv_bn_pairs", "fold_batchnorm", "fuse_attention_rescale", "channels_last_rule",
           "optimize_for_inference"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold the eval-mode affine map of ``bn`` into ``conv`` in place.

    BN(conv(x)) = g * (W x + b - mu) / sqrt(var + eps) + beta, so W' = W * s and
    b' = (b - mu) * s + beta with s = g / sqrt(var + eps) per output channel.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ExciteError(f"cannot fold {bn!r}: it keeps no running statistics")
    with torch.no_grad():
        w = conv.weight.double()
        mean, var = bn.running_mean.double(), bn.running_var.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        # Computed in float64 so that the folded weights round once, not twice.
        new_w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        new_b = (bias - mean) * scale + beta
        conv.weight.copy_(new_w.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_b.to(conv.bias.dtype))


def _named_fx(model: nn.Module):
    return torch.fx.symbolic_trace(model)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BN's only input is the conv's output and the conv's
    output goes nowhere else, found by tracing the forward with ``torch.fx``.

    Models that cannot be traced fall back to the structural rule the backbones here follow:
    ``convN`` followed by ``bnN`` in one block, and a conv directly followed by a BN in a
    ``nn.Sequential``.
    """
    try:
        gm = _named_fx(model)
    except Exception:  # tracing is best-effort; the structural rule covers our own backbones
        return _pairs_by_structure(model)
    mods = dict(model.named_modules())
    pairs, seen = [], {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            seen[node.target] = seen.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        if len(src.users) != 1 or seen[src.target] != 1 or seen[node.target] != 1:
            continue  # a shared conv or BN cannot be folded without changing its other uses
        pairs.append((src.target, node.target))
    return pairs


def _pairs_by_structure(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for prefix, mod in model.named_modules():
        pre = f"{prefix}." if prefix else ""
        children = list(mod.named_children())
        if isinstance(mod, nn.Sequential):
            for (n1, a), (n2, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((pre + n1, pre + n2))
        names = dict(children)
        for n, c in children:
            if isinstance(c, nn.Conv2d) and n.startswith("conv"):
                bn = names.get("bn" + n[len("conv"):])
                if isinstance(bn, nn.BatchNorm2d):
                    pairs.append((pre + n, pre + "bn" + n[len("conv"):]))
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _plain(bn: nn.Module) -> bool:
    """A BN without hooks or children: replacing it with ``nn.Identity`` loses nothing (``excite.attach``
    may hang attention on a norm layer as a hook or a child)."""
    return not (bn._forward_hooks or bn._forward_pre_hooks or any(True for _ in bn.children()))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of an eval-mode ``model`` into its conv, in place.

    The BN is replaced by ``nn.Identity``; a BN with hooks or children is left alone. Returns the
    number of BNs folded.
    """
    if model.training:
        raise ExciteError("fold_batchnorm needs an eval-mode model (call model.eval()); BN folding uses running statistics")
    found = list(dict.fromkeys(find_conv_bn_pairs(model)))
    # A BN that normalises the sum of several convolutions (SK's branches) belongs to none of them alone.
    uses = {b: sum(1 for _, bb in found if bb == b) for _, b in found}
    pairs = [(c, b) for c, b in found if uses[b] == 1 and _plain(model.get_submodule(b))]
    for conv_name, bn_name in pairs:
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_submodule(model, bn_name, nn.Identity())
    return len(pairs)


def fuse_attention_rescale(model: nn.Module) -> int:
    """Rewrite every residual block so that ``attn(out) + identity`` runs as one ``torch.addcmul``
    (written into the block's own branch output when nothing else reads it), in place; a graph
    rewrite (:func:`excite.models.rewrite.fuse_residual_blocks`), the attention modules themselves
    keep ``forward(x)``. A block or attention module with hooks keeps the eager form. Returns the
    number of blocks whose rescale was fused."""
    return fuse_residual_blocks(model)


def _set_format(model: nn.Module, channels_last: bool) -> None:
    """Convert ``model``'s parameters and buffers to channels-last or back, outside inference mode:
    a conversion inside ``torch.inference_mode`` would turn the parameters into inference tensors,
    which every later call with grad mode on rejects ("Inference tensors cannot be saved for backward")."""
    if getattr(model, "excite_channels_last", None) is channels_last:
        return
    with torch.inference_mode(False), torch.no_grad():
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.excite_channels_last = bool(channels_last)


def _faster_channels_last(model: nn.Module, x: torch.Tensor, reps: int = 5) -> bool:
    """Time contiguous and channels-last on ``x``, interleaved (so that background load hits both
    alike), and keep channels-last unless contiguous is clearly (5%) faster: a tie keeps the rule's
    choice (channels-last, see :func:`optimize_for_inference`)."""
    times = {False: [], True: []}
    with torch.inference_mode():
        for cl in (False, True):  # warm-up: the first call allocates and may pick kernels
            _set_format(model, cl)
            model(x)
        for _ in range(reps):
            for cl in (False, True):
                _set_format(model, cl)
                t0 = time.perf_counter()
                model(x)
                times[cl].append(time.perf_counter() - t0)
    return not statistics.median(times[False]) < 0.95 * statistics.median(times[True])


class _FormatByShape:
    """Forward pre-hook of ``channels_last="measure"``: on the first call with a new input shape
    (and dtype, device) time both formats on that very input, cache the faster, and switch to the
    cached format on every later call. A switch converts every weight (a copy of the parameters,
    about 100 MB for ResNet-50), so a model fed alternately two shapes that prefer different
    formats pays it per switch; one input shape pays nothing after its first call."""

    def __init__(self, reps: int = 5):
        self.reps, self.cache, self.busy = reps, {}, False

    def __call__(self, module: nn.Module, args):
        x = args[0] if args else None
        if self.busy or not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        key = (tuple(x.shape), x.dtype, str(x.device))
        if key not in self.cache:
            self.busy = True  # the timing calls the module itself
            try:
                self.cache[key] = _faster_channels_last(module, x, self.reps)
            finally:
                self.busy = False
        _set_format(module, self.cache[key])
        return None


def _apply_format(model: nn.Module, channels_last: bool | str, example_input: torch.Tensor | None) -> None:
    """``optimize_for_inference``'s ``channels_last`` argument, applied to ``model``."""
    model.excite_channels_last = None
    if channels_last != "measure":
        _set_format(model, channels_last_rule(model) if channels_last == "auto" else bool(channels_last))
        return
    hook = _FormatByShape()
    model.register_forward_pre_hook(hook)
    model.excite_format_cache = hook.cache
    if example_input is not None:
        with torch.inference_mode():
            model(example_input)
    else:
        _set_format(model, channels_last_rule(model))


def channels_last_rule(model: nn.Module) -> bool:
    """The memory format ``optimize_for_inference`` picks by default: channels-last for every model
    with a 2-D convolution, on CPU and GPU alike.

    Why a rule and not a timing: oneDNN's CPU convolutions compute in a blocked channels-last layout,
    so a contiguous (NCHW) model pays a layout reorder around every convolution, and the folded,
    fused model has little else left to spend time on. A one-off timing on this project's 2-core AVX2
    EPYC flipped between the two formats with background load and with the batch it was given
    (1.14x, then 0.55x over eager from the same call), while forced channels-last gave
    1.69x. At batch 1, where the old default timed, channels-last was still 3-7% faster than contiguous
    for ResNet-50 and ECA-ResNet-50 (``benchmarks/results/inference-cpu-2026-11-29.json``, the
    "channels-last / contiguous" rows). On GPUs, cuDNN's tensor-core kernels are NHWC as well."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def optimize_for_inference(
    model: nn.Module,
    *,
    compile: bool | str = False,
    fuse_attention: bool = True,
    channels_last: bool | str = "auto",
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
    prepack: bool = True,
    keep_memory: bool = True,
) -> nn.Module:
    """An eval-mode copy of ``model`` for inference: BatchNorm folded into the preceding
    convolutions (a BN with no conv before it, as DenseNet's pre-activation BNs, is kept and counted in
    ``model.excite_unfolded_bn``), the attention rescale fused with the residual addition, channels-last
    memory format (see :func:`channels_last_rule`), parameters frozen, convolution weights prepacked
    for oneDNN (:mod:`excite.models.prepack`), optionally compiled.

    Args:
        model: any module; registered excite models and their attention modules are covered.
        fuse_attention: compute ``attn(out) + identity`` in residual blocks as one pass
            (:func:`fuse_attention_rescale`; the count is stored as ``model.excite_fused_attention``).
        compile: ``False`` (default: the eager model above), ``True`` or ``"inductor"`` (``torch.compile``
            with freezing: prepacked oneDNN weights and fused pointwise tails; the first call with each
            new input shape compiles, tens of seconds for ResNet-50 on 2 cores), or ``"jit"``
            (``torch.jit.freeze`` + oneDNN fusion, traced now). See :mod:`excite.models.compiled`;
            the result is a :class:`~excite.models.compiled.CompiledInference` that always runs
            without autograd.
        channels_last: ``"auto"`` (default) applies :func:`channels_last_rule` (channels-last for
            convolutional models); ``True`` / ``False`` force the format; ``"measure"`` decides per
            input shape on first use: the first call with each new shape times both formats on that
            input (interleaved medians of 5 calls each) and the answer is cached for that shape; a tie
            keeps channels-last. The current format is ``model.excite_channels_last``.
        example_input: with ``"measure"``, decide for this input now instead of on first use; with
            ``compile``, compile for it now (the call pays the compile, not the first inference).
        inplace: modify ``model`` itself instead of a deep copy.
        prepack: reorder every convolution's weight for oneDNN once per input shape instead of on every
            call (:mod:`excite.models.prepack`; the count is ``model.excite_prepacked``). The first call
            with a new input shape pays the reorder.
        keep_memory: keep the memory each call frees for its later allocations and the next call
            (:func:`excite.models.memory.keep_memory_during_calls`): without it glibc maps every
            activation above 32 MiB afresh and the call faults it in page by page (ResNet-50 at batch
            16 ran 14-15% slower). After the call large blocks are mapped again; what it freed stays in
            the process (up to 1 GiB). ``model.excite_memory_kept`` says it is on.

    The result works with and without grad mode. Its parameters are frozen (``requires_grad=False``:
    folded BatchNorm makes it an inference model), so a call outside ``torch.no_grad()`` records no
    graph and costs the same as one inside; only an input that itself requires grad makes autograd
    record the forward (and the fused residual then writes a new tensor instead of reusing the
    block's own, see ``excite.models.rewrite``). Inputs need no conversion: a contiguous input is
    reordered by the first convolution.

    Outputs match the original model's eval-mode outputs within float rounding (tested at 1e-4
    relative for every registered model and several attention modules).
    """
    expect_module(model, "optimize_for_inference")
    if compile not in (False, True, "inductor", "jit"):
        raise ExciteError(f"compile={compile!r} is invalid; expected False, True, 'inductor' or 'jit'")
    if channels_last not in (True, False, "auto", "measure"):
        raise ExciteError(f"channels_last={channels_last!r} is invalid; expected True, False, 'auto' or 'measure'")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    folded = fold_batchnorm(out)
    spec = getattr(out, "excite_spec", None)
    if spec is not None:  # saved, the file rebuilds the folded structure before loading its weights
        out.excite_spec = spec.replace(optimized=True)
    out.requires_grad_(False)  # after folding, which adds conv biases
    out.excite_folded_bn = folded
    # A pre-activation BN (DenseNet's BN-ReLU-conv layers and transitions, its final norm5) reads a
    # concatenation, not a conv output: there is no conv to fold it into, so it stays (exact, not removed).
    out.excite_unfolded_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in out.modules())
    out.excite_fused_attention = fuse_attention_rescale(out) if fuse_attention else 0
    _apply_format(out, channels_last, example_input)
    if compile:
        out = compile_inference(out, "inductor" if compile is True else compile, example_input)
    else:
        out.excite_prepacked = prepack_convolutions(out) if prepack else 0
    return keep_memory_during_calls(out) if keep_memory else out
