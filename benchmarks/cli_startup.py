"""How fast the command line answers: ``excite --help``, ``excite list models`` and ``import excite``,
beside ``import torch`` for scale. Medians of interleaved runs, each a fresh interpreter.

The CLI parses its arguments before importing torch (the package exports names lazily and
``list models`` reads a catalog), so these should cost about one bare interpreter start.

    python benchmarks/cli_startup.py [--repeats 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass (interpreter start)": [sys.executable, "-c", "pass"],
    "excite --help": [sys.executable, "-m", "excite", "--help"],
    "excite list models": [sys.executable, "-m", "excite", "list", "models"],
    "python -c 'import excite'": [sys.executable, "-c", "import excite"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/cli-startup-DATE.json)")
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):  # interleaved: A B C A B C ...
        for label, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[label].append(time.perf_counter() - t0)
    import os

    rows = [dict(command=k, median_s=statistics.median(v), min_s=min(v), runs=len(v)) for k, v in times.items()]
    print(f"{'command':<40} {'median s':>9} {'min s':>7}")
    for r in rows:
        print(f"{r['command']:<40} {r['median_s']:>9.3f} {r['min_s']:>7.3f}")
    from excite.deploy.bench import save_results

    path = save_results(dict(benchmark="cli_startup", repeats=args.repeats, loadavg=os.getloadavg(), rows=rows),
                        "cli-startup", args.out, results_dir=Path(__file__).parent / "results")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
