"""Which code excite may run: a reference the user typed runs, a reference read from a file does not.

A model reference can name code: ``file.py:Class`` and ``module:factory`` import a file or a module and
call a name in it, as a study's ``--trainer module:function`` does. excite runs such a reference only
when its user typed it, on the command line or in their own Python call. A reference read from a file
(a model file's header, a study TOML, a ``--config`` file, a study's results database) is refused with
one line that names the reference and the file, unless the user allowed exactly that reference:
``--trust-code REF`` on the command line, ``trust_code=["REF"]`` in Python. This is Hugging Face's
``trust_remote_code`` made narrower: the grant names the code, so a file cannot slip in a second
reference the user never saw, and it lasts for one call.

Registered names and ``timm:`` / ``torchvision:`` names run no code a file brings: they stay allowed,
with their settings checked here to be plain JSON values the builder takes (no callables, no paths or
URLs a builder would open, no downloads). Which attention module a description names is checked the
same way: a registered name and its settings, nothing else.

Torch-free at import, so the command line can check a reference before paying for torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import os
from pathlib import Path

from excite.core.errors import ExciteError
from excite.core.registry import attention_class, model_entry
from excite.core.spec import parse_reference

# Reference kinds that import and run code (see excite.core.spec.parse_reference).
CODE_KINDS = ("file", "module")

# Bounds on a plain value read from a file: deep enough for any real setting (a per-stage list of
# lists), shallow enough that checking it cannot exhaust the stack.
MAX_DEPTH = 16
MAX_ITEMS = 4096
MAX_TEXT = 4096

# Options that make a builder open a path, download weights or take a pretrained config: not allowed
# from a file for timm / torchvision (their builders take **kwargs, so the signature cannot tell).
OPENS_FILES = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "checkpoint",
               "weights", "weights_backbone", "cache_dir", "file", "url", "hf_hub_id", "model_dir")

# create_model's own arguments: a description holds them in its own fields, never among the options.
_RESERVED = ("attention", "attention_kwargs", "num_classes", "in_chans", "checkpoint", "pretrained",
             "attention_init")
# Options build_model takes for every registered model besides the builder's own.
_BUILD_OPTIONS = ("features_only", "out_indices", "stn")
# The arguments of an excite.attach call a description may replay (plus the module's own settings).
_ATTACH_KEYS = ("attention", "where", "init", "replace", "input_size")

class TrustError(ExciteError, TypeError):
    """A ``trust_code`` of the wrong kind: one line in the CLI, a ``TypeError`` in Python."""


_GRANTED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("excite_trusted_code", default=frozenset())


def grant(trust_code) -> frozenset:
    """The references ``trust_code`` allows: ``None`` (none), one reference or a list of them.

    ``True`` is refused: the grant names the code, so a file cannot add a reference the user has not
    seen (the refusal prints the exact reference to pass).
    """
    if trust_code is None or trust_code is False:
        return frozenset()
    if trust_code is True:
        raise TrustError("trust_code takes the references to allow, e.g. trust_code=['net.py:Net'], not True: "
                        "the refusal message names each reference a file asks to run")
    if isinstance(trust_code, str):
        trust_code = [trust_code]
    if not isinstance(trust_code, (list, tuple, set, frozenset)) or not all(
            isinstance(r, str) and r.strip() for r in trust_code):
        raise TrustError(f"trust_code must be a list of model references such as ['net.py:Net'], got {trust_code!r}")
    return frozenset(r.strip() for r in trust_code)


def granted() -> frozenset:
    """The references allowed in the current call (see :func:`allow_code`)."""
    return _GRANTED.get()


@contextlib.contextmanager
def allow_code(trust_code):
    """Allow exactly these references for the duration of a ``with`` block (nested blocks add up).

    >>> with allow_code(["net.py:Net"]):
    ...     pass
    """
    token = _GRANTED.set(_GRANTED.get() | grant(trust_code))
    try:
        yield
    finally:
        _GRANTED.reset(token)


def set_process_grant(trust_code) -> None:
    """Allow these references for the rest of this process (a study's worker process: the parent's grant)."""
    _GRANTED.set(_GRANTED.get() | grant(trust_code))


def runs_code(ref) -> bool:
    """Whether a model reference imports and runs code (``file.py:Class``, ``module:factory``)."""
    return isinstance(ref, str) and ":" in ref and parse_reference(ref)[0] in CODE_KINDS


def check_reference(ref: str, source, *, trust_code=None, what: str = "model", base_dir=None) -> None:
    """Refuse a code-running reference read from the file ``source`` unless the user allowed it.

    ``what`` names the role (``model``, ``trainer``); ``base_dir`` is where a relative ``file.py`` is
    also looked for (the folder of the model file it came from), so the message names the file that
    would be imported.
    """
    if not isinstance(ref, str) or not runs_code(ref):
        return
    if ref in granted() or ref in grant(trust_code):
        return
    kind, where, name = parse_reference(ref)
    if kind == "file":
        path = Path(where)
        if not path.is_file() and base_dir is not None and (Path(base_dir) / where).is_file():
            path = Path(base_dir) / where
        runs = f"it would import {os.path.abspath(path)} and call {name}"
    else:
        runs = f"it would import module {where} and call {name}"
    raise ExciteError(f"{source}: refused to run the {what} {ref!r} that this file names ({runs}); excite runs "
                      f"code named in a file only when you allow it: --trust-code {ref} "
                      f"(Python: trust_code=[{ref!r}])")


def check_plain(value, what: str, *, depth: int = 0, finite: bool = True):
    """Check that ``value`` is plain JSON data (no callables, bounded size and nesting; no NaN or
    infinity unless ``finite=False``, as in recorded metrics)."""
    if depth > MAX_DEPTH:
        raise ExciteError(f"{what}: nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63:
            raise ExciteError(f"{what}: integer {value} is out of range; expected at most 2**63 in size")
        return value
    if isinstance(value, float):
        if finite and not math.isfinite(value):
            raise ExciteError(f"{what}: {value!r} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ExciteError(f"{what}: a text of {len(value)} characters; expected at most {MAX_TEXT}")
        return value
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise ExciteError(f"{what}: a list of {len(value)} items; expected at most {MAX_ITEMS}")
        for i, v in enumerate(value):
            check_plain(v, f"{what}[{i}]", depth=depth + 1, finite=finite)
        return value
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ExciteError(f"{what}: a table of {len(value)} keys; expected at most {MAX_ITEMS}")
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > MAX_TEXT:
                raise ExciteError(f"{what}: key {k!r} is not a (short) string")
            check_plain(v, f"{what}.{k}", depth=depth + 1, finite=finite)
        return value
    raise ExciteError(f"{what}: {type(value).__name__} values are not allowed here; expected numbers, "
                      "strings, true/false, lists or tables")


def _takes(fn) -> tuple[set, bool]:
    """``(keyword names, takes **kwargs)`` of a builder or attention class."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set(), True
    names = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_options(arch: str, options, source) -> None:
    """Check a file's options for model ``arch``: plain values only; for a registered model, only the
    options its builder takes; for timm / torchvision, none that opens a path or downloads."""
    check_plain(options, f"{source}: options of {arch}")
    if not isinstance(options, dict):
        raise ExciteError(f"{source}: options of {arch} must be a table of settings, got {options!r}")
    kind = parse_reference(arch)[0] if isinstance(arch, str) else "registered"
    if kind == "registered" and _is_model_file(arch):
        return  # a model file describes its own model, checked when it is read
    if kind in ("timm", "torchvision"):
        bad = [k for k in options if k in OPENS_FILES or k.endswith(("_path", "_url", "_file", "_dir"))]
        urls = [k for k, v in options.items() if isinstance(v, str) and "://" in v]
        if bad or urls:
            raise ExciteError(f"{source}: option {(bad or urls)[0]!r} of {arch} would open a path or download; "
                              "a file may not set it (pass it yourself in Python)")
        return
    if kind != "registered":
        return  # the user's own code, allowed by name: its options are its own
    names, any_kw = _takes(model_entry(arch).fn)
    for key in options:
        if key in _RESERVED:
            raise ExciteError(f"{source}: option {key!r} of {arch} is not a model option (it opens a file, "
                              "downloads or is a field of the description)")
        if key not in _BUILD_OPTIONS and not any_kw and key not in names:
            valid = sorted((names - set(_RESERVED)) | set(_BUILD_OPTIONS))
            raise ExciteError(f"{source}: model {arch!r} takes no option {key!r}; valid: {', '.join(valid)}")


