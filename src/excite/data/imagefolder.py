"""ImageNet-layout folders (``train/<class>/*.jpg``, ``val/<class>/*.jpg``), streamed and decoded with Pillow.

Each item is decoded when it is asked for, in a ``torch.utils.data.Dataset``, so DataLoader workers
decode in parallel and any sampler (the engine's global-batch sampler, a ``DistributedSampler``)
can drive it. The transforms are the standard ImageNet ones used by ResNet, SENet and ECA-Net:

* train: random-resized crop (scale 0.08-1 of the area, aspect ratio 3/4-4/3) to ``size``, then a
  random horizontal flip (Szegedy et al. 2015, "Going deeper", Sec. 6; torchvision's
  ``RandomResizedCrop`` defaults);
* eval: resize the shorter side to ``size / 0.875`` (256 for 224), then a center crop of ``size``.

Items are uint8 ``[3, size, size]`` tensors; normalisation happens on whole batches in the engine,
like the in-memory datasets.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from excite.core.errors import ExciteError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet training-set statistics
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def eval_resize_size(size: int) -> int:
    """Shorter side before the eval center crop: ``size / 0.875`` (224 -> 256, the ResNet paper's eval)."""
    return round(size / 0.875)


def sample_resized_crop(width: int, height: int, rng: random.Random, scale=CROP_SCALE, ratio=CROP_RATIO
                        ) -> tuple[int, int, int, int]:
    """Return a crop box ``(left, top, crop_width, crop_height)`` for a random-resized crop.

    Written here because torchvision is not a dependency of this project; it follows the algorithm
    torchvision documents for ``RandomResizedCrop.get_params``: up to 10 attempts draw an area fraction
    uniformly from ``scale`` and an aspect ratio (w/h) log-uniformly from ``ratio``, and the first box
    that fits inside the image wins, at a uniform position. If none fits (very elongated or tiny
    images), fall back to the largest center crop whose aspect ratio is clipped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:  # too tall: full width, height from the narrowest allowed ratio
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:  # too wide: full height, width from the widest allowed ratio
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Eval geometry: ``(resized_wh, crop_box)`` for resize-shorter-side-to-``size/0.875`` + center crop."""
    scale = eval_resize_size(size) / min(width, height)
    rw, rh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    return (rw, rh), (left, top, left + size, top + size)


def _to_tensor(im) -> torch.Tensor:
    # Pillow RGB bytes are HWC; a frombuffer view avoids a numpy round trip.
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return t.view(im.size[1], im.size[0], 3).permute(2, 0, 1).contiguous()


def decode(path: str | Path, size: int, *, train: bool, rng: random.Random | None = None) -> torch.Tensor:
    """Decode one image with Pillow and apply the train or eval transform; uint8 ``[3, size, size]``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if train:
            rng = rng or random.Random()
            left, top, cw, ch = sample_resized_crop(w, h, rng)
            # resize(box=...) crops and resamples in one pass (no intermediate crop image).
            im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            resized, box = center_crop_box(w, h, size)
            im = im.resize(resized, Image.BILINEAR).crop(box)
        return _to_tensor(im)


def find_samples(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(path, label)]`` sorted by class then file name, and the class names (sorted folder names)."""
    if not folder.is_dir():
        raise FileNotFoundError(2, "No such file or directory", str(folder))
    given = classes is not None
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ExciteError(f"{folder} has no class folders; expected {folder}/<class>/*.jpg")
    samples = [(str(p), label) for label, cls in enumerate(classes) if (folder / cls).is_dir()
               for p in sorted((folder / cls).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise ExciteError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}/<class>/")
    if not given:  # a class without images would be a class the model can never learn: name it
        used = {label for _, label in samples}
        empty = [cls for label, cls in enumerate(classes) if label not in used]
        if empty:
            raise ExciteError(f"class folder(s) {', '.join(str(folder / c) for c in empty[:5])} hold no images "
                              f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    return samples, classes


def _seed_of(*parts: int) -> int:
    # sha256 of the numbers, not hash(): the same crops on every Python version and platform.
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class ImageFolderDataset(Dataset):
    """One split of an ImageNet-layout folder, decoded per item (works with DataLoader workers).

    An item is ``(image uint8 [3, size, size], label, bad)``. The random crop and flip of item ``i``
    in epoch ``e`` come from a generator seeded by ``(seed, e, i)``: the same whatever the number of
    workers or processes, which keeps resume exact. Pass ``(index, epoch)`` as the index, or call
    :meth:`set_epoch` (the ``DistributedSampler`` convention) and pass a plain index.

    An unreadable image does not raise inside a worker (the DataLoader would wrap the message in a
    traceback): with ``skip_bad_images`` the next readable image stands in and ``bad`` is 1 (the
    engine counts these); otherwise the item comes back with label -1 and ``bad`` set to the index,
    and :meth:`raise_bad` names the file in one line.
    """

    def __init__(self, folder: str | Path, *, size: int = 224, train: bool = True, classes: list[str] | None = None,
                 seed: int = 0, skip_bad_images: bool = False):
        self.folder = Path(folder)
        self.samples, self.classes = find_samples(self.folder, classes)
        self.size, self.train, self.seed, self.skip_bad_images = size, train, seed, skip_bad_images
        self.num_classes = len(self.classes)
        self.mean, self.std = MEAN, STD
        self.epoch = 0
        self.skipped = 0  # bad reads counted by the engine

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """All labels (from the folder names; no image is decoded)."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def check_labels(self) -> None:
        """Labels are folder indices, always in range; present for parity with ``TensorData``."""

    def load(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """Decode item ``index`` (raises on a bad file)."""
        epoch = self.epoch if epoch is None else epoch
        rng = random.Random(_seed_of(self.seed, epoch, index)) if self.train else None
        return decode(self.samples[index][0], self.size, train=self.train, rng=rng)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            try:
                return self.load(i, epoch), self.samples[i][1], int(k > 0)
            except Exception:  # noqa: BLE001 - Pillow raises many types for a bad file
                if not self.skip_bad_images:
                    return torch.zeros(self.input_shape, dtype=torch.uint8), -1, index
        raise ExciteError(f"no readable images under {self.folder}")

    def raise_bad(self, index: int) -> None:
        """Raise the one-line error for the unreadable image at ``index``."""
        path = self.samples[index][0]
        try:
            self.load(index)
        except Exception as e:  # noqa: BLE001
            raise ExciteError(f"cannot read image {path}: {e} (use --skip-bad-images to skip)") from None
        raise ExciteError(f"cannot read image {path} (use --skip-bad-images to skip)")


def load_imagefolder(root, size: int = 224, skip_bad_images: bool = False, seed: int = 0):
    """Return streaming ``(train, val)`` datasets for an ImageNet-layout folder ``root``.

    ``val`` uses ``train``'s class list, so labels agree even if a class has no val images.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(2, "No such file or directory", str(root))
    tr = ImageFolderDataset(root / "train", size=size, train=True, seed=seed, skip_bad_images=skip_bad_images)
    va = ImageFolderDataset(root / "val", size=size, train=False, classes=tr.classes, skip_bad_images=skip_bad_images)
    return tr, va
