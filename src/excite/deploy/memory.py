"""Large CPU activations without page faults: keep freed memory in the process, as an arena does.

glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most on 64-bit Linux) with
a fresh ``mmap`` and hands it back to the kernel on ``free``. PyTorch allocates every activation anew,
so each activation above the threshold is faulted in page by page on every call: ResNet-50 at batch
16 (its 51 MB stem and layer1 outputs) ran 16-24% slower than with the memory kept
(``benchmarks/results/inference-cpu-2026-12-03.json``, the "memory kept" rows). ONNX Runtime and
OpenVINO keep their own arenas and pay none of this.

:func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and
``M_TRIM_THRESHOLD`` to 1 GiB (freed heap memory stays in the process for the next call). It is a
process-wide setting, as ``torch.set_num_threads`` is, so the library leaves it to the application
(``excite bench --runtimes`` times the default path with and without it). Written here because nothing
else does it in-process: PyTorch has no CPU caching allocator outside its mobile builds, and jemalloc
or tcmalloc only replace malloc through ``LD_PRELOAD`` before the process starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory", "freed_memory_kept", "memory_kept"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's <malloc.h>
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEEP = {_M_TRIM_THRESHOLD: 1 << 30, _M_MMAP_MAX: 0}
_state = {"kept": False}


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, or ``None`` on a C library without it (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt ignores these parameters
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(enabled: bool = True) -> bool:
    """Keep freed memory in this process (``enabled``) or go back to glibc's defaults (large blocks
    mapped and unmapped each time). Returns whether the setting took effect: ``False`` where the C
    library is not glibc, where nothing changes."""
    fn = _mallopt()
    if fn is None:
        return False
    values = _KEEP if enabled else _DEFAULTS
    ok = all(fn(param, value) == 1 for param, value in values.items())
    _state["kept"] = bool(enabled and ok)
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _state["kept"]


@contextlib.contextmanager
def memory_kept():
    """Keep freed memory inside the ``with`` block (or the decorated function) and restore the previous
    setting after it: how the benchmarks time one variant with it and the next without."""
    before = freed_memory_kept()
    keep_freed_memory(True)
    try:
        yield
    finally:
        if not before:
            keep_freed_memory(False)
