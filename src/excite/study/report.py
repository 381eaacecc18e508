"""``excite study report``: the paper's table with our numbers beside the published column, as
Markdown, CSV and one static HTML page whose plots are embedded PNGs (works offline)."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path

from . import db
from .spec import study_from_dict
from .stats import paired_ttest, summarize

COLUMNS = ("model", "variant", "published", "n", "mean", "std", "ci95_low", "ci95_high", "delta_vs_baseline",
           "p_paired", "params", "macs", "img_per_s")


def _profile(run: dict) -> tuple[float | None, float | None]:
    """Parameters and MACs of a run's model from ``excite.profile`` when it exists, else params only."""
    try:
        import excite
        from ..factory import create_model

        prof = getattr(excite, "profile", None)
        prof = getattr(prof, "profile", prof)
        v = run["variant"]
        model = create_model(run["model"], attention=v["attention"], attention_kwargs=v["attention_kwargs"],
                             num_classes=run.get("num_classes", 10), **v["model_kwargs"])
        if callable(prof):
            size = tuple(run.get("input_size") or model.default_input_size)
            p = prof(model, input_size=size)
            return float(p.params), float(p.macs)
        return float(sum(t.numel() for t in model.parameters())), None
    except Exception:  # the profiler is optional; a report must not fail for lack of it
        return None, None


def table(folder: str | Path, *, profile: bool = True) -> tuple[dict, list[dict], list[dict]]:
    """Return ``(study dict, rows, raw results)``: one row per model x variant in the study's order."""
    results = db.load_results(folder)
    con = db.connect(folder)
    try:
        spec = db.get_meta(con, "study")
        machine = db.get_meta(con, "machine", {})
        machines = db.get_meta(con, "machines", None) or ([machine] if machine else [])
    finally:
        con.close()
    study = study_from_dict(spec) if spec else None
    metric = study.metric if study else "top1"
    by = {}
    for r in results:
        by.setdefault((r["model"], r["label"]), {})[r["seed"]] = r
    models = study.models if study else sorted({m for m, _ in by})
    variants = study.variants if study else []
    labels = [v.label for v in variants] or sorted({lab for _, lab in by})
    published = {v.label: v.published for v in variants}
    rows = []
    for m in models:
        base = {s: r["result"][metric] for s, r in by.get((m, study.baseline if study else None), {}).items()}
        for lab in labels:
            runs = by.get((m, lab), {})
            if not runs:
                continue
            vals = {s: r["result"][metric] for s, r in runs.items()}
            summ = summarize(vals.values())
            delta, p, _ = paired_ttest(vals, base) if base and study and lab != study.baseline else (math.nan, math.nan, 0)
            first = next(iter(runs.values()))
            params = first["result"].get("params")
            macs = first["result"].get("macs")
            if profile and macs is None:
                info = dict(first["run"], input_size=first["result"].get("input_size"),
                            num_classes=first["result"].get("num_classes", 10))
                pp, mm = _profile(info)
                params, macs = params if params is not None else pp, mm
            ips = [r["result"].get("img_per_s") for r in runs.values() if r["result"].get("img_per_s")]
            rows.append(dict(model=m, variant=lab, published=published.get(lab), n=summ.n, mean=summ.mean, std=summ.std,
                             ci95_low=summ.ci_low, ci95_high=summ.ci_high, delta_vs_baseline=delta, p_paired=p,
                             params=params, macs=macs, img_per_s=sum(ips) / len(ips) if ips else None,
                             seeds=vals, curves={s: r["result"].get("curve", []) for s, r in runs.items()}))
    grid = {r.key for r in study.runs()} if study else {r["key"] for r in results}
    in_grid = sum(r["key"] in grid for r in results)
    return dict(study=spec or {}, machine=machine, machines=machines, n_runs=len(results), n_in_grid=in_grid,
                n_grid=len(grid)), rows, results


