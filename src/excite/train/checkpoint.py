"""Training checkpoints: every tensor in one safetensors file, everything else as JSON in its metadata.

One file per checkpoint, so one atomic rename publishes it: written to a temporary file, fsynced,
then ``os.replace``d over the old one. A crash or a full disk leaves the previous checkpoint intact.
Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import ExciteError


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
