"""Fashion-MNIST and MNIST: an idx-ubyte reader, the folders they are found in, and their downloads.

The idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one big-endian int32 per
dimension, then the data in C order. Labels are ``idx1`` (``[N]``), images ``idx3`` (``[N, 28, 28]``).

Images are kept at their native 28x28 (the CIFAR ResNets take any size: global average pooling
after three stages gives a 7x7 map), one grey channel repeated on the 3 input channels as a view
(no extra memory). Normalisation is computed from the training split when it is loaded.
Fashion-MNIST is flipped in training (a mirrored shirt is a shirt); MNIST is not (a mirrored 2 is not a 2).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from excite.core.errors import ExciteError
from excite.data.download import download_file
from excite.data.tensors import TensorData

# File base names shared by both data sets (each may be gzipped: name + ".gz").
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Official downloads and the MD5 of each .gz file as published. Fashion-MNIST: the Zalando repository
# (https://github.com/zalandoresearch/fashion-mnist, README "Get the Data"). MNIST: the PyTorch
# project's mirror of yann.lecun.com (which refuses scripted downloads); same files, same sums.
IDX_DOWNLOADS = {
    "fashion-mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
}

# Where the Debian packages put the files (``apt-get install dataset-fashion-mnist``); searched when
# no folder is given. ``EXCITE_DATASETS`` (a folder holding ``fashion-mnist/``, ``mnist/``) comes first.
SYSTEM_DIRS = ("/usr/share/datasets",)

IDX_CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(i) for i in range(10)),
}


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read one idx-ubyte file (optionally gzipped, detected by content) into a uint8 array.

    Validates the magic number (type 0x08, unsigned byte), the number of dimensions (``ndim`` if
    given) and that the data length equals the product of the dimensions; any mismatch is a one-line
    ``ExciteError`` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ExciteError(f"{path} is a folder, expected an idx-ubyte file") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ExciteError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ExciteError(f"{path}: not an idx file (magic number {raw[:4].hex() or 'missing'}, expected 0000080N)")
    if raw[2] != 0x08:
        raise ExciteError(f"{path}: idx data type 0x{raw[2]:02x} is not supported; expected 0x08 (unsigned byte)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise ExciteError(f"{path}: {nd}-dimensional idx data, expected {ndim} dimensions")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ExciteError(f"{path}: truncated header ({len(raw)} bytes, the {nd} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=nd, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ExciteError(f"{path}: {len(raw) - header} data bytes for dimensions {'x'.join(map(str, shape))}, "
                          f"expected {expected - header} ({'truncated' if len(raw) < expected else 'trailing bytes'})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write a uint8 array as an idx-ubyte file (gzipped when ``path`` ends in ``.gz``); used by tests."""
    path = Path(path)
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes() + a.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _find_file(folder: Path, base: str) -> Path | None:
    for name in (base, base + ".gz", base.replace("-idx", ".idx")):  # ".idx": some mirrors' spelling
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder holding ``name``'s four idx files: ``root`` if given, else the system folders
    (``$EXCITE_DATASETS/<name>``, ``/usr/share/datasets/<name>``). A one-line error says where it looked."""
    if root is not None:
        folder = Path(root)
        if not folder.exists():
            raise FileNotFoundError(2, "No such file or directory", str(folder))
        if folder.is_file():
            folder = folder.parent
        candidates = [folder, folder / name]
    else:
        bases = ([os.environ["EXCITE_DATASETS"]] if os.environ.get("EXCITE_DATASETS") else []) + list(SYSTEM_DIRS)
        candidates = [Path(b) / name for b in bases]
    for folder in candidates:
        if _find_file(folder, IDX_FILES["train_images"]) is not None:
            return folder
    hint = f"apt-get install dataset-{name}, or " if name == "fashion-mnist" else ""
    raise ExciteError(f"{name} idx files (train-images-idx3-ubyte[.gz] ...) not found in "
                      f"{', '.join(str(c) for c in candidates)}; {hint}pass --data DIR or --download")


def load_idx_dataset(name: str, root: str | Path | None = None):
    """``(train, test)`` :class:`~excite.data.TensorData` for ``fashion-mnist`` or ``mnist`` at 28x28.

    ``root`` is a folder with the four idx files (plain or ``.gz``); ``None`` searches the system folders.
    """

    if name not in IDX_DOWNLOADS:
        raise ExciteError(f"unknown idx dataset {name!r}; valid: {', '.join(IDX_DOWNLOADS)}")
    folder = find_idx_folder(name, root)
    arrays = {}
    for key, base in IDX_FILES.items():
        path = _find_file(folder, base)
        if path is None:
            raise ExciteError(f"{folder} has no {base}[.gz]; the four files are {', '.join(IDX_FILES.values())}")
        arrays[key] = read_idx(path, ndim=3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ExciteError(f"{folder}: {split} split has {n_img} images but {n_lab} labels")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ExciteError(f"{folder}: train images are {arrays['train_images'].shape[1:]}, test images "
                          f"{arrays['test_images'].shape[1:]}")
    # Normalisation from the training split only (Fashion-MNIST: mean 0.2860, std 0.3530 on 0-1).
    tr = arrays["train_images"]
    mean = float(tr.mean(dtype=np.float64)) / 255
    std = float(tr.std(dtype=np.float64)) / 255 or 1.0
    flip = name == "fashion-mnist"

    def split(key):
        x = torch.from_numpy(arrays[f"{key}_images"].copy())[:, None].expand(-1, 3, -1, -1)
        y = torch.from_numpy(arrays[f"{key}_labels"].astype(np.int64))
        td = TensorData(x, y, 10, (mean,) * 3, (std,) * 3, flip=flip)
        td.check_labels()
        return td

    return split("train"), split("test")


def download_idx(name: str, root: str | Path = "data", *, base_url: str | None = None, md5s: dict | None = None,
                 progress: bool = False) -> Path:
    """Download ``name``'s four official ``.gz`` files into ``root/<name>/`` with MD5 checks; return the folder.

    ``base_url``/``md5s`` override the official ones (tests use a ``file://`` folder). Files already
    there with the right MD5 are reused; a wrong one is refused and left alone (see ``download_file``).
    """
    if name not in IDX_DOWNLOADS:
        raise ExciteError(f"--download works for cifar10, cifar100, {', '.join(IDX_DOWNLOADS)}, not {name!r}")
    official_url, official_md5s = IDX_DOWNLOADS[name]
    base_url = base_url or official_url
    md5s = md5s or official_md5s
    folder = Path(root) / name
    for fname, md5 in md5s.items():
        download_file(base_url.rstrip("/") + "/" + fname, md5, folder, progress=progress)
    return folder
