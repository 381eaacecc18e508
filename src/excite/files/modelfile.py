"""Reading and writing model files: the one place that touches excite's files on disk.

A **model file** is one safetensors file whose header carries everything needed to come back to the
model (as nanoGPT's checkpoints carry ``model_args``): the :class:`~excite.core.spec.ModelSpec`, the excite
version and, for trained models, the training config and final metrics. The model's tensors are
stored under their ``state_dict`` names, so any safetensors reader sees a plain state dict; a training
checkpoint (``last.safetensors``) adds its resumable state (optimizer, RNG, step, EMA) under the
``__train__.`` prefix and a JSON skeleton in the header. Nothing is ever unpickled with code execution:
pickled checkpoints of other projects go only through ``torch.load(weights_only=True)``.

One file per checkpoint, so one atomic rename publishes it: written to a temporary file, fsynced,
then ``os.replace``d over the old one. A crash or a full disk leaves the previous file intact.

Files written before the model description existed still load: training checkpoints with every tensor
under ``s.`` and an ``excite_train_state`` header, and converted weights with a ``.json`` beside them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from excite import __version__
from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec
from excite.core.trust import check_plain, read_text

PICKLE_SUFFIXES = (".pth", ".pth.tar", ".th", ".pt", ".tar", ".bin", ".ckpt")
# Containers that wrap a state_dict in training checkpoints, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net", "params")


def _flatten(prefix: str, obj, tensors: dict, meta_path=()):
    """Split a nested state (dicts/lists of tensors and plain values) into tensors + JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(f"{prefix}.{k}", v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]}
    return obj


def _key(k):
    return {"int": k} if isinstance(k, int) else k


# A training state nests optimizer -> state -> parameter -> buffer, each level wrapped once: far below this.
MAX_STATE_DEPTH = 64


class _Corrupt(Exception):
    """A training-state skeleton that ``_flatten`` cannot have written."""


