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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from excite.core.errors import ExciteError, unknown_name

DATASETS = ("digits", "digits-rts", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")

# Per-channel mean/std on a 0-1 scale. CIFAR-10's are the commonly quoted training-set statistics;
# digits' were computed on its upsampled training split (one grey value repeated on 3 channels).
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.19, 0.19, 0.19), (0.30, 0.30, 0.30)),
    "digits-rts": ((0.16, 0.16, 0.16), (0.28, 0.28, 0.28)),  # its training split, computed the same way
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}


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


@dataclass
class TensorData:
    """An in-memory split: ``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    flip: bool = True  # horizontal flips are wrong for digits (a mirrored 2 is not a 2)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def check_labels(self) -> None:
        """Raise an ``ExciteError`` if a label lies outside ``[0, num_classes)``."""
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            bad = self.labels[(self.labels < 0) | (self.labels >= self.num_classes)][0].item()
            raise ExciteError(f"label {bad} out of range; expected 0..{self.num_classes - 1}")


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
        from excite.data.distorted import load_digits_rts

        return load_digits_rts()
    if name in IDX_DOWNLOADS:  # found in the Debian package's folder when root is None (data/idx.py)
        return load_idx_dataset(name, root)
    if root is None:
        raise ExciteError(f"dataset {name!r} needs --data PATH (an archive or a folder)")
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    return load_imagefolder(root, size=image_size, skip_bad_images=skip_bad_images, seed=seed)


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[TensorData, TensorData]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0-16), upsampled to 32x32.

    The split is stratified and fixed (``seed``), so every run and every machine sees the same test set.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in 0..1
    # Bilinear upsampling to the CIFAR resolution that the CIFAR ResNets expect (3 stride-1/2/2 stages).
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    mean, std = _STATS["digits"]
    mk = lambda i: TensorData(x[torch.from_numpy(i)], y[torch.from_numpy(i)], 10, mean, std, flip=False)  # noqa: E731
    return mk(idx_tr), mk(idx_te)


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
    mean, std = _STATS[name]

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


def augment(images: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after ``pad`` pixels of zero padding, and random horizontal flip, for a whole batch.

    The ResNet paper's CIFAR augmentation (He et al. 2016, Sec. 4.2). One offset pair per image,
    applied with a gather over a padded batch instead of a Python loop over images.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    out = out.gather(3, cols)
    if flip:
        do = torch.rand(n, generator=generator) < 0.5
        out = torch.where(do.view(n, 1, 1, 1), out.flip(3), out)
    return out


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float32 normalised per channel."""
    m = torch.tensor(mean).view(1, -1, 1, 1) * 255
    s = torch.tensor(std).view(1, -1, 1, 1) * 255
    return (images.float() - m) / s


from excite.data.download import CIFAR_ARCHIVES, download_cifar  # noqa: E402
from excite.data.idx import IDX_DOWNLOADS, download_idx, load_idx_dataset, read_idx  # noqa: E402
from excite.data.imagefolder import ImageFolderDataset, load_imagefolder, sample_resized_crop  # noqa: E402

__all__ = ["register_dataset", "registered_datasets", "CIFAR_ARCHIVES", "DATASETS", "IDX_DOWNLOADS", "download_dataset", "download_idx", "load_idx_dataset",
           "read_idx", "ImageFolderDataset", "TensorData", "augment", "download_cifar", "load_cifar",
           "load_dataset", "load_digits", "load_imagefolder", "normalize", "sample_resized_crop"]