def check_attention(attention, attention_kwargs, source, *, what: str = "attention") -> None:
    """A file's attention: ``None``, ``"none"`` or a registered name, with plain settings it takes."""
    check_plain(attention_kwargs, f"{source}: {what} settings")
    if attention is None or attention == "none":
        return
    if not isinstance(attention, str):
        raise ExciteError(f"{source}: {what} must be a registered attention name, got {type(attention).__name__}")
    cls = attention_class(attention)
    names, any_kw = _takes(cls)
    bad = [k for k in (attention_kwargs or {}) if not any_kw and k not in names]
    if bad:
        raise ExciteError(f"{source}: attention {attention!r} takes no setting {bad[0]!r}; "
                          f"valid: {', '.join(sorted(names - {'channels'})) or 'none'}")


def check_attach_calls(calls, source) -> None:
    """The :func:`excite.attach` calls a description replays: registered attention names and plain data."""
    check_plain(calls, f"{source}: attach")
    if not isinstance(calls, list):
        raise ExciteError(f"{source}: attach must be a list of calls, got {type(calls).__name__}")
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("attention"), str) or call["attention"] == "none":
            raise ExciteError(f"{source}: attach[{i}] must name a registered attention module")
        if not isinstance(call.get("where", "residual"), (str, list)) or not isinstance(call.get("replace", False), bool):
            raise ExciteError(f"{source}: attach[{i}]: where must be a text or a list, replace true or false")
        if call.get("init", "default") not in ("default", "identity"):
            raise ExciteError(f"{source}: attach[{i}]: init={call.get('init')!r}; expected 'default' or 'identity'")
        settings = {k: v for k, v in call.items() if k not in _ATTACH_KEYS}
        check_attention(call["attention"], settings, source, what=f"attach[{i}]")