def _unflatten(obj, tensors: dict, depth: int = 0):
    """Rebuild a state from its skeleton, accepting only what :func:`_flatten` writes."""
    if depth > MAX_STATE_DEPTH:
        raise _Corrupt
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            if not isinstance(obj["__tensor__"], str) or obj["__tensor__"] not in tensors:
                raise _Corrupt
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__dict__"} and isinstance(obj["__dict__"], list):
            out = {}
            for pair in obj["__dict__"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _Corrupt
                k, v = pair
                if isinstance(k, dict) and set(k) == {"int"} and type(k["int"]) is int:
                    k = k["int"]
                elif not isinstance(k, str):
                    raise _Corrupt
                out[k] = _unflatten(v, tensors, depth + 1)
            return out
        if set(obj) == {"__list__"} and isinstance(obj["__list__"], list):
            return [_unflatten(v, tensors, depth + 1) for v in obj["__list__"]]
        raise _Corrupt
    if isinstance(obj, list):
        return [_unflatten(v, tensors, depth + 1) for v in obj]
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a full disk names no file: say which one could not be written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


FORMAT = "excite-model/1"
TRAIN_PREFIX = "__train__."
_LEGACY_SIDE_KEYS = ("name", "attention", "attention_kwargs", "num_classes", "in_chans", "provenance")


@dataclass
class ModelFile:
    """What a model file holds: ``spec`` (``None`` for a bare state dict), the model's ``tensors``,
    the decoded header (``version``, ``training``, ``metrics``, ``provenance``) and, for a training
    checkpoint, its resumable ``state`` (optimizer, rng, step ...)."""

    path: Path
    spec: ModelSpec | None
    tensors: dict
    header: dict = field(default_factory=dict)
    state: dict | None = None


def _plain_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies: safetensors refuses tensors that share storage."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.numel() else None
        if key is not None and (key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def save_model(model: nn.Module, path: str | Path, *, spec: ModelSpec | dict | None = None,
               training: dict | None = None, metrics: dict | None = None, provenance: dict | None = None,
               train_state: dict | None = None) -> Path:
    """Write ``model`` as a self-describing model file (safetensors; atomic).

    ``spec`` defaults to ``model.excite_spec`` (recorded by :func:`excite.create_model`,
    :func:`excite.load_model` and :func:`excite.attach`). ``training``/``metrics``/``provenance`` go into
    the header as JSON; ``train_state`` (tensors anywhere inside) makes the file a resumable checkpoint.
    Raises ``ExciteError`` when the model has no description to save.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ExciteError(f"{path}: model files are written as .safetensors; use that suffix")
    if spec is None:
        spec = getattr(model, "excite_spec", None)
    if spec is None:
        raise ExciteError(f"{type(model).__name__} has no model description (excite_spec); build it with "
                          "excite.create_model / excite.load_model, or pass spec=")
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    tensors = _plain_tensors(model.state_dict())
    header = {"format": "pt", "excite_format": FORMAT, "excite_version": __version__, "excite_model": spec.to_json()}
    for key, value in (("excite_training", training), ("excite_metrics", metrics), ("excite_provenance", provenance)):
        if value is not None:
            header[key] = json.dumps(value, sort_keys=True, default=str)
    if train_state is not None:
        extra: dict[str, torch.Tensor] = {}
        header["excite_train_state"] = json.dumps(_flatten(TRAIN_PREFIX.rstrip("."), train_state, extra))
        tensors.update(_plain_tensors(extra))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


# safetensors' own dtypes and their sizes in bytes.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
# The header is JSON describing tensors: a ResNet-152 training checkpoint's is ~200 KB. Past this it is
# not a model file, and reading no more bounds what a crafted length can make excite allocate.
MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 1 << 20


def check_safetensors_header(path: Path) -> None:
    """Check a safetensors file's header against the file before any tensor is read: a bounded length,
    JSON bounded in nesting, known dtypes, and shapes whose byte sizes are exactly the byte ranges
    claimed, inside the file and not overlapping. One ``ExciteError`` line otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ExciteError(f"{path}: not a readable safetensors file (truncated: {size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ExciteError(f"{path}: not a readable safetensors file (its header claims {n} bytes; the file has "
                              f"{size - 8} after the length, and a header may have at most {MAX_HEADER_BYTES})")
        raw = f.read(n)
    header = parse_json(raw.decode("utf-8", errors="replace"), f"{path}: safetensors header")
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise ExciteError(f"{path}: not a readable safetensors file (the header is not a table of tensors)")
    data = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and (not isinstance(info, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in info.items())):
                raise ExciteError(f"{path}: corrupt header (__metadata__ is not a table of texts)")
            continue
        spans.append(_tensor_span(path, name, info, data))
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ExciteError(f"{path}: corrupt header (tensors {n0!r} and {n1!r} claim the same bytes)")


def _tensor_span(path: Path, name: str, info, data: int) -> tuple[int, int, str]:
    """``(begin, end, name)`` of one tensor's bytes, after checking its header entry against the file."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ExciteError(f"{path}: corrupt header entry for tensor {name[:80]!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPE_BYTES:
        raise ExciteError(f"{path}: tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > 32 or not all(type(d) is int and d >= 0 for d in shape):
        raise ExciteError(f"{path}: tensor {name[:80]!r} has an invalid shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise ExciteError(f"{path}: tensor {name[:80]!r} has invalid data offsets")
    numel = 1
    for d in shape:
        numel *= d
    begin, end = offsets
    if not 0 <= begin <= end <= data or end - begin != numel * _DTYPE_BYTES[dtype]:
        raise ExciteError(f"{path}: tensor {name[:80]!r} claims shape {shape} ({numel * _DTYPE_BYTES[dtype]} bytes) "
                          f"but the file holds bytes {begin}..{end} of {data} for it: truncated or corrupt")
    return begin, end, name


def _spec_field(path: Path, header: dict) -> ModelSpec:
    """The model description in a header, every field checked (plain bounded JSON, then ModelSpec)."""
    value = _json_field(path, header, "excite_model")
    if value is None:
        raise ExciteError(f"{path}: header field excite_model is empty")
    try:
        return ModelSpec.from_dict(value)
    except ExciteError as e:
        raise ExciteError(f"{path}: {e}") from None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    check_safetensors_header(path)  # every claim checked before a byte of tensor data is allocated
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ExciteError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e})") from None
    return tensors, header


def _json_field(path: Path, header: dict, key: str, *, kind=dict, plain: bool = True):
    """A header field's JSON value: of type ``kind`` (or null) and, with ``plain``, bounded plain data
    (:func:`excite.core.trust.check_plain`); one line otherwise. A training state's skeleton is checked
    by ``_unflatten`` instead."""
    if key not in header:
        return None
    value = parse_json(header[key], f"{path}: header field {key}")
    if value is not None and not isinstance(value, kind):
        raise ExciteError(f"{path}: header field {key} is a JSON {type(value).__name__}; expected an object")
    if plain:  # recorded numbers may be NaN (a diverged loss): plain, not necessarily finite
        check_plain(value, f"{path}: header field {key}", finite=key == "excite_model")
    return value


def parse_json(text, what: str):
    """``json.loads`` for untrusted text: one line for bad JSON and for nesting deep enough to exhaust
    the parser's stack, instead of a traceback."""
    if not isinstance(text, str):
        raise ExciteError(f"{what}: expected JSON text, got {type(text).__name__}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExciteError(f"{what}: corrupt (not JSON: {getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise ExciteError(f"{what}: corrupt (JSON nested too deeply)") from None


def _check_format(path: Path, header: dict) -> None:
    """Name a model file of a newer (or unknown) format instead of guessing what its fields mean."""
    fmt = header.get("excite_format", FORMAT)
    if fmt == FORMAT:
        pass
    elif isinstance(fmt, str) and fmt.startswith("excite-model/") and fmt[13:].isdigit():
        raise ExciteError(f"{path}: written in model-file format {fmt}, newer than this excite reads ({FORMAT}); "
                          "upgrade excite")
    else:
        raise ExciteError(f"{path}: unknown model-file format {str(fmt)[:40]!r}; this excite reads {FORMAT}")
    version = header.get("excite_version")
    if version is not None and (len(version) > 64 or not version.isprintable()):
        raise ExciteError(f"{path}: header field excite_version is not a version number")


def read_model_file(path: str | Path) -> ModelFile:
    """Read any model file excite can load, without building the model.

    Accepts excite model files (and training checkpoints), files written by earlier excite versions,
    safetensors state dicts and pickled checkpoints of other projects (read with
    ``weights_only=True``). Raises ``ExciteError`` (or ``FileNotFoundError``) in one line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        hint = next((n for n in ("best.safetensors", "last.safetensors", "model.safetensors") if (path / n).is_file()), None)
        raise ExciteError(f"{path} is a folder, not a model file" + (f"; did you mean {path / hint}?" if hint else ""))
    if not path.name.lower().endswith(".safetensors"):
        return ModelFile(path, None, read_state_dict(path))
    tensors, header = _read_safetensors(path)
    if "excite_model" in header:
        _check_format(path, header)
        spec = _spec_field(path, header)
        decoded = {"version": header.get("excite_version")}
        for key in ("training", "metrics", "provenance"):
            decoded[key] = _json_field(path, header, f"excite_{key}")
        state = None
        skeleton = _json_field(path, header, "excite_train_state", plain=False)
        model_tensors = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}
        if skeleton is not None:
            try:
                state = _unflatten(skeleton, tensors)
            except _Corrupt:
                raise ExciteError(f"{path}: corrupt training state (header and tensors disagree)") from None
        return ModelFile(path, spec, model_tensors, decoded, state)
    if "excite_train_state" in header:  # a training checkpoint of excite <= 0.1.0
        skeleton = _json_field(path, header, "excite_train_state", plain=False)
        try:
            state = _unflatten(skeleton, tensors)
            if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(
                    state.get("config") or {}, dict) or not isinstance((state.get("config") or {}).get("model", ""), str):
                raise _Corrupt
        except _Corrupt:
            raise ExciteError(f"{path}: corrupt training checkpoint (header and tensors disagree)") from None
        cfg = state.get("config", {}) or {}
        model_tensors = state.pop("model")
        # Training in 0.1.0 built attention=None as "none" and sized the classifier from the data.
        spec = ModelSpec(arch=cfg.get("model", "resnet20"), attention=cfg.get("attention") or "none",
                         num_classes=_classifier_outputs(model_tensors))
        return ModelFile(path, spec, model_tensors, {"training": cfg, "legacy": "excite-0.1 training checkpoint"}, state)
    side = path.with_suffix(".json")
    if side.is_file():  # converted weights of excite <= 0.1.0: settings in a JSON beside the file
        info = parse_json(read_text(side), f"{side} (the settings of {path.name})")
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            check_plain(info, str(side), finite=False)
            options = {k: v for k, v in info.items() if k not in _LEGACY_SIDE_KEYS}
            spec = ModelSpec(arch=info["name"], attention=info.get("attention"),
                             attention_kwargs=info.get("attention_kwargs") or {}, options=options,
                             num_classes=info.get("num_classes"), in_chans=info.get("in_chans", 3))
            return ModelFile(path, spec, tensors, {"provenance": info.get("provenance"), "legacy": side.name})
    return ModelFile(path, None, tensors, {})


def _classifier_outputs(tensors: dict) -> int | None:
    """Outputs of the last 2-D weight (the classifier) of a state dict, if any."""
    last = [v for k, v in tensors.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else None


def load_state(path: str | Path) -> dict:
    """The resumable training state of a checkpoint: ``{"model": state_dict, "optimizer": ..., ...}``."""
    mf = read_model_file(path)
    if mf.state is None:
        raise ExciteError(f"{path} holds weights but no training state (optimizer, step) to resume from; "
                          "start a new run with --model pointing at it to fine-tune")
    return {"model": mf.tensors, "config": mf.header.get("training"), **mf.state}


def check_resume_state(st: dict, path) -> dict:
    """``st`` (from :func:`load_state`) holds what a resumed run restores, with the right types; one line
    otherwise (a damaged or hand-edited ``last.safetensors`` is not resumed from)."""
    ok = (isinstance(st, dict) and isinstance(st.get("optimizer"), dict) and isinstance(st.get("rng"), torch.Tensor)
          and st["rng"].dtype == torch.uint8 and type(st.get("step")) is int and st["step"] >= 0
          and isinstance(st.get("best"), (int, float)) and isinstance(st.get("history"), list)
          and all(isinstance(row, dict) for row in st["history"]))
    if not ok:
        raise ExciteError(f"{path}: corrupt training state (optimizer, rng, step, best or history missing or "
                          "of the wrong type); start a new run, or --overwrite this one")
    return st


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``path`` safely and unwrap training containers (``{"state_dict": ...}``).

    Raises ``ExciteError`` for an unreadable file or one that a safe loader refuses (e.g. a pickle
    that would import and call arbitrary objects); nothing in the file is executed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    name = path.name.lower()
    if name.endswith(".safetensors"):
        check_safetensors_header(path)
        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ExciteError(f"{path}: not a readable safetensors file ({e})") from None
    elif name.endswith(PICKLE_SUFFIXES):
        try:
            with warnings.catch_warnings():  # torch warns about the protocol of the pickles it then refuses
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), None)
            imports = pickle_imports(path) if why is None else []
            if imports:  # a raw pickle (not torch's zip format) that names code: torch's message says less
                raise ExciteError(f"{path}: refused, the file is a pickle that would import and call "
                                  f"{imports[0]}; excite never runs code from a checkpoint") from None
            if why is None:  # not a pickle of objects at all (an image, random bytes, a truncated file)
                raise ExciteError(f"{path}: not a readable torch checkpoint (neither a torch zip archive nor a "
                                  "pickle of tensors)") from None
            # torch's message also advises weights_only=False: exactly the unsafe thing, so it is left out
            raise ExciteError(f"{path}: refused, the file holds objects other than tensors ({why}); excite never "
                              "runs code from a checkpoint") from None
        except (RuntimeError, EOFError, OSError) as e:
            why = (str(e).strip().splitlines() or ["empty or truncated file" if isinstance(e, EOFError) else type(e).__name__])[0]
            raise ExciteError(f"{path}: not a readable torch checkpoint ({why})") from None
        except Exception as e:  # noqa: BLE001 - torch's unpickler raises IndexError, KeyError ... on garbage
            raise ExciteError(f"{path}: not a readable torch checkpoint (corrupt: {type(e).__name__})") from None
    elif name.endswith(".py"):
        raise ExciteError(f"{path} is Python code, not weights; name the class or function in it that builds the "
                          f"model: {path}:NAME")
    else:
        raise ExciteError(f"{path}: unknown checkpoint format; expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    return unwrap(obj, path)


# What a tensor pickle imports (torch's own rebuild functions, OrderedDict): not worth naming in a refusal.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")


def pickle_imports(path: Path, limit: int = 8) -> list[str]:
    """The ``module.name`` objects a raw pickle would import, read from its opcodes without running
    any (:mod:`pickletools` only decodes); torch's own are left out. Empty for a file that is not a pickle."""
    found, strings = [], []
    try:
        with open(path, "rb") as f:
            data = io.BytesIO(f.read(64 << 20))  # a crafted pickle names its imports up front
        for _ in range(8):  # torch's legacy format is several pickles in a row
            if data.tell() >= len(data.getvalue()):
                break
            for op, arg, _pos in pickletools.genops(data):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - garbage after the opcodes decoded so far: report those
        pass
    return [g for g in found if not g.startswith(_TENSOR_GLOBALS)][:limit]


def unwrap(obj, path="checkpoint") -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` inside ``obj``, looking through the usual container keys."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            break
        obj = inner
    raise ExciteError(f"{path}: found no state_dict (a dict of tensors) in the checkpoint")
