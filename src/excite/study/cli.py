"""CLI: ``excite study run STUDY``, ``excite study report STUDY_DIR`` (thin layers over the library)."""

from __future__ import annotations

from pathlib import Path


def _run(args) -> int:
    from .runner import run_study
    from .spec import load_study

    seeds = None
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    overrides = dict(seeds=seeds, dataset=args.dataset, models=args.models.split(",") if args.models else None,
                     recipe={"name": args.recipe} if args.recipe else None)
    study = load_study(args.study, overrides=overrides)
    folder = Path(args.out or f"studies/{study.name}")
    counts = run_study(study, folder, jobs=args.jobs, trainer=args.trainer)
    print(f"{counts['done']} run(s) finished, {counts['skipped']} skipped; results in {folder} "
          f"(weights of each run in {folder / 'runs'})")
    return 0


def _report(args) -> int:
    from .report import write_report

    paths = write_report(args.study_dir, args.out, profile=not args.no_profile)
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


def _inspect(args) -> int:
    import json

    from ..errors import ExciteError
    from .inspect import inspect_checkpoint

    kw = None
    if args.attention_kwargs:
        try:
            kw = json.loads(args.attention_kwargs)
        except json.JSONDecodeError as e:
            raise ExciteError(f"--attention-kwargs is not valid JSON ({e}); e.g. '{{\"k_size\": 3}}'") from None
    res = inspect_checkpoint(args.checkpoint, dataset=args.dataset, data=args.data, model=args.model,
                             attention=args.attention, attention_kwargs=kw, limit=args.limit, out=args.out)
    print(f"{len(res['stats']['mean'])} attention modules over {res['images']} images: {res['page']}")
    return 0


def register(sub) -> None:
    """Add ``study run`` and ``study report``."""
    p = sub.add_parser("study", help="ablation studies: run a grid of trainings, report with statistics")
    ss = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)
    r = ss.add_parser("run", help="run (or resume) a study: a TOML file or a built-in name")
    r.add_argument("study", help="TOML file or built-in: eca-table2, eca-kernel, se-reduction, resnext-cardinality, cbam-arrangement")
    r.add_argument("--out", help="study folder (default studies/NAME); holds results.sqlite")
    r.add_argument("--jobs", type=int, default=1, help="worker processes (CPU threads split; one GPU each)")
    r.add_argument("--seeds", help="comma-separated seeds, replacing the study's")
    r.add_argument("--models", help="comma-separated models, replacing the study's")
    r.add_argument("--dataset", help="dataset, replacing the study's")
    r.add_argument("--recipe", help="named recipe, replacing the study's")
    r.add_argument("--trainer", help="trainer as 'module:function' (default: the training engine)")
    r.set_defaults(func=_run)
    rep = ss.add_parser("report", help="write report.md, report.csv and report.html for a study folder")
    rep.add_argument("study_dir")
    rep.add_argument("--out", help="output folder (default: the study folder)")
    rep.add_argument("--no-profile", action="store_true", help="skip building models for params/MACs")
    rep.set_defaults(func=_report)
    i = sub.add_parser("inspect", help="record attention weights over a dataset; plot per class/stage and ECA kernels")
    i.add_argument("checkpoint", help="weights, e.g. STUDY_DIR/runs/<run-id>/model.safetensors")
    i.add_argument("--model", help="the checkpoint's model name (default: from the JSON beside the checkpoint)")
    i.add_argument("--attention", help="the checkpoint's attention (default: from the JSON beside it)")
    i.add_argument("--attention-kwargs", help="JSON, e.g. '{\"k_size\": 3}'")
    i.add_argument("--dataset", default="digits")
    i.add_argument("--data", help="archive or folder for cifar*/imagefolder")
    i.add_argument("--limit", type=int, default=512, help="images of the test split to record")
    i.add_argument("--out", default="inspect", help="output folder")
    i.set_defaults(func=_inspect)