def _fmt(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and abs(x) >= 1e4:
        return f"{x / 1e6:.3f}M"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def describe_machine(info: dict) -> str:
    """One line naming a machine: CPU model and cores, GPUs, torch and Python versions."""
    if not info:
        return "an unrecorded machine"
    cpu = info.get("cpu_model") or info.get("processor") or "unknown CPU"
    parts = [f"{cpu} ({info.get('cpu_count', '?')} cores)"]
    if info.get("gpus"):
        parts.append(", ".join(info["gpus"]))
    parts.append(f"torch {info.get('torch', '?')}")
    if info.get("python"):
        parts.append(f"Python {info['python']}")
    return ", ".join(parts)


def header(meta: dict) -> str:
    """``N runs on <machine>``: the run count and where the runs were made (every machine, if several)."""
    machines = meta.get("machines") or ([meta["machine"]] if meta.get("machine") else [])
    where = " and ".join(describe_machine(m) for m in machines) or describe_machine({})
    n, in_grid, grid = meta.get("n_runs", 0), meta.get("n_in_grid", 0), meta.get("n_grid", 0)
    done = f"{n} runs" if n == in_grid == grid else f"{n} runs ({in_grid} of the {grid} in the study's grid)"
    return f"{done} on {where}"


def markdown(meta: dict, rows: list[dict]) -> str:
    """The table in the paper's layout: one row per variant, published column beside ours."""
    st = meta["study"]
    out = [f"# {st.get('title') or st.get('name', 'study')}", "",
           f"**{header(meta)}.**", "",
           f"Source of the published column: {st.get('source') or '-'}. Both top-1 columns are accuracy (%); "
           f"papers that print errors are shown as 100 - error. Dataset: {st.get('dataset')}, "
           f"recipe: {_recipe_name(st.get('recipe'))}, seeds: {st.get('seeds')}, baseline: {st.get('baseline')}.", "",
           f"Machine details: {'; '.join(str(m.get('platform', '-')) for m in meta.get('machines') or []) or '-'}.", "",
           "| model | variant | published top-1 acc. (%) | ours top-1 acc. (%) mean +- std | 95% CI | delta vs baseline "
           "| p (paired t) | n | params | MACs | img/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['variant']} | {_fmt(r['published'])} | {_fmt(r['mean'])} +- {_fmt(r['std'])} | "
                   f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}] | {_fmt(r['delta_vs_baseline'])} | "
                   f"{_fmt(r['p_paired'], 3)} | {r['n']} | {_fmt(r['params'])} | {_fmt(r['macs'])} | {_fmt(r['img_per_s'], 0)} |")
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(rows: list[dict]) -> dict[str, str]:
    """Base64 PNGs: accuracy vs params and vs MACs (ECA-Net Fig. 1 style), per-seed points, curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    for key, name in (("params", "parameters"), ("macs", "MACs")):
        pts = [r for r in rows if r[key] is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in pts:
            ax.errorbar(r[key], r["mean"], yerr=0 if math.isnan(r["std"]) else r["std"], fmt="o", capsize=3)
            ax.annotate(r["variant"], (r[key], r["mean"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel(name)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"accuracy vs {name}")
        figs[f"accuracy vs {name}"] = _png(fig)
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    for i, r in enumerate(rows):
        ys = list(r["seeds"].values())
        ax.scatter([i] * len(ys), ys, s=14)
        ax.hlines(r["mean"], i - 0.3, i + 0.3)
    ax.set_xticks(range(len(rows)), [f"{r['variant']}" for r in rows], rotation=45, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("per-seed results (line: mean)")
    figs["per-seed points"] = _png(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        for s, curve in r["curves"].items():
            pts = [(c["epoch"], c["train_loss"]) for c in curve if "train_loss" in c]
            if pts:
                ax.plot(*zip(*pts), alpha=0.6, label=f"{r['variant']} s{s}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("training curves")
    if len(rows) <= 6:
        ax.legend(fontsize=6)
    figs["training curves"] = _png(fig)
    return figs


def write_report(folder: str | Path, out: str | Path | None = None, *, profile: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.html`` for the study in ``folder``."""
    folder = Path(folder)
    out = Path(out) if out else folder
    meta, rows, _ = table(folder, profile=profile)
    out.mkdir(parents=True, exist_ok=True)  # only once the study has been read: a bad folder writes nothing
    md = markdown(meta, rows)
    paths = dict(markdown=out / "report.md", csv=out / "report.csv", html=out / "report.html")
    paths["markdown"].write_text(md)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    imgs = plots(rows)
    body = [f"<h1>{html.escape(meta['study'].get('title') or meta['study'].get('name', 'study'))}</h1>",
            f"<p>Source of the published column: {html.escape(str(meta['study'].get('source') or '-'))}</p>",
            f"<p><b>{html.escape(header(meta))}</b></p>", "<table>",
            "<tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"]
    for r in rows:
        body.append("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c], 3))}</td>" for c in COLUMNS) + "</tr>")
    body.append("</table>")
    for title, b64 in imgs.items():
        body.append(f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{b64}\">")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>excite study report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;"
            "padding:2px 6px;text-align:right}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    paths["html"].write_text(page)
    return paths


def _recipe_name(recipe) -> str:
    """``{"name": "digits-short", "epochs": 4}`` -> ``digits-short (epochs=4)``."""
    if not isinstance(recipe, dict):
        return str(recipe)
    rest = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "name")
    return f"{recipe.get('name', 'custom')}" + (f" ({rest})" if rest else "")
