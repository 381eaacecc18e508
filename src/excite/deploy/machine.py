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
