"""The ``excite`` command line: a thin layer that parses, calls the library and formats.

Every command lives in a module with ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can cause become one line and exit status 2; bugs keep their
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ExciteError

# Command modules, in the order `excite --help` lists them.
COMMAND_MODULES = (
    "excite.commands",
    "excite.study.cli",
    "excite.deploy.cli",
    "excite.training.cli",
    "excite.plug.cli",
    "excite.profiling.cli",
)

USER_ERRORS = (ExciteError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="excite", description="Channel attention for classic CNN backbones.")
    parser.add_argument("--version", action="version", version=f"excite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        msg = str(e) if isinstance(e, ExciteError) else f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e)
        print(f"excite: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("excite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `excite list | head`
        return 0
