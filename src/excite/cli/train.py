"""``excite train``, ``excite eval`` and ``excite demo``: parse, call the library, format."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import tomllib

from excite.cli.args import MODEL_HELP, add_model_args, int_in, merge, model_from_args
from excite.core.errors import ExciteError
from excite.core.trust import check_config, read_text

# CLI flag -> TrainConfig field; default None means "not given" so that --config values survive.
# Types only convert; TrainConfig.validate checks every range, the same for flags, --config and studies.
_TRAIN_ARGS = [
    ("--dataset", str, "digits | fashion-mnist | mnist | cifar10 | cifar100 | imagefolder"),
    ("--data", str, "archive or folder for cifar10/cifar100/imagefolder (with --download: the folder to put it in)"),
    ("--image-size", int, "imagefolder: training crop and eval center-crop size (default 224)"),
    ("--workers", int, "imagefolder: DataLoader decode processes per training process (default 4)"),
    ("--subset", int, "use N evenly spaced images of each split (0: all): a quick smoke test"),
    ("--recipe", str, "named preset: resnet-cifar, eca-imagenet, digits-short, fashion-mnist, fashion-mnist-fast"),
    ("--time-budget", float, "minutes of wall time for the whole run: the lr schedule is planned to end with it "
                             "(--epochs is then the most it may run; 0: off)"),
    ("--warmup-fraction", float, "warm-up as a fraction of the run (0: --warmup-epochs)"),
    ("--eval-every", int, "evaluate every N epochs, the last always (0: only at the end)"),
    ("--eval-batch-size", int, "evaluation batch size"),
    ("--epochs", int, None), ("--batch-size", int, "global batch size"), ("--optimizer", str, "sgd | adamw"),
    ("--lr", float, None), ("--momentum", float, None), ("--weight-decay", float, None),
    ("--schedule", str, "cosine | step | constant | onecycle"), ("--warmup-epochs", float, None),
    ("--label-smoothing", float, None), ("--grad-clip", float, "max gradient norm (0: off)"),
    ("--ema-decay", float, "EMA of weights (0: off)"), ("--seed", int, None), ("--device", str, "cpu, cuda, cuda:1"),
    ("--threads", int, "torch CPU threads (0: default; at most the CPU cores)"),
    ("--stop-after-steps", int, "stop (with a checkpoint) after N steps in total"),
    ("--freeze-bn-last", int, "freeze BatchNorm statistics and affine parameters for the last N epochs (SENet)"),
    ("--precise-bn", int, "before each evaluation, recompute BatchNorm statistics as the plain average over N "
                          "training images (0: off; the digits-short recipe: 512)"),
    ("--freeze-backbone-epochs", int, "with --pretrained: train only the attention modules and the classifier "
                                      "for the first N epochs, then everything"),
    ("--checkpoint-every", int, "also save OUT/last.safetensors every N steps, so a kill loses at most N steps "
                                "(--resume continues exactly, mid-epoch; default: at epoch ends only)"),
]
# On/off options: --flag / --no-flag (None: not given, the config's or the default value stays).
_FLAGS = [("--resume", "continue exactly from OUT/last.safetensors"),
          ("--overwrite", "start a new run in an OUT that holds one, replacing its files (default: refused)"), ("--bf16", "bf16 autocast"),
          ("--channels-last", "channels_last memory format"),
          ("--compile", "compile the training forward with torch.compile (Inductor, needs a C++ compiler): "
                        "20-40 s once per run, then faster steps"), ("--skip-bad-images", "skip (and count) unreadable images"),
          ("--nesterov", "nesterov momentum (default on)"),
          ("--download", "cifar10/cifar100: download the official archive into --data (default ./data), MD5-checked"),
          ("--tensorboard", "also log scalars to OUT/tensorboard (needs: pip install tensorboard)"),
          ("--progress", "progress bar (default on)"),
          ("--eval-ema", "evaluate (and keep as the result) the EMA weights (with --ema-decay)"),
          ("--tta-flip", "final evaluation averages each image's logits with its mirror's (flip test-time augmentation)"),
          ("--scale-lr", "linear scaling rule: the lr used is --lr x batch size / 256 (Goyal et al. 2017)")]


def _read_config(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ExciteError(f"--config {p} is a folder, not a TOML file")
    try:
        return tomllib.loads(read_text(p))
    except tomllib.TOMLDecodeError as e:
        raise ExciteError(f"invalid TOML in {p}: {e}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ExciteError(f"invalid TOML in {p}: nested too deeply") from None


# Launch flags: this node's share of a torchrun job (training.distributed.launch); each process then
# runs the same command without them.
_LAUNCH = {"nproc_per_node": "processes on this node (CPU: gloo; GPU: one each, NCCL)",
           "nnodes": "nodes in the job (default 1); each node runs the same command with its --node-rank",
           "node_rank": "this node's number, 0 to NNODES-1 (node 0 hosts the rendezvous)",
           "rdzv_endpoint": "HOST:PORT of node 0, where the nodes meet (any free port, e.g. node0:29500)"}


def _launch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for key in _LAUNCH:
        p.add_argument("--" + key.replace("_", "-"))
    return p


def _without_launch_flags(argv: list[str]) -> list[str]:
    """The command line as typed, without the launch flags: what each launched process runs."""
    return _launch_parser().parse_known_args(argv)[1]


def cmd_train(args) -> int:
    from excite.training.engine import make_config, train  # torch-free start-up

    from_file = _read_config(args.config) if args.config else {}
    overrides = dict(from_file)
    for flag, _, _ in _TRAIN_ARGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for flag, _ in _FLAGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key, value in (("model", args.model), ("attention", args.attention), ("out", args.out),
                       ("pretrained", args.pretrained),
                       ("num_classes", None)):
        if value is not None:
            overrides[key] = value
    if args.attention_kwargs:
        overrides["attention_kwargs"] = merge(args.attention_kwargs)
    if args.model_option:
        overrides["options"] = merge(args.model_option)
    if args.input_size is not None or args.num_classes is not None:
        raise ExciteError("train takes its input size and classes from the dataset (--image-size for imagefolder)")
    check_config(from_file, overrides, args.config)  # a file's code references run only with --trust-code
    cfg = make_config(overrides)
    if any(getattr(args, key) is not None for key in _LAUNCH):
        from excite.training.distributed import launch  # torch-free CLI start-up

        given = lambda value, default: default if value is None else value  # noqa: E731  (0 is an error, not 1)
        return launch(_without_launch_flags(args.argv), nproc_per_node=given(args.nproc_per_node, 1),
                      nnodes=given(args.nnodes, 1), node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint)
    r = train(cfg)

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.model} attention={cfg.attention} on {cfg.dataset}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
              f"best {r['best_top1']:.2f}%  {r['img_per_s']:.0f} img/s" + (f"  -> {cfg.out}" if cfg.out else "")
              + (f"  ({r['skipped_images']} unreadable image reads skipped)" if r.get("skipped_images") else ""))
    return 0


def cmd_eval(args) -> int:
    from excite.data import load_dataset  # torch-free start-up
    from excite.factory import load_tensors  # torch-free start-up
    from excite.files.modelfile import read_model_file  # torch-free start-up
    from excite.training.engine import check_device, check_fits, evaluate  # torch-free start-up

    check_device(args.device)
    model = model_from_args(args)
    cfg = (getattr(model, "excite_file", {}) or {}).get("training") or {}
    dataset = args.dataset or cfg.get("dataset", "digits")
    _, test = load_dataset(dataset, args.data or (cfg.get("data") if dataset == cfg.get("dataset") else None),
                           skip_bad_images=args.skip_bad_images, image_size=cfg.get("image_size", 224))
    if args.ema:
        mf = read_model_file(args.model)
        if not mf.state or "ema" not in mf.state:
            raise ExciteError(f"--ema: {args.model} holds no EMA weights (train with --ema-decay)")
        load_tensors(model, mf.state["ema"], f"{args.model} (EMA)")
    check_fits(model, test, args.model)
    m = evaluate(model.to(args.device), test, device=args.device,
                 workers=cfg.get("workers", 0) if dataset == "imagefolder" else 0)
    if args.json:
        print(json.dumps(m))
        return 0
    spec = model.excite_spec
    print(f"{spec.arch} attention={spec.attention} on {dataset} ({m['n']} images): top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%")
    print("per-class top-1: " + "  ".join(f"{i}:{a:.1f}" for i, a in enumerate(m["per_class"])))
    return 0


def cmd_demo(args) -> int:
    from excite.study.demo import demo  # torch-free start-up

    seeds = tuple(range(args.seeds)) if args.seeds else None
    demo(args.out, epochs=args.epochs, seeds=seeds, quick=args.quick, progress=not args.no_progress)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model x attention pair (also under torchrun for several processes)")
    p.add_argument("--model", default=None, help=MODEL_HELP + "; a model file gives the initial weights (fine-tuning)")
    add_model_args(p, positional=False)
    p.add_argument("--pretrained", nargs="?", const="default", default=None, metavar="TAG",
                   help="start from public weights (excite weights list): torchvision, torchvision-v2, eca-official, "
                        "timm; no TAG: the model's first entry. New attention starts as the identity")
    p.add_argument("--config", help="TOML file of TrainConfig keys; command-line flags override it")
    p.add_argument("--out", help="output folder: best/last model files, log.jsonl, log.csv, config.json")
    for flag, typ, hlp in _TRAIN_ARGS:
        # --data-root: the name ImageNet scripts use for the same thing
        names = (flag, "--data-root") if flag == "--data" else (flag,)
        p.add_argument(*names, type=typ, default=None, help=hlp, dest=flag[2:].replace("-", "_"))
    for flag, hlp in _FLAGS:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=hlp)
    for key, hlp in _LAUNCH.items():
        p.add_argument("--" + key.replace("_", "-"), type=None if key == "rdzv_endpoint" else int, default=None,
                       help=hlp, metavar="HOST:PORT" if key == "rdzv_endpoint" else "N")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model (usually a trained model file): top-1, top-5, per-class accuracy")
    add_model_args(p)
    p.add_argument("--dataset", default=None, help="default: the dataset the model file was trained on, else digits")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights if saved")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--json", action="store_true", help="print all metrics (with the confusion matrix) as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job, a small study: resnet20 x {none, se, eca, cbam} on a harder digits setting, 5 seeds")
    p.add_argument("--out", default="excite-demo", help="results folder (default: excite-demo)")
    p.add_argument("--epochs", type=int_in(1, 10_000), default=None, help="epochs per run (default: 10; 3 with --quick)")
    p.add_argument("--seeds", type=int_in(1, 1000), default=None, help="number of seeds (default 5)")
    p.add_argument("--quick", action="store_true", help="1 seed, 3 epochs on the whole digits split: a smoke test")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