def check_spec(spec, source, *, trust_code=None, base_dir=None) -> None:
    """Everything a model description read from ``source`` would run or open, checked before building:
    its reference (code only when allowed), its options, its attention and the attach calls it replays."""
    if spec is None:
        return
    check_reference(spec.arch, source, trust_code=trust_code, base_dir=base_dir)
    check_options(spec.arch, spec.options, source)
    check_attention(spec.attention, spec.attention_kwargs, source)
    check_attach_calls(spec.attach, source)


def check_models(models, source, *, trust_code=None) -> None:
    """The model references a study or a config file names (a list, or one reference)."""
    for ref in [models] if isinstance(models, str) else list(models or []):
        check_reference(ref, source, trust_code=trust_code)


def check_config(file_values: dict, used: dict, source, *, trust_code=None) -> None:
    """The references and options a ``--config`` file sets, where the command line did not replace them."""
    if not isinstance(file_values, dict):
        return
    check_plain(file_values, str(source))
    model = file_values.get("model")
    if model is not None and used.get("model") is model:
        check_reference(model, source, trust_code=trust_code)
    options = file_values.get("options")
    arch = used.get("model")
    if options is not None and used.get("options") is options and isinstance(arch, str) and arch.strip():
        if not runs_code(arch) and not arch.lower().endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt")):
            check_options(arch, options, source)


def check_study(study, source, *, typed_models: bool = False, trust_code=None) -> None:
    """A study read from ``source``: the code references among its models (unless the caller gave the
    models), and each variant's model options against the builders of its registered models."""
    if not typed_models:
        check_models(study.models, source, trust_code=trust_code)
    for variant in study.variants:
        check_plain(variant.attention_kwargs, f"{source}: variant {variant.label!r} attention_kwargs")
        for arch in study.models:
            if parse_reference(arch)[0] == "registered" and not _is_model_file(arch):
                check_options(arch, variant.options, f"{source}: variant {variant.label!r}")


def _is_model_file(ref: str) -> bool:
    return os.path.exists(ref) or ref.lower().endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".th", ".tar"))


# A study or a config is a page of settings: a megabyte is thousands of times what one needs, and
# reading no more bounds what a file can make excite hold in memory.
MAX_TEXT_FILE = 1 << 20


def read_text(path, *, limit: int = MAX_TEXT_FILE) -> str:
    """The text of a settings file (UTF-8, at most ``limit`` bytes); one line otherwise."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ExciteError(f"{path}: larger than {limit // 1024} KiB; a settings file is a page of text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExciteError(f"{path}: not UTF-8 text (byte {e.start}); expected a TOML file") from None
