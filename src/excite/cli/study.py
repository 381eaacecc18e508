"""CLI: ``excite study run STUDY``, ``excite study report STUDY_DIR`` (thin layers over the library)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from excite.cli.args import add_model_args, add_trust_arg, float_in, int_in
from excite.core.errors import ExciteError


def _run(args) -> int:
    from excite.study.runner import run_study  # torch-free start-up
    from excite.study.spec import load_study  # torch-free start-up

    seeds = args.seeds
    overrides = dict(seeds=seeds, dataset=args.dataset, models=args.models.split(",") if args.models else None,
                     recipe={"name": args.recipe} if args.recipe else None)
    study = load_study(args.study, overrides=overrides)
    folder = Path(args.out or f"studies/{study.name}")
    # Progress (runs done / total, each run's epochs) on stderr; the summary line on stdout.
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.ray is not None:
        from excite.study.ray_runner import run_study_ray  # torch-free CLI start-up

        if args.jobs is not None:
            raise ExciteError("--jobs applies to local studies; on Ray every run is a task sized by "
                              "--cpus-per-run and --gpus-per-run")
        counts = run_study_ray(study, folder, address=None if args.ray == "local" else args.ray, trainer=args.trainer,
                               device=args.device or "cpu", cpus_per_run=args.cpus_per_run or 1,
                               gpus_per_run=args.gpus_per_run, overwrite=args.overwrite, log=log)
    else:
        if args.cpus_per_run is not None or args.gpus_per_run is not None:
            raise ExciteError("--cpus-per-run and --gpus-per-run apply to --ray studies; locally use --jobs")
        counts = run_study(study, folder, jobs=args.jobs or 1, trainer=args.trainer, overwrite=args.overwrite,
                           log=log, device=args.device)
    print(f"{counts['done']} run(s) finished, {counts['skipped']} skipped; results in {folder} "
          f"(weights of each run in {folder / 'runs'})")
    return 0


def _check_out_folder(out) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ExciteError(f"--out {out}: exists and is not a folder")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integer seeds, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more seeds >= 0, e.g. 0,1,2")
    return seeds


def _report(args) -> int:
    from excite.study.report import write_report  # torch-free start-up

    _check_out_folder(args.out)
    paths = write_report(args.study_dir, args.out, profile=not args.no_profile)
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


def _inspect(args) -> int:
    from excite.study.inspect import inspect_checkpoint  # torch-free start-up

    if args.attention or args.attention_kwargs or args.model_option or args.num_classes or args.input_size:
        raise ExciteError("inspect takes the model from MODEL (a model file describes itself; for a name, "
                          "train it first)")
    _check_out_folder(args.out)
    res = inspect_checkpoint(args.model, dataset=args.dataset, data=args.data, limit=args.limit, out=args.out)
    print(f"{len(res['stats']['mean'])} attention modules over {res['images']} images: {res['page']}")
    return 0


def register(sub) -> None:
    """Add ``study run`` and ``study report``."""
    p = sub.add_parser("study", help="ablation studies: run a grid of trainings, report with statistics")
    ss = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)
    r = ss.add_parser("run", help="run (or resume) a study: a TOML file or a built-in name")
    r.add_argument("study", help="TOML file or a built-in (excite/study/*.toml): eca-table2, eca-kernel, se-reduction, "
                                  "resnext-cardinality, cbam-arrangement, fashion-mnist-attention, resnet-v2-shortcuts, "
                                  "resnet-v2-activations, se-integration, se-stages, se-squeeze-excitation, compound-scaling, stn-rts, "
                                  "degradation, resnext29-cardinality")
    r.add_argument("--out", help="study folder (default studies/NAME); holds results.sqlite")
    r.add_argument("--jobs", type=int_in(1, 256), default=None,
                   help="worker processes (CPU threads split; one GPU each); default 1")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run each pending run as a task on the Ray cluster at ADDRESS (HOST:PORT of its head, or "
                        "auto); no ADDRESS: a local cluster for this command (needs: pip install 'excite[ray]')")
    r.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="train on cpu or cuda (default: the GPUs when there are any; with --ray: cpu)")
    r.add_argument("--cpus-per-run", type=float_in(0.01, 1024), default=None,
                   help="--ray: CPUs each run asks for, and trains with as threads (default 1)")
    r.add_argument("--gpus-per-run", type=float_in(0.01, 64), default=None,
                   help="--ray --device cuda: GPUs each run asks for (default 1; 0.25: four small networks share one)")
    r.add_argument("--seeds", type=_seeds, help="comma-separated seeds, replacing the study's")
    r.add_argument("--models", help="comma-separated models, replacing the study's")
    r.add_argument("--dataset", help="dataset, replacing the study's")
    r.add_argument("--recipe", help="named recipe, replacing the study's")
    r.add_argument("--trainer", help="trainer as 'module:function' (default: the training engine); "
                                     "the module's code is imported and run")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the results in an --out that holds a different study (default: refused)")
    add_trust_arg(r)
    r.set_defaults(func=_run)
    rep = ss.add_parser("report", help="write report.md, report.csv and report.html for a study folder")
    rep.add_argument("study_dir")
    rep.add_argument("--out", help="output folder (default: the study folder)")
    rep.add_argument("--no-profile", action="store_true", help="skip building models for params/MACs")
    add_trust_arg(rep)
    rep.set_defaults(func=_report)
    i = sub.add_parser("inspect", help="record attention weights over a dataset; plot per class/stage and ECA kernels")
    add_model_args(i)
    i.add_argument("--dataset", default="digits")
    i.add_argument("--data", help="archive or folder for cifar*/imagefolder")
    i.add_argument("--limit", type=int_in(1, 10_000_000), default=512, help="images of the test split to record")
    i.add_argument("--out", default="inspect", help="output folder")
    i.set_defaults(func=_inspect)
