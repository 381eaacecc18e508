"""Large CPU activations without page faults: keep freed memory in the process, as an arena does.

glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most on 64-bit Linux) with
a fresh ``mmap`` and hands it back to the kernel on ``free``. PyTorch allocates every activation anew,
so each activation above the threshold is faulted in page by page, and a forward pass pays for memory
it freed a moment before: ResNet-50 at batch 16 (its 51 MB stem and layer1 outputs) ran 14-15% slower
than with the memory kept (``benchmarks/results/memory-kept-*.json``).
ONNX Runtime and OpenVINO keep their own arenas and pay none of this.

Keeping it means glibc's ``M_MMAP_MAX`` at 0 (large blocks come from the heap, where a freed block is
reused by the next allocation) and ``M_TRIM_THRESHOLD`` at 1 GiB (freed heap memory is not handed back
at once). Two ways to get it:

* :func:`keep_memory_during_calls` (what :func:`~excite.models.optimize.optimize_for_inference` does
  by default): every block comes from the heap while the model runs; after it, blocks above 32 MiB are
  mapped again (glibc's own threshold once a program has freed large blocks), and the memory the call
  freed stays in the process for the next call (up to 1 GiB, as an arena keeps its blocks), so a
  second call faults nothing in. Concurrent and nested calls are counted: the mapping comes back when
  the last one ends.
* :func:`keep_freed_memory` for the whole process, as ``torch.set_num_threads`` is set: also for code
  outside the model. ``keep_freed_memory(False)`` restores glibc's defaults and hands the kept memory
  back to the system.

Written here because nothing else does it in-process: PyTorch has no CPU caching allocator outside its
mobile builds, and jemalloc or tcmalloc only replace malloc through ``LD_PRELOAD`` before the process
starts. Where the C library is not glibc, every function here changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading

from torch import nn

__all__ = ["keep_freed_memory", "freed_memory_kept", "memory_kept", "keep_memory_during_calls"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters, from glibc's <malloc.h>
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEEP = {_M_TRIM_THRESHOLD: 1 << 30, _M_MMAP_MAX: 0}
# After a model call: blocks above 32 MiB mapped again. Any mallopt call ends glibc's dynamic mmap
# threshold (which rises to 32 MiB as a program frees large blocks), so it is set to where it rises.
_BETWEEN_CALLS = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 << 20}
# "kept": in effect now; "process": asked for by keep_freed_memory (never undone by a scope's end);
# "holders": scopes (model calls, ``with memory_kept()``) running now.
_state = {"kept": False, "process": False, "holders": 0}
_lock = threading.Lock()


@functools.cache
def _libc():
    """glibc, or ``None`` for another C library (musl, macOS, Windows), whose ``mallopt`` ignores
    these parameters."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt, libc.malloc_trim, libc.gnu_get_libc_version  # noqa: B018 (glibc has all three)
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _set(values: dict) -> bool:
    libc = _libc()
    return libc is not None and all(libc.mallopt(param, value) == 1 for param, value in values.items())


def _apply(enabled: bool) -> bool:
    ok = _set(_KEEP if enabled else _DEFAULTS)
    _state["kept"] = bool(enabled and ok)
    return ok


def keep_freed_memory(enabled: bool = True) -> bool:
    """Keep freed memory in this process from now on (``enabled``), or go back to glibc's defaults
    (large blocks mapped and unmapped each time) and hand what is kept back to the system, once no
    model call that keeps it is running. Returns whether the setting took effect: ``False`` where the
    C library is not glibc."""
    with _lock:
        _state["process"] = bool(enabled)
        if enabled or not _state["holders"]:
            ok = _apply(enabled)
        else:
            ok = _libc() is not None  # the running calls restore the defaults when they end
        if not enabled and not _state["holders"] and ok:
            _libc().malloc_trim(0)
        return ok


def freed_memory_kept() -> bool:
    """Whether freed memory is being kept now (for the process, or inside a model call)."""
    return _state["kept"]


def _hold() -> None:
    with _lock:
        _state["holders"] += 1
        if not _state["kept"]:
            _apply(True)


def _release() -> None:
    with _lock:
        _state["holders"] = max(0, _state["holders"] - 1)
        if not _state["holders"] and not _state["process"] and _state["kept"]:
            # Large blocks are mapped again; what the call freed stays for the next call (trim threshold).
            _state["kept"] = not _set(_BETWEEN_CALLS)


@contextlib.contextmanager
def memory_kept():
    """Keep freed memory inside the ``with`` block (or the decorated function) and go back to the
    previous setting after it: how the benchmarks time one variant with it and the next without."""
    _hold()
    try:
        yield
    finally:
        _release()


def _hold_hook(module: nn.Module, args) -> None:
    _hold()


def _release_hook(module: nn.Module, args, output) -> None:
    _release()


def keep_memory_during_calls(model: nn.Module) -> nn.Module:
    """Keep freed memory while ``model`` runs (forward hooks; the release runs even when the call
    raises). Sets ``model.excite_memory_kept``; returns ``model``. Calling it twice changes nothing."""
    if not getattr(model, "excite_memory_kept", False):
        model.register_forward_pre_hook(_hold_hook)
        model.register_forward_hook(_release_hook, always_call=True)
        model.excite_memory_kept = True
    return model
