"""The ``excite`` command line: a thin layer that parses, calls the library and formats.

Every command lives in a module with ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can cause become one line and exit status 2; bugs keep their
traceback.
"""

from __future__ import annotations

import importlib
import sys

from excite import __version__
from excite.cli.args import Parser
from excite.core.errors import ExciteError
from excite.core.trust import allow_code

# Command modules, in the order `excite --help` lists them.
COMMAND_MODULES = (
    "excite.cli.listing",
    "excite.cli.study",
    "excite.cli.deploy",
    "excite.cli.train",
    "excite.cli.attach",
    "excite.cli.profile",
    "excite.cli.weights",
    "excite.cli.scale",
)

# Errors a user can cause (a bad value, a missing or unwritable path, a full disk): one line, exit 2.
USER_ERRORS = (ExciteError, OSError)


def build_parser() -> Parser:
    parser = Parser(prog="excite", description="Channel attention for classic CNN backbones.",
                    epilog="exit status: 0 ok, 2 bad input (one line on stderr), 1 a bug (traceback), 130 interrupted")
    parser.add_argument("--version", action="version", version=f"excite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # what was typed: a command relaunched in several processes passes it on
    except SystemExit as e:  # --help, --version, or a bad argument (already printed as one line)
        return int(e.code or 0)
    if not getattr(args, "func", None):
        print("excite: error: a command is required; `excite --help` lists them", file=sys.stderr)
        return 2
    try:
        with allow_code(getattr(args, "trust_code", None)):  # exactly the references the user allowed
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `excite list | head`
        return 0
    except USER_ERRORS as e:
        msg = str(e) if isinstance(e, ExciteError) else _os_message(e)
        print(f"excite: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # train checkpoints first and says where (its message)
        print(f"excite: {e}" if str(e).startswith("interrupted") else "excite: interrupted", file=sys.stderr)
        return 130


def _os_message(e: OSError) -> str:
    """``No space left on device: runs/x/last.safetensors`` rather than a traceback."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if getattr(e, "filename", None) else what
