"""What a result file records about the machine it was measured on."""

from __future__ import annotations

import contextlib
import os
import platform

import torch


def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), core count, load average now, torch version and threads:
    stored with every result."""
    cpu = platform.processor() or "unknown"
    flags = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(cpu=cpu, cores=os.cpu_count(), loadavg_1_5_15min=load, torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version(), avx512_bf16="avx512_bf16" in flags, amx="amx_bf16" in flags,
                vnni=any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8")))


def machine_label() -> str:
    """How busy the machine was when a benchmark started, in words, for its result file's label.

    The load average counts the benchmark's own threads once it runs, so only a load well above the
    cores says that other work shared the machine.
    """
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores + 0.5:
        return f"measured with no other job to speak of (1-minute load average {load:.1f} on {cores} cores at the start)"
    return (f"measured on a busy machine (1-minute load average {load:.1f} on {cores} cores at the start): "
            "absolute times are not this CPU's; the verdicts say which comparisons the noise allows")
