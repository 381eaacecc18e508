"""Throughput under load: training and inference img/s alone and beside a second CPU job that this
script starts, for several thread settings and OpenMP wait policies.

    python benchmarks/under_load.py                  # ResNet-20 train (batch 128) and infer, ~3 minutes
    python benchmarks/under_load.py --tiny           # seconds: checks the script end to end

Every measurement runs in a fresh worker process (the OpenMP wait policy is read when the library
loads, so it cannot change within a process); the settings are interleaved round by round, so
background load from elsewhere hits them alike. The competitor is what the issue saw: one other small
training job (ResNet-20, torch's default threads, spinning wait policy). The result file records
``os.getloadavg()`` before and after each phase and the free-core estimate excite's default uses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# (label, threads, OMP_WAIT_POLICY): threads "auto" is excite's default (excite.deploy.threads.auto_threads)
SETTINGS = [("all cores, spin (torch default)", "all", None), ("all cores, passive wait", "all", "PASSIVE"),
            ("1 thread", "1", None), ("auto (free cores)", "auto", None)]

COMPETITOR = """
import torch, excite
m = excite.create_model("resnet20", num_classes=10)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn({b}, 3, 32, 32), torch.randint(0, 10, ({b},))
while True:
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
"""


def worker(threads: str, steps: int, batch: int, size: int) -> dict:
    """Measure in this process: median img/s of ``steps`` training steps and inference calls."""
    import torch

    import excite
    from excite.deploy.threads import auto_threads, busy_cores

    busy = busy_cores()
    n = os.cpu_count() if threads == "all" else auto_threads() if threads == "auto" else int(threads)
    torch.set_num_threads(n)
    m = excite.create_model("resnet20", attention="eca", num_classes=10)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    out = dict(threads=n, busy_before=busy)
    for mode in ("train", "infer"):
        ts = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            if mode == "train":
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
            else:
                with torch.inference_mode():
                    m.eval()(x)
            if i:  # the first step warms up
                ts.append(time.perf_counter() - t0)
        out[mode] = batch / statistics.median(ts)
    return out


def _run_worker(setting, steps, batch, size) -> dict:
    _, threads, policy = setting
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--worker", threads, "--steps", str(steps), "--batch", str(batch),
           "--size", str(size)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(rounds: int, steps: int, batch: int, size: int) -> dict:
    phases = {}
    for phase in ("alone", "with competitor"):
        comp = None
        if phase == "with competitor":
            env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
            env.pop("OMP_WAIT_POLICY", None)
            comp = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(b=batch)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)  # let it import and start stepping
        load_before = os.getloadavg()
        got = {s[0]: [] for s in SETTINGS}
        try:
            for _ in range(rounds):
                for s in SETTINGS:
                    got[s[0]].append(_run_worker(s, steps, batch, size))
        finally:
            if comp is not None:
                comp.terminate()
                comp.wait()
        rows = {}
        for label, rs in got.items():
            rows[label] = dict(threads=rs[0]["threads"], busy_before=[r["busy_before"] for r in rs],
                               train_img_s=statistics.median(r["train"] for r in rs),
                               infer_img_s=statistics.median(r["infer"] for r in rs),
                               train_runs=[round(r["train"], 1) for r in rs], infer_runs=[round(r["infer"], 1) for r in rs])
        phases[phase] = dict(load_before=load_before, load_after=os.getloadavg(), settings=rows)
    base = phases["alone"]["settings"][SETTINGS[0][0]]
    for ph in phases.values():
        for row in ph["settings"].values():
            row["train_vs_alone_default"] = row["train_img_s"] / base["train_img_s"]
            row["infer_vs_alone_default"] = row["infer_img_s"] / base["infer_img_s"]
    return dict(model="resnet20+eca", batch=batch, input_size=size, rounds=rounds, steps=steps,
                competitor="resnet20 training, batch %d, torch default threads" % batch, phases=phases)


def table(res: dict) -> str:
    lines = [f"{'phase':<16} {'setting':<32} {'thr':>3} {'train img/s':>11} {'infer img/s':>11} {'train x':>8} {'infer x':>8}"]
    for phase, ph in res["phases"].items():
        for label, r in ph["settings"].items():
            lines.append(f"{phase:<16} {label:<32} {r['threads']:>3} {r['train_img_s']:>11.1f} {r['infer_img_s']:>11.1f} "
                         f"{r['train_vs_alone_default']:>8.3f} {r['infer_vs_alone_default']:>8.3f}")
        lines.append(f"{'':<16} load average before {ph['load_before'][0]:.2f}, after {ph['load_after'][0]:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: check the script, not the machine")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.steps, a.batch, a.size)))
        return 0
    rounds = a.rounds or (1 if a.tiny else 3)
    steps, batch = (a.steps or (2 if a.tiny else 5)), (a.batch or (4 if a.tiny else 128))
    size = 16 if a.tiny else a.size
    res = run(rounds, steps, batch, size)
    print(table(res))
    sys.path.insert(0, str(SRC))
    from excite.deploy.bench import save_results

    out = save_results(dict(tiny=a.tiny, **res), "under-load-" + ("tiny" if a.tiny else "cpu"), a.out,
                       results_dir=HERE / "results")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
