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

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from excite import __version__
from excite.core.errors import ExciteError
from excite.core.spec import ModelSpec

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


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {(k["int"] if isinstance(k, dict) else k): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, dict) and "__list__" in obj:
        return [_unflatten(v, tensors) for v in obj["__list__"]]
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


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ExciteError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e})") from None
    return tensors, header


def _json_field(path: Path, header: dict, key: str):
    if key not in header:
        return None
    try:
        return json.loads(header[key])
    except json.JSONDecodeError:
        raise ExciteError(f"{path}: corrupt header field {key} (not JSON)") from None


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
        spec = ModelSpec.from_json(header["excite_model"])
        decoded = {"version": header.get("excite_version")}
        for key in ("training", "metrics", "provenance"):
            decoded[key] = _json_field(path, header, f"excite_{key}")
        state = None
        skeleton = _json_field(path, header, "excite_train_state")
        model_tensors = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}
        if skeleton is not None:
            try:
                state = _unflatten(skeleton, tensors)
            except (KeyError, TypeError):
                raise ExciteError(f"{path}: corrupt training state (header and tensors disagree)") from None
        return ModelFile(path, spec, model_tensors, decoded, state)
    if "excite_train_state" in header:  # a training checkpoint of excite <= 0.1.0
        skeleton = _json_field(path, header, "excite_train_state")
        try:
            state = _unflatten(skeleton, tensors)
        except (KeyError, TypeError):
            raise ExciteError(f"{path}: corrupt training checkpoint (header and tensors disagree)") from None
        cfg = state.get("config", {}) or {}
        model_tensors = state.pop("model")
        # Training in 0.1.0 built attention=None as "none" and sized the classifier from the data.
        spec = ModelSpec(arch=cfg.get("model", "resnet20"), attention=cfg.get("attention") or "none",
                         num_classes=_classifier_outputs(model_tensors))
        return ModelFile(path, spec, model_tensors, {"training": cfg, "legacy": "excite-0.1 training checkpoint"}, state)
    side = path.with_suffix(".json")
    if side.is_file():  # converted weights of excite <= 0.1.0: settings in a JSON beside the file
        try:
            info = json.loads(side.read_text())
        except json.JSONDecodeError:
            raise ExciteError(f"{side}: not valid JSON (the settings of {path.name})") from None
        if isinstance(info, dict) and "name" in info:
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
        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ExciteError(f"{path}: not a readable safetensors file ({e})") from None
    elif name.endswith(PICKLE_SUFFIXES):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), None)
            if why is None:  # not a pickle of objects at all (an image, random bytes, a truncated file)
                raise ExciteError(f"{path}: not a readable torch checkpoint (neither a torch zip archive nor a "
                                  "pickle of tensors)") from None
            # torch's message also advises weights_only=False: exactly the unsafe thing, so it is left out
            raise ExciteError(f"{path}: refused, the file holds objects other than tensors ({why}); excite never "
                              "runs code from a checkpoint") from None
        except (RuntimeError, EOFError, OSError) as e:
            why = (str(e).strip().splitlines() or ["empty or truncated file" if isinstance(e, EOFError) else type(e).__name__])[0]
            raise ExciteError(f"{path}: not a readable torch checkpoint ({why})") from None
    else:
        raise ExciteError(f"{path}: unknown checkpoint format; expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    return unwrap(obj, path)


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
