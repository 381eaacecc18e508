"""``excite study report``: the paper's table with our numbers beside the published column, as
Markdown, CSV and one static HTML page whose plots are embedded PNGs (works offline)."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path

from excite.core.trust import check_options, check_reference
from excite.study import db
from excite.study.spec import study_from_dict
from excite.study.stats import detectable_difference, paired_difference_sd, paired_ttest, summarize

# CSV keys (machine-readable, stable) and the headings people read in the Markdown and HTML tables.
COLUMNS = ("model", "variant", "published", "n", "mean", "std", "ci95_low", "ci95_high", "delta_vs_baseline",
           "p_paired", "detectable_80", "separated", "params", "macs", "img_per_s")
LABELS = {
    "model": "model", "variant": "variant", "published": "published top-1 (%)", "n": "seeds",
    "mean": "top-1 (%) mean", "std": "std (pp)", "ci95_low": "95% CI low (%)", "ci95_high": "95% CI high (%)",
    "delta_vs_baseline": "difference vs baseline (pp)", "p_paired": "p (paired t)",
    "detectable_80": "detectable at 80% power (pp)", "separated": "separated from baseline?",
    "params": "parameters", "macs": "MACs", "img_per_s": "training images/s",
}
ALPHA = 0.05  # the paired test's level; "separated" means p < ALPHA


def verdict(delta: float, p: float, detectable: float) -> str:
    """What a comparison shows, in words: separated, or not and how large a difference it could have seen."""
    if math.isnan(delta):
        return "-"
    if not math.isnan(p) and p < ALPHA:
        return f"yes ({'better' if delta > 0 else 'worse'}, p < {ALPHA:g})"
    if math.isnan(detectable):
        return "no (cannot test: fewer than 2 seeds or no spread)"
    return f"no (differences under {detectable:.2f} pp were not detectable)"


def _profile(run: dict) -> tuple[float, float]:
    """Parameters and MACs of a run's model, counted on the meta device (no weights needed)."""
    from excite.factory import resolve_model  # torch only when profiling
    from excite.profiling.accounting import profile  # torch only when profiling

    v = run["variant"]
    check_reference(run["model"], db.DB_NAME)  # the database is a file: its code references need --trust-code
    check_options(run["model"], v.get("options", v.get("model_kwargs", {})), db.DB_NAME)
    model = resolve_model(run["model"], attention=v["attention"], attention_kwargs=v["attention_kwargs"],
                          options=v.get("options", v.get("model_kwargs", {})), num_classes=run.get("num_classes", 10), device="meta")
    size = tuple(run.get("input_size") or model.default_input_size)
    p = profile(model, input_size=size)
    return float(p.params), float(p.macs)


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
            delta, p, npairs = paired_ttest(vals, base) if base and study and lab != study.baseline else (math.nan, math.nan, 0)
            detect = detectable_difference(paired_difference_sd(vals, base), npairs, ALPHA) if npairs else math.nan
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
                             detectable_80=detect, separated=verdict(delta, p, detect),
                             params=params, macs=macs, img_per_s=sum(ips) / len(ips) if ips else None,
                             seeds=vals, curves={s: r["result"].get("curve", []) for s, r in runs.items()}))
    grid = {r.key for r in study.runs()} if study else {r["key"] for r in results}
    in_grid = sum(r["key"] in grid for r in results)
    return dict(study=spec or {}, machine=machine, machines=machines, n_runs=len(results), n_in_grid=in_grid,
                n_grid=len(grid)), rows, results


STATS_NOTE = ("Statistics over seeds: mean +- sample standard deviation; the 95% interval is the Student-t "
              "interval of the mean computed on the logit scale and mapped back, so it stays inside 0-100%. "
              "Differences are paired by seed (same data order and initialisation) and tested with the paired "
              "t-test; \"detectable at 80% power\" is the smallest true difference that test would find 4 times "
              "in 5 with these seeds and this spread: a difference below it reads \"not significant\" because the "
              "study is too small to see it, not because it is zero. pp: percentage points.")


