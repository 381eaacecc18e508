"""What keeping freed memory during a call is worth: ``optimize_for_inference(model)`` against
``keep_memory=False``, each sample in a fresh process.

    python benchmarks/memory_kept.py            # ResNet-50 (+ECA) at 224px, batch 1 and 16
    python benchmarks/memory_kept.py --smoke    # ResNet-20 at 32px, batch 2: checks the script

The setting is process-wide glibc state (``excite.models.memory``): once one variant has run, a process
no longer has glibc's defaults, so timing both variants in one process would flatter the one without.
Here every sample is a new process that builds the model, makes two untimed calls and times three
(their median is the sample); ``--reps`` samples per variant (at least 9), the order of the variants
rotated between rounds, medians with quartiles and the too-noisy rule of ``excite.deploy.timing``.
The page faults per call come along. Writes benchmarks/results/memory-kept-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from excite.deploy.bench import save_results
from excite.deploy.machine import machine_label
from excite.deploy.timing import MIN_REPS, compare, summarize

HERE = os.path.dirname(os.path.abspath(__file__))

_SAMPLE = """
import json, resource, statistics, sys, time
import torch
import excite
model, attention, batch, size, keep, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = excite.create_model(model, attention=attention).eval()
opt = excite.optimize_for_inference(m, keep_memory=keep)
x = torch.randn(batch, 3, size, size)
with torch.inference_mode():
    for _ in range(2):
        opt(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt(x)
        times.append(time.perf_counter() - t0)
print(json.dumps(dict(s=statistics.median(times), faults=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 3)))
"""


def _sample(args: list) -> dict:
    r = subprocess.run([sys.executable, "-c", _SAMPLE, json.dumps(args)], capture_output=True, text=True,
                       timeout=600, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(model: str, attention, batch: int, size: int, reps: int, threads: int) -> dict:
    variants = {"kept (default)": True, "not kept": False}
    samples = {k: [] for k in variants}
    keys = list(variants)
    for r in range(reps):
        for k in keys[r % 2:] + keys[:r % 2]:
            samples[k].append(_sample([model, attention, batch, size, variants[k], threads]))
    out = {}
    for k, ss in samples.items():
        out[k] = dict(summarize([s["s"] for s in ss]), faults_per_call=sorted(s["faults"] for s in ss)[len(ss) // 2])
    target = compare(f"{model}+{attention or 'none'} batch {batch}: not kept time / kept time", out["not kept"],
                     out["kept (default)"], 1.0, higher_is_better=True,
                     note="each sample a fresh process; above 1: keeping the memory is faster")
    return dict(model=model, attention=attention or "none", batch=batch, input_size=size, timings=out, target=target)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="ResNet-20 at 32px, batch 2: checks the script")
    ap.add_argument("--reps", type=int, default=MIN_REPS, help=f"fresh-process samples per variant (at least {MIN_REPS})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    reps = max(a.reps, MIN_REPS)
    cases = [("resnet20", None, 2, 32)] if a.smoke else \
        [("resnet50", att, b, 224) for b in (16, 1) for att in (None, "eca")]
    res = dict(reps=reps, threads=a.threads, label=machine_label(), loadavg_at_start=os.getloadavg(), cases=[])
    name = "memory-kept-smoke" if a.smoke else "memory-kept"
    for model, att, batch, size in cases:
        c = measure(model, att, batch, size, reps, a.threads)
        res["cases"].append(c)
        out = save_results(res, name, a.out, results_dir=os.path.join(HERE, "results"))
        for k, t in c["timings"].items():
            print(f"{model}+{c['attention']:<5} batch {batch:>3} {k:<15} {1e3 * t['median_s']:9.1f} ms "
                  f"({1e3 * t['q25_s']:.1f}-{1e3 * t['q75_s']:.1f})  {t['faults_per_call']:>9.0f} faults/call"
                  + ("  too noisy" if t["too_noisy"] else ""))
        print(f"  {c['target']['verdict']}: ratio {c['target']['ratio']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
