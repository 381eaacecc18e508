"""Errors a user can cause. The CLI prints them as one line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ExciteError(ValueError):
    """Bad input: an unknown name, an argument out of range, a corrupt or missing file.

    Subclasses ``ValueError`` so that library users can catch the usual exception. The message is
    always one line: control characters (a newline or a terminal escape inside a name read from a
    file) are shown escaped, so a crafted file can neither split the line nor drive the terminal.
    """

    def __init__(self, message="", *args):
        super().__init__(one_line(message) if isinstance(message, str) else message, *args)


def one_line(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ExciteError:
    """An error for an unknown ``name`` that suggests the closest valid ones."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(choices)}"
    return ExciteError(f"unknown {kind} {name!r}; {hint}")


def check_range(name: str, value, *, low=None, high=None, odd: bool = False, integer: bool = False):
    """Raise an ``ExciteError`` naming ``name`` and the valid range unless ``low <= value <= high``.

    ``integer``: the value must be an int (not a float such as 32.5). NaN is never in range.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (not integer or isinstance(value, int))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    ok = ok and (not odd or (isinstance(value, int) and value % 2 == 1))
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        what = "an odd integer" if odd else "an integer" if integer else "a number"
        raise ExciteError(f"{name}={value!r} is out of range; expected {what} in [{lo}, {hi}]")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Raise an ``ExciteError`` suggesting the close matches unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise unknown_name(name, value, choices)
    return value


class NotAModelError(ExciteError, TypeError):
    """A value where a torch ``nn.Module`` is expected (a model's name or path, ``None``): both an
    ``ExciteError`` (one line in the CLI) and the ``TypeError`` Python code expects for a wrong type."""


def expect_module(value, what: str):
    """Raise :class:`NotAModelError` unless ``value`` is an ``nn.Module``; a name or a path says how to
    build one. Duck-typed so that this module stays torch-free."""
    if callable(getattr(value, "named_modules", None)) and callable(getattr(value, "state_dict", None)):
        return value
    hint = ""
    if isinstance(value, str) or type(value).__name__.endswith("Path"):
        hint = f"; build the model first: excite.resolve_model({str(value)!r})"
    raise NotAModelError(f"{what}: expected a torch nn.Module, got {type(value).__name__} {str(value)[:80]!r}{hint}")
