"""Training checkpoints: every tensor in one safetensors file, everything else as JSON in its metadata.

One file per checkpoint, so one atomic rename publishes it: written to a temporary file, fsynced,
then ``os.replace``d over the old one. A crash or a full disk leaves the previous checkpoint intact.
Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import ExciteError

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


def save_state(path: str | Path, state: dict) -> Path:
    """Atomically save a nested training ``state`` (tensors anywhere inside) to a safetensors file."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten("s", state, tensors)
    data = save(tensors, metadata={"excite_train_state": json.dumps(skeleton)})
    atomic_write_bytes(path, data)
    return path


def load_state(path: str | Path) -> dict:
    """Load a state written by :func:`save_state` (no pickle, no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExciteError(f"corrupt checkpoint {path}: {e}") from None
    if "excite_train_state" not in meta:
        raise ExciteError(f"{path} is not an excite training checkpoint (no excite_train_state metadata)")
    return _unflatten(json.loads(meta["excite_train_state"]), tensors)


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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ExciteError(f"{path}: not a readable safetensors file ({e})") from None
    elif name.endswith(PICKLE_SUFFIXES):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()
            why = next((ln.strip() for ln in first if "GLOBAL" in ln or "global" in ln), first[0] if first else "")
            raise ExciteError(f"{path}: refused, the file holds objects other than tensors ({why})") from None
        except (RuntimeError, EOFError, OSError) as e:
            raise ExciteError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
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
