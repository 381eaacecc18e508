"""How many networks ``excite.attach`` handles: the coverage table.

    python benchmarks/attach_coverage.py                       # the look-alikes of tests/ (always available)
    python benchmarks/attach_coverage.py --source timm         # every timm CNN (needs timm installed)
    python benchmarks/attach_coverage.py --source torchvision  # every torchvision classifier

For each network: ``excite.attach(model, ATTENTION, where=..., init="identity")`` on a randomly
initialised copy, then three checks: the output is bit-identical to the original's (identity init), every
original ``state_dict`` key is kept with its value, and one backward pass reaches every new parameter. The
look-alikes also have hand-listed insertion points (from their block code), so "right places" is checked
too; for timm / torchvision the number of insertions is recorded for inspection. Prints a table and writes
``benchmarks/results/attach-coverage-<source>-<date>.json`` with the machine and torch version.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from excite.deploy.bench import save_results
from excite.core.errors import ExciteError
from excite.plug.attach import attach

ROOT = Path(__file__).resolve().parent.parent


def lookalikes():
    """``name -> (build, where, expected insertion points)`` from the test suite's look-alike modules."""
    sys.path.insert(0, str(ROOT / "tests" / "plug"))
    import test_attach as a
    import test_attach_coverage as c
    import test_attach_timm_patterns as t

    cases = {f"cause/{k}": (b, "residual", e) for k, (b, e) in c.CAUSES.items()}
    cases.update({f"residual/{k}": (b, "residual", e) for k, (b, e) in a.NETS.items()})
    cases.update({f"residual/timm_{k}": (b, "residual", e) for k, (b, e) in {**c.TIMM, **t.PATTERNS}.items()})
    vgg_afters = ["features.1", "features.6", "features.11"]
    cases.update({f"block/{k}": (b, "block", vgg_afters if k == "vgg" else e) for k, (b, e) in c.BLOCK_NETS.items()})
    return cases


def timm_models():
    import timm

    names = [n for n in timm.list_models() if not any(t in n for t in ("vit", "deit", "swin", "beit", "mixer",
                                                                         "xcit", "cait", "levit", "eva", "mvit"))]
    return {f"timm/{n}": (lambda n=n: timm.create_model(n, pretrained=False), "residual", None) for n in names}


def torchvision_models():
    import torchvision

    names = [n for n in torchvision.models.list_models(module=torchvision.models)
             if not n.startswith(("vit", "swin", "maxvit"))]
    return {f"tv/{n}": (lambda n=n: torchvision.models.get_model(n, weights=None), "residual", None) for n in names}


def check(build, where: str, expected, attention: str, size: int) -> dict:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y0 = model(x)
    t0 = time.perf_counter()
    try:
        report = attach(model, attention, where=where, init="identity", input_size=(3, size, size), profile=False)
    except ExciteError as e:
        if where == "residual":  # a network without residual additions: the block mode
            return dict(check(build, "block", None, attention, size), refused_residual=str(e)[:200])
        return {"status": "refused", "error": str(e)[:200]}
    seconds = time.perf_counter() - t0
    after = model.state_dict()
    kept = all(k in after and torch.equal(after[k], v) for k, v in keys.items())
    with torch.no_grad():
        same = torch.equal(model(x), y0)
    model.train()
    model(x).float().square().mean().backward()
    new = [p for n, p in model.named_parameters() if n not in keys]
    grads = all(p.grad is not None for p in new)
    places = [i.after for i in report.insertions]
    right = expected is None or places == expected
    ok = kept and same and grads and right
    return {"status": "ok" if ok else "wrong", "where": where, "insertions": len(places), "tracer": report.tracer,
            "identical": same, "keys_kept": kept, "gradients": grads, "right_places": right if expected else None,
            "seconds": round(seconds, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("lookalikes", "timm", "torchvision"), default="lookalikes")
    ap.add_argument("--attention", default="eca")
    ap.add_argument("--size", type=int, default=None, help="input side (default 16 for look-alikes, 64 otherwise)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = {"lookalikes": lookalikes, "timm": timm_models, "torchvision": torchvision_models}[args.source]()
    size = args.size or (16 if args.source == "lookalikes" else 64)
    rows = {}
    for name, (build, where, expected) in cases.items():
        try:
            rows[name] = check(build, where, expected, args.attention, size)
        except Exception as e:  # noqa: BLE001 - a model that does not build or run is recorded, not fatal
            rows[name] = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:200]}"}
        r = rows[name]
        print(f"{name:40s} {r['status']:8s} {r.get('where', ''):8s} {r.get('insertions', ''):>4} "
              f"{r.get('tracer', '')}{'  ' + r['error'] if 'error' in r else ''}")
    counts = {s: sum(r["status"] == s for r in rows.values()) for s in ("ok", "wrong", "refused", "error")}
    print(f"{counts['ok']} of {len(rows)} attach correctly; {counts}")
    path = save_results({"source": args.source, "attention": args.attention, "input_size": [3, size, size],
                         "counts": counts, "total": len(rows), "models": rows},
                        f"attach-coverage-{args.source}", args.out, results_dir=ROOT / "benchmarks" / "results")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
