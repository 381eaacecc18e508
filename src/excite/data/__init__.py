"""Datasets for training: the embedded ``digits`` set, Fashion-MNIST/MNIST idx files, CIFAR-10/100 archives,
and ImageNet-style folders.

Small datasets live in memory as uint8 tensors ``[N, 3, H, W]`` and are augmented a whole batch at
a time on tensors (pad-crop-flip), the airbench approach: the loader is never the bottleneck.
Image folders stream: :class:`ImageFolderDataset` decodes per item with Pillow (random-resized crop
and flip for training, resize + center crop for evaluation) for DataLoader workers.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from excite.core.errors import ExciteError, unknown_name
from excite.data.distorted import load_digits_rts
from excite.data.download import CIFAR_ARCHIVES, download_cifar
from excite.data.idx import IDX_DOWNLOADS, download_idx, load_idx_dataset, read_idx
from excite.data.imagefolder import ImageFolderDataset, load_imagefolder, sample_resized_crop
from excite.data.tensors import STATS, TensorData, augment, load_digits, normalize

DATASETS = ("digits", "digits-rts", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")

_REGISTERED: dict = {}  # name -> loader(root) returning (train, test); see register_dataset


def register_dataset(name: str, loader) -> None:
    """Make ``load_dataset(name, root)`` (and ``--dataset name`` in this process) call ``loader(root)``,
    which returns ``(train, test)`` :class:`TensorData`. A name already taken is refused."""
    if name in DATASETS or name in _REGISTERED:
        raise ExciteError(f"dataset {name!r} is already defined")
    _REGISTERED[name] = loader


def registered_datasets() -> list[str]:
    """Names added with :func:`register_dataset`."""
    return sorted(_REGISTERED)


def load_dataset(name: str, root: str | Path | None = None, *, skip_bad_images: bool = False, image_size: int = 224,
                 seed: int = 0):
    """Return ``(train, test)`` for ``name`` in :data:`DATASETS`; ``root`` is the archive or folder.

    digits and CIFAR give in-memory :class:`TensorData`; imagefolder gives streaming
    :class:`ImageFolderDataset` splits of ``image_size`` crops (``seed`` drives their augmentation).
    """
    if name in _REGISTERED:
        return _REGISTERED[name](root)
    if name not in DATASETS:
        raise unknown_name("dataset", name, [*DATASETS, *_REGISTERED])
    if name == "digits":
        return load_digits()
    if name == "digits-rts":
        return load_digits_rts()
    if name in IDX_DOWNLOADS:  # found in the Debian package's folder when root is None (data/idx.py)
        return load_idx_dataset(name, root)
    if root is None:
        raise ExciteError(f"dataset {name!r} needs --data PATH (an archive or a folder)")
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    return load_imagefolder(root, size=image_size, skip_bad_images=skip_bad_images, seed=seed)


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the numpy globals an ndarray needs, so no code can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes protocol-2 bytes; it only encodes a string
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def _unpickle(data: bytes, what: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any decode failure is a corrupt file, named below
        raise ExciteError(f"corrupt CIFAR batch {what}: {e}") from None
    if not isinstance(obj, dict):
        raise ExciteError(f"corrupt CIFAR batch {what}: not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_files(name: str, root: Path) -> dict[str, bytes]:
    """Read the batch files from a ``.tar.gz`` or an extracted folder, keyed by base name."""
    if not root.exists():
        raise FileNotFoundError(2, "No such file or directory", str(root))
    wanted = {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"}
    if name == "cifar100":
        wanted = {"train", "test"}
    out: dict[str, bytes] = {}
    if root.is_dir():
        for p in root.rglob("*"):
            if p.is_file() and p.name in wanted:
                out[p.name] = p.read_bytes()
    else:
        try:
            with tarfile.open(root, "r:*") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in wanted:
                        out[base] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ExciteError(f"corrupt or truncated archive {root}: {e}") from None
    missing = sorted(wanted - set(out))
    if missing:
        raise ExciteError(f"{root} is not a {name} python-version archive: missing {', '.join(missing)}")
    return out


def load_cifar(name: str, root: str | Path) -> tuple[TensorData, TensorData]:
    """CIFAR-10/100 from the python-version archive (``cifar-10-python.tar.gz``) or its extracted folder."""
    root = Path(root)
    files = _cifar_files(name, root)
    key, nc = ("labels", 10) if name == "cifar10" else ("fine_labels", 100)
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_names = ["test_batch"] if name == "cifar10" else ["test"]
    mean, std = STATS[name]

    def split(names):
        xs, ys = [], []
        for n in names:
            d = _unpickle(files[n], n)
            if "data" not in d or key not in d:
                raise ExciteError(f"corrupt CIFAR batch {n}: expected keys 'data' and {key!r}")
            data = np.asarray(d["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(d[key]) != len(data):
                raise ExciteError(f"corrupt CIFAR batch {n}: data shape {data.shape}, {len(d[key])} labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        td = TensorData(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), nc, mean, std)
        td.check_labels()
        return td

    return split(train_names), split(test_names)


def download_dataset(name: str, root: str | Path = "data", *, progress: bool = False) -> Path:
    """``--download``: fetch ``name``'s official files into ``root`` with MD5 checks; return what
    :func:`load_dataset` takes as its root (the CIFAR archive, or the idx files' folder)."""
    if name in IDX_DOWNLOADS:
        return download_idx(name, root, progress=progress)
    if name in CIFAR_ARCHIVES:
        return download_cifar(name, root, progress=progress)
    raise ExciteError(f"--download works for {', '.join([*CIFAR_ARCHIVES, *IDX_DOWNLOADS])}, not dataset {name!r}")



__all__ = ["register_dataset", "registered_datasets", "CIFAR_ARCHIVES", "DATASETS", "IDX_DOWNLOADS", "download_dataset", "download_idx", "load_idx_dataset",
           "read_idx", "ImageFolderDataset", "TensorData", "augment", "download_cifar", "load_cifar",
           "load_dataset", "load_digits", "load_imagefolder", "normalize", "sample_resized_crop"]
