"""The command line's shared arguments, defined once: the model reference and its settings, input
sizes, and numbers with their ranges. Imports neither torch nor model code, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from excite.core.errors import ExciteError, check_range
from excite.core.spec import parse_input_size

MODEL_HELP = (
    "a model: a registered name (excite list models), a model file written by excite (.safetensors), "
    "FILE.py:NAME or MODULE:NAME (a class or function returning an nn.Module; the file's code is "
    "imported and run), timm:NAME or torchvision:NAME (when that package is installed)"
)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit status 2.

    No abbreviations (``allow_abbrev=False``): a removed flag must be refused, not prefix-matched to
    another one (``--model`` to ``--model-option``). Subcommand parsers are of this class too.
    """

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- values -------------------------------------------------------------------------------------------

def int_in(low: int | None = None, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        try:
            check_range("value", value, low=low, high=high, integer=True)
        except ExciteError:
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer in "
                                             f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]") from None
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float | None = None, high: float | None = None):
    """An argparse type: a finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            check_range("value", value, low=low, high=high)
        except ExciteError:
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected a number in "
                                             f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]") from None
        return value

    parse.__name__ = "number"
    return parse


def threads(text: str) -> int:
    """An argparse type for ``--threads``: 1 to the number of CPU cores (torch crashes on absurd counts)."""
    return int_in(1, os.cpu_count() or 1)(text)


threads.__name__ = "threads"


def input_size(text: str) -> tuple[int, ...]:
    """An argparse type for ``--input-size``: ``N``, ``HxW`` or ``CxHxW``, the same everywhere. ``(H, W)``
    unless the channels are given, so that the model's own channels fill them in."""
    try:
        size = parse_input_size(text)
    except ExciteError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return size if len(text.lower().replace(",", "x").split("x")) == 3 else size[1:]


def settings(text: str) -> dict:
    """``key=value`` (value read as JSON when it parses: ``k_size=3``, ``k_size=[3,5,5,7]``,
    ``preact=true``) or a JSON object (``'{"k_size": 3}'``)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object ({e.msg})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
        return value
    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE or a JSON object, e.g. k_size=3 or '{{\"k_size\": 3}}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word: a string ("v1", "b")
    return {key.strip(): value}


def merge(items: list[dict] | None) -> dict:
    out: dict = {}
    for d in items or []:
        out.update(d)
    return out


# -- the model reference ------------------------------------------------------------------------------

def add_model_args(p: argparse.ArgumentParser, *, compare: bool = False, positional: bool = True,
                   attention: bool = True, input_size_help: str = "input size N, HxW or CxHxW (default: the model's)") -> None:
    """The model reference and its settings, the same flags on every command that takes a model.

    ``compare``: ``--attention`` may be repeated to compare variants side by side.
    """
    if positional:
        p.add_argument("model", help=MODEL_HELP)
    if not attention:
        pass
    elif compare:
        p.add_argument("--attention", action="append", nargs="+", default=None, metavar="NAME",
                       help="attention module (repeat, or give several, to compare side by side); "
                            "default: as the architecture is published; 'none' removes attention")
    else:
        p.add_argument("--attention", default=None, metavar="NAME",
                       help="attention module; default: as published; 'none' removes attention")
    p.add_argument("--attention-kwargs", "--attention-kw", type=settings, action="append", default=None,
                   metavar="KEY=VALUE", help="attention setting, repeatable (k_size=3, reduction=8, "
                                             "k_size=[3,5,5,7] per stage) or a JSON object")
    p.add_argument("--model-option", "-O", type=settings, action="append", default=None, metavar="KEY=VALUE",
                   help="model option, repeatable (variant=v1, preact=true, block_form=b, width_mult=0.75)")
    p.add_argument("--num-classes", type=int_in(0, 1_000_000), default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--input-size", type=input_size, default=None, help=input_size_help)
    add_trust_arg(p)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    """``--trust-code REF``: allow exactly this code reference named in a file (excite.core.trust)."""
    p.add_argument("--trust-code", action="append", default=None, metavar="REF",
                   help="run this FILE.py:NAME or MODULE:NAME although a file (a model file's header, a study, "
                        "a --config) names it, not you; repeatable; nothing else a file names is run")


def attentions(args) -> list:
    """The ``--attention`` values of a compare command, flattened (``[None]`` when not given)."""
    if not args.attention:
        return [None]
    return [a for group in args.attention for a in (group if isinstance(group, list) else [group])]


def model_from_args(args, *, attention=..., device: str = "cpu"):
    """Build the model the arguments name (the one place commands turn arguments into a model)."""
    from excite.factory import resolve_model  # torch-free start-up

    return resolve_model(args.model, attention=getattr(args, "attention", None) if attention is ... else attention,
                         attention_kwargs=merge(args.attention_kwargs), options=merge(args.model_option),
                         num_classes=args.num_classes, input_size=args.input_size, device=device)


def model_label(args, attention=None) -> str:
    return args.model + (f" +{attention}" if attention else "")


def warn(message: str) -> None:
    print(f"excite: {message}", file=sys.stderr)


class cleanup_on_failure:
    """Remove what a command created under ``paths`` (files, and folders made for them) if it fails,
    so a failed command leaves nothing behind. Paths that existed before are left alone."""

    def __init__(self, *paths):
        self.paths = [Path(p) for p in paths if p is not None]
        self.new = []
        for p in self.paths:
            self.new += [q for q in (p, *p.parents) if not q.exists() and q not in self.new]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for q in self.new:  # deepest first within each path's chain
            try:
                if q.is_dir():
                    shutil.rmtree(q)
                else:
                    q.unlink(missing_ok=True)
            except OSError:
                pass
        return False
