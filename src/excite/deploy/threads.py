"""How many CPU threads to use: the cores actually free, not the cores the machine has.

PyTorch starts one OpenMP thread per core. When another process already keeps cores busy, the extra
threads do not share the remaining cores gracefully: every parallel region waits for its slowest
thread, and a thread that lost its core to the other process holds all the others up, which spin
(OpenMP's default wait policy) and so take even more time from the other process. Measured on this
project's 2-core machine by ``benchmarks/under_load.py`` (numbers in its result file and the deploy
README section).
"""

from __future__ import annotations

import os
import statistics
import time

__all__ = ["usable_cores", "busy_cores", "free_cores", "auto_threads"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(samples: int = 5, interval: float = 0.01) -> float:
    """Runnable tasks of other processes right now: the median of ``samples`` readings of
    ``procs_running`` in ``/proc/stat`` (an instant count, unlike the 1-minute load average), less
    this process's own reading thread. 0 where ``/proc/stat`` is unavailable."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - 1)
                        break
        except OSError:
            return 0.0
        if i + 1 < samples:
            time.sleep(interval)
    return float(statistics.median(counts)) if counts else 0.0


def free_cores() -> int:
    """Usable cores not taken by other runnable tasks, at least 1."""
    return max(1, min(usable_cores(), round(usable_cores() - busy_cores())))


def auto_threads() -> int:
    """The thread count excite picks when none is given: ``EXCITE_THREADS`` if set, else
    :func:`free_cores`. On an idle machine that is every core (PyTorch's own default); on this
    project's loaded 2-core machine it is 1, which trained ResNet-20+ECA at 5-28 img/s where torch's
    default 2 spinning threads managed 0.4-1.4 (``benchmarks/results/under-load-*-2026-11-29.json``).
    Sampled once, when called: a process that outlives the load keeps the count it started with."""
    env = os.environ.get("EXCITE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return free_cores()
