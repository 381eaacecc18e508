"""A timing method that cannot flatter: the rules every excite benchmark follows.

* every variant gets the same warm-up (compiles and first-call costs happen before, and are reported
  apart);
* at least 9 repetitions, and the order of the variants rotated between repetitions, so that no
  variant always runs right after the same neighbour (a runtime whose thread pool keeps spinning after
  its call slows whatever comes next: ONNX Runtime's ``session.intra_op.allow_spinning`` is on by
  default, and it is turned off here);
* medians with quartiles, and a variant whose interquartile range exceeds 10% of its median is
  *too noisy*;
* a target compares two variants timed in the same rotation round by round: each round runs every
  variant back to back, so a slow spell of the machine (on a shared 2-core VM they last from a fraction
  of a second to minutes, and move whole rounds by 10-30%) slows both sides of a round alike. The
  target's ratio is the median of the per-round ratios and its noise their interquartile range; above
  10% of the median the target is "not measured: too noisy", never met. Timings from different runs
  (another process, another rotation) are compared by their medians, and either one's noise decides.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

from excite.core.errors import check_range

__all__ = ["MIN_REPS", "NOISE_LIMIT", "time_rotated", "summarize", "paired_ratios", "compare", "ort_session"]

MIN_REPS = 9
NOISE_LIMIT = 0.10  # IQR / median above which a timing is too noisy to decide anything


def summarize(times: list[float]) -> dict:
    """Median, quartiles, IQR / median and the too-noisy verdict of a list of seconds."""
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [med] * 3
    spread = (q[2] - q[0]) / med if med > 0 else 0.0
    return dict(median_s=med, q25_s=q[0], q75_s=q[2], iqr_rel=spread, runs=len(times),
                too_noisy=spread > NOISE_LIMIT, times_s=list(times))


def time_rotated(steps: dict[str, Callable[[], object]], *, reps: int = MIN_REPS, warmup: int = 1) -> dict:
    """Time zero-argument callables: ``warmup`` untimed calls of each (the same for all), then ``reps``
    rounds, round ``r`` starting at variant ``r mod n`` (rotation). Returns ``{label: summarize(...)}``."""
    check_range("reps", reps, low=MIN_REPS, integer=True)
    check_range("warmup", warmup, low=0, integer=True)
    keys = list(steps)
    for _ in range(warmup):
        for k in keys:
            steps[k]()
    times = {k: [] for k in keys}
    for r in range(reps):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    rotation = uuid.uuid4().hex[:12]  # tags this call's timings (unique across processes): their rounds pair up
    return {k: dict(summarize(ts), rotation=rotation) for k, ts in times.items()}


def paired_ratios(num: dict, den: dict) -> list[float] | None:
    """Round-by-round ``num / den`` when both timings come from one :func:`time_rotated` call, else ``None``."""
    rotation = num.get("rotation")
    if rotation is None or rotation != den.get("rotation") or len(num["times_s"]) != len(den["times_s"]):
        return None
    return [a / b for a, b in zip(num["times_s"], den["times_s"])]


def compare(name: str, num: dict, den: dict, goal: float, *, higher_is_better: bool, note: str = "") -> dict:
    """A target ``num / den`` against ``goal``: met, missed (and by how much), or "not measured: too
    noisy". Timings of one rotation are paired round by round (the ratio is the median of the rounds'
    ratios and their IQR its noise, see the module docstring); others compare medians, either one's
    IQR above :data:`NOISE_LIMIT` making the target too noisy."""
    rounds = paired_ratios(num, den)
    if rounds is not None:
        paired = summarize(rounds)
        ratio, noisy = paired["median_s"], paired["too_noisy"]
    else:
        ratio, noisy = num["median_s"] / den["median_s"], num["too_noisy"] or den["too_noisy"]
    met = ratio >= goal if higher_is_better else ratio <= goal
    if noisy:
        verdict = "not measured: too noisy"
    else:
        verdict = "met" if met else f"missed by {100 * abs(ratio - goal) / goal:.1f}% of the goal"
    out = dict(target=name, ratio=round(ratio, 4), goal=goal, higher_is_better=higher_is_better,
               met=None if noisy else met, verdict=verdict,
               iqr_rel=[round(num["iqr_rel"], 4), round(den["iqr_rel"], 4)], note=note)
    if rounds is not None:
        out.update(paired=True, ratio_q25=round(paired["q25_s"], 4), ratio_q75=round(paired["q75_s"], 4),
                   ratio_iqr_rel=round(paired["iqr_rel"], 4))
    return out


def ort_session(path: str, threads: int, *, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads that do not spin after a call (so
    that it takes no CPU from whatever runs next); with ``profile_prefix``, ONNX Runtime's profiler on,
    writing there (``session.end_profiling()`` returns the file)."""
    import onnxruntime as ort  # optional package

    so = ort.SessionOptions()
    if profile_prefix is not None:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