def _fmt(x, nd=2, *, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and abs(x) >= 1e4:
        return f"{x / 1e6:.3f}M"
    if isinstance(x, float):
        return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    return str(x)


def _count(x) -> str:
    """Parameters or MACs in readable units (0.27M, 40.55M, 1.82G)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    x = float(x)
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _mean_std(r: dict) -> str:
    if r["n"] == 1:
        return f"{_fmt(r['mean'])} (1 run, no spread)"
    return f"{_fmt(r['mean'])} +- {_fmt(r['std'])}"


def _ci(r: dict) -> str:
    if r["n"] < 2:
        return "- (needs 2+ seeds)"
    return f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]"


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
           STATS_NOTE, "",
           "| model | variant | published top-1 (%) | ours top-1 (%) mean +- std | 95% CI (%) | difference vs "
           "baseline (pp) | p (paired t) | detectable at 80% power (pp) | separated from baseline? | seeds | "
           "parameters | MACs | training images/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['variant']} | {_fmt(r['published'])} | {_mean_std(r)} | {_ci(r)} | "
                   f"{_fmt(r['delta_vs_baseline'], signed=True)} | {_fmt(r['p_paired'], 3)} | {_fmt(r['detectable_80'])} | "
                   f"{r['separated']} | {r['n']} | {_count(r['params'])} | {_count(r['macs'])} | {_fmt(r['img_per_s'], 0)} |")
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt  # slow import, plots only

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _yerr(r: dict) -> tuple[float, float]:
    """Asymmetric error bar: the 95% interval around the mean (zero with one seed)."""
    if r["n"] < 2 or math.isnan(r["ci95_low"]):
        return 0.0, 0.0
    return r["mean"] - r["ci95_low"], r["ci95_high"] - r["mean"]


def plots(rows: list[dict]) -> dict[str, str]:
    """Base64 PNGs: accuracy vs params and vs MACs (ECA-Net Fig. 1 style) with 95% intervals,
    per-seed points, training curves. Each variant has its own colour and marker, named in a legend
    (labels written beside points collide when variants cost the same)."""
    import matplotlib  # slow import, plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # slow import, plots only

    plt.rcParams.update({"font.size": 11, "legend.fontsize": 10, "axes.titlesize": 12})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xhp<>"
    style = {(r["model"], r["variant"]): (colors[i % len(colors)], markers[i % len(markers)]) for i, r in enumerate(rows)}
    multi_model = len({r["model"] for r in rows}) > 1
    name_of = lambda r: f"{r['model']} {r['variant']}" if multi_model else r["variant"]  # noqa: E731
    figs = {}
    for key, what in (("params", "parameters"), ("macs", "MACs")):
        pts = [r for r in rows if r[key] is not None]
        if not pts:
            continue
        scale, unit = (1e6, "millions") if max(float(r[key]) for r in pts) >= 1e6 else (1e3, "thousands")
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        xs = [float(r[key]) / scale for r in pts]
        span = (max(xs) - min(xs)) or max(abs(xs[0]) * 0.01, 1e-9)
        groups: dict[int, list[int]] = {}  # points of (nearly) equal cost are drawn side by side, not on top
        for i, x in enumerate(xs):
            groups.setdefault(round((x - min(xs)) / span * 100), []).append(i)
        for members in groups.values():
            for k, i in enumerate(members):
                r = pts[i]
                c, m = style[(r["model"], r["variant"])]
                lo, hi = _yerr(r)
                dodge = 0.015 * span * (k - (len(members) - 1) / 2)  # 1.5% of the axis apart; the legend names them
                ax.errorbar(xs[i] + dodge, r["mean"], yerr=[[lo], [hi]], fmt=m, color=c, capsize=4, ms=7,
                            label=name_of(r))
        ax.ticklabel_format(axis="both", useOffset=False, style="plain")
        ax.set_xlabel(f"{what} ({unit})")
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.set_title(f"accuracy vs {what} (mean, bars: 95% interval over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        figs[f"accuracy vs {what}"] = _png(fig)
    fig, ax = plt.subplots(figsize=(max(7.5, len(rows) * 0.9), 4.5))
    for i, r in enumerate(rows):
        c, m = style[(r["model"], r["variant"])]
        ys = list(r["seeds"].values())
        ax.scatter([i] * len(ys), ys, s=28, color=c, marker=m, alpha=0.8)
        ax.hlines(r["mean"], i - 0.3, i + 0.3, color=c)
        lo, hi = _yerr(r)
        ax.errorbar(i + 0.35, r["mean"], yerr=[[lo], [hi]], fmt="none", ecolor=c, capsize=3)
    ax.set_xticks(range(len(rows)), [name_of(r) for r in rows], rotation=30, ha="right")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("every seed (points), mean (line) and 95% interval (bar)")
    ax.grid(axis="y", alpha=0.3)
    figs["per-seed results"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rows:
        c, _ = style[(r["model"], r["variant"])]
        for j, (s, curve) in enumerate(sorted(r["curves"].items())):
            pts = [(c_["epoch"], c_["train_loss"]) for c_ in curve if "train_loss" in c_]
            if pts:
                ax.plot(*zip(*pts), color=c, alpha=0.7, marker=".", label=name_of(r) if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (last batch of the epoch)")
    ax.set_title("training curves (one line per seed)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figs["training curves"] = _png(fig)
    return figs


HTML_HEADINGS = ("model", "variant", "published top-1 (%)", "ours top-1 (%) mean +- std", "95% CI (%)",
                 "difference vs baseline (pp)", "p (paired t)", "detectable at 80% power (pp)",
                 "separated from baseline?", "seeds", "parameters", "MACs", "training images/s")


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
            w.writerow(["" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c])) else r[c] for c in COLUMNS])
    imgs = plots(rows)
    body = [f"<h1>{html.escape(meta['study'].get('title') or meta['study'].get('name', 'study'))}</h1>",
            f"<p>Source of the published column: {html.escape(str(meta['study'].get('source') or '-'))}</p>",
            f"<p><b>{html.escape(header(meta))}</b></p>",
            f"<p>Dataset: {html.escape(str(meta['study'].get('dataset')))}, recipe: "
            f"{html.escape(_recipe_name(meta['study'].get('recipe')))}, seeds: {html.escape(str(meta['study'].get('seeds')))}, "
            f"baseline: {html.escape(str(meta['study'].get('baseline')))}.</p>",
            f"<p class=\"note\">{html.escape(STATS_NOTE)}</p>", "<table>",
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HTML_HEADINGS) + "</tr>"]
    for r in rows:
        cells = [r["model"], r["variant"], _fmt(r["published"]), _mean_std(r), _ci(r),
                 _fmt(r["delta_vs_baseline"], signed=True), _fmt(r["p_paired"], 3), _fmt(r["detectable_80"]),
                 r["separated"], str(r["n"]), _count(r["params"]), _count(r["macs"]), _fmt(r["img_per_s"], 0)]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    for title, b64 in imgs.items():
        body.append(f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{b64}\">")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>excite study report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:3px 8px}td{text-align:right}td:nth-child(-n+2),td:nth-child(9)"
            "{text-align:left}th{background:#eee;font-weight:600}.note{color:#333;font-size:0.95em}img{max-width:100%}"
            "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    paths["html"].write_text(page)
    return paths


def _recipe_name(recipe) -> str:
    """``{"name": "digits-short", "epochs": 4}`` -> ``digits-short (epochs=4)``."""
    if not isinstance(recipe, dict):
        return str(recipe)
    rest = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "name")
    return f"{recipe.get('name', 'custom')}" + (f" ({rest})" if rest else "")
