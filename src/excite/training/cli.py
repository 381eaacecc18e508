"""``excite train``, ``excite eval`` and ``excite demo``: parse, call the library, format."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ExciteError

# CLI flag -> TrainConfig field; default None means "not given" so that --config values survive.
_TRAIN_ARGS = [
    ("--model", str, "model name, e.g. resnet20"),
    ("--attention", str, "attention module or 'none'"),
    ("--dataset", str, "digits | cifar10 | cifar100 | imagefolder"),
    ("--data", str, "archive or folder for cifar10/cifar100/imagefolder (with --download: the folder to put it in)"),
    ("--image-size", int, "imagefolder: training crop and eval center-crop size (default 224)"),
    ("--workers", int, "imagefolder: DataLoader decode processes per training process (default 4)"),
    ("--subset", int, "use N evenly spaced images of each split (0: all): a quick smoke test"),
    ("--recipe", str, "named preset: resnet-cifar, eca-imagenet, digits-short"),
    ("--epochs", int, None), ("--batch-size", int, "global batch size"), ("--optimizer", str, "sgd | adamw"),
    ("--lr", float, None), ("--momentum", float, None), ("--weight-decay", float, None),
    ("--schedule", str, "cosine | step | constant"), ("--warmup-epochs", float, None),
    ("--label-smoothing", float, None), ("--grad-clip", float, "max gradient norm (0: off)"),
    ("--ema-decay", float, "EMA of weights (0: off)"), ("--seed", int, None), ("--device", str, "cpu, cuda, cuda:1"),
    ("--threads", int, "torch CPU threads (0: default)"), ("--stop-after-steps", int, "stop (with a checkpoint) after N steps in total"),
]
_FLAGS = [("--resume", "continue exactly from OUT/last.safetensors"), ("--bf16", "bf16 autocast"),
          ("--channels-last", "channels_last memory format"), ("--skip-bad-images", "skip (and count) unreadable images"),
          ("--nesterov", "nesterov momentum"),
          ("--download", "cifar10/cifar100: download the official archive into --data (default ./data), MD5-checked"),
          ("--tensorboard", "also log scalars to OUT/tensorboard (needs: pip install tensorboard)")]


def _read_config(path: str) -> dict:
    import tomllib

    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ExciteError(f"invalid TOML in {p}: {e}") from None


def cmd_train(args) -> int:
    from .engine import make_config, train

    overrides = _read_config(args.config) if args.config else {}
    for flag, _, _ in _TRAIN_ARGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for flag, _ in _FLAGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key):
            overrides[key] = True
    if args.out is not None:
        overrides["out"] = args.out
    if args.no_progress:
        overrides["progress"] = False
    cfg = make_config(overrides)
    r = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.model} attention={cfg.attention} on {cfg.dataset}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
              f"best {r['best_top1']:.2f}%  {r['img_per_s']:.0f} img/s" + (f"  -> {cfg.out}" if cfg.out else "")
              + (f"  ({r['skipped_images']} unreadable image reads skipped)" if r.get("skipped_images") else ""))
    return 0


def cmd_eval(args) -> int:
    from .. import create_model
    from ..data import load_dataset
    from ..modelfile import load_state
    from .engine import evaluate

    st = load_state(args.checkpoint)
    cfg = st.get("config", {})
    dataset = args.dataset or cfg.get("dataset", "digits")
    _, test = load_dataset(dataset, args.data or cfg.get("data"), skip_bad_images=args.skip_bad_images,
                           image_size=cfg.get("image_size", 224))
    att = cfg.get("attention") or "none"
    model = create_model(cfg.get("model", "resnet20"), attention=att, num_classes=test.num_classes)
    weights = st["ema"] if args.ema and "ema" in st else st["model"]
    model.load_state_dict(weights)
    m = evaluate(model, test, workers=cfg.get("workers", 0) if dataset == "imagefolder" else 0)
    if args.json:
        print(json.dumps(m))
        return 0
    print(f"{cfg.get('model')} attention={att} on {dataset} ({m['n']} images): top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%")
    print("per-class top-1: " + "  ".join(f"{i}:{a:.1f}" for i, a in enumerate(m["per_class"])))
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    seeds = tuple(range(args.seeds)) if args.seeds else None
    demo(args.out, epochs=args.epochs, seeds=seeds, quick=args.quick, progress=not args.no_progress)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model x attention pair (also under torchrun for several processes)")
    p.add_argument("--config", help="TOML file of TrainConfig keys; command-line flags override it")
    p.add_argument("--out", help="output folder: checkpoints, log.jsonl, log.csv, config.json")
    for flag, typ, hlp in _TRAIN_ARGS:
        # --data-root: the name ImageNet scripts use for the same thing
        names = (flag, "--data-root") if flag == "--data" else (flag,)
        p.add_argument(*names, type=typ, default=None, help=hlp, dest=flag[2:].replace("-", "_"))
    for flag, hlp in _FLAGS:
        p.add_argument(flag, action="store_true", help=hlp)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a training checkpoint: top-1, top-5, per-class accuracy")
    p.add_argument("checkpoint", help="a training checkpoint (last.safetensors or best.safetensors)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights if saved")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--json", action="store_true", help="print all metrics (with the confusion matrix) as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the 10-minute study: resnet20 x {none, se, eca, cbam} on a harder digits setting, 5 seeds")
    p.add_argument("--out", default="excite-demo", help="results folder (default: excite-demo)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: sized for ~10 min)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5)")
    p.add_argument("--quick", action="store_true", help="1 seed, 3 epochs on the whole digits split: a smoke test")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
