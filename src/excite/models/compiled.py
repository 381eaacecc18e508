"""Compiled inference on top of :func:`excite.optimize_for_inference`: weights prepacked for oneDNN and
convolution + bias + activation (+ add) fused, through what PyTorch already has.

Two backends, both chosen by measurement (``benchmarks/inference.py``, the "optimized" rows of
``docs/speed.md``):

* ``"inductor"``: ``torch.compile`` with Inductor's *freezing* (weights become constants, so it
  prepacks them for oneDNN, folds what is constant and fuses the pointwise tail of every convolution,
  the attention gate's pool -> gate -> rescale -> add chain included, into generated C++). It needs
  a C++ compiler (gcc) and pays a compile on the first call with each new input shape (tens of seconds
  for ResNet-50 on 2 cores); later calls run the compiled code.
* ``"jit"``: ``torch.jit.trace`` + ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``
  (TorchScript's oneDNN conversion: prepacked weights, conv + add + ReLU fused). Traced once on an
  example input; no compiler needed, but TorchScript is deprecated upstream (torch 2.13 warns on
  ``torch.jit.trace``), so this path may go when PyTorch removes it.

Both run under ``torch.no_grad()`` (freezing only applies without autograd) and feed the model its own
memory format, so that a contiguous input does not make Inductor compile a second graph.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from excite.core.errors import ExciteError

__all__ = ["BACKENDS", "CompiledInference", "compile_inference"]

BACKENDS = ("inductor", "jit")


class CompiledInference(nn.Module):
    """A compiled, frozen inference model; ``.model`` is the eager model it was compiled from (its
    ``excite_*`` attributes are copied here)."""

    def __init__(self, model: nn.Module, run, backend: str):
        super().__init__()
        self.model = model
        self._run = run
        self.excite_compiled = backend
        for k, v in vars(model).items():
            if k.startswith("excite_") and k != "excite_compiled":
                setattr(self, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "excite_channels_last", False) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return self._run(x)


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input
    return torch.randn(1, *getattr(model, "default_input_size", (3, 224, 224)))


def compile_inference(model: nn.Module, backend: str, example_input: torch.Tensor | None = None) -> CompiledInference:
    """Compile an optimized eval-mode ``model`` with ``backend`` (see the module docstring). With
    ``example_input`` (``"jit"``: always; default a batch of 1 at ``model.default_input_size``) the
    compile happens now, by one call on it; otherwise Inductor compiles on the first call."""
    if backend not in BACKENDS:
        raise ExciteError(f"compile={backend!r} is invalid; expected False, True (= 'inductor') or one of {', '.join(BACKENDS)}")
    if backend == "inductor":
        # Inductor options, not global config: only this model is frozen.
        run = torch.compile(model, options={"freezing": True})
    else:
        x = _example(model, example_input)
        if getattr(model, "excite_channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated upstream (torch.jit.trace and optimize_for_inference warn so);
            # it is kept as the compiler-free path, and its deprecation is said in the docstring.
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, x, check_trace=False)
            run = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    out = CompiledInference(model, run, backend)
    if example_input is not None or backend == "jit":
        try:
            out(_example(model, example_input))  # the compile / first-call specialisation, paid here
        except Exception as e:  # no C++ compiler, or an op the backend lacks: the environment, not the model
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ExciteError(f"compiling with {backend} failed ({type(e).__name__}: {first}); use compile=False") from e
    return out
