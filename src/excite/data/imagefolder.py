"""ImageNet-layout folders (``train/<class>/*.jpg``, ``val/<class>/*.jpg``) decoded with Pillow.

Images are decoded once with the standard eval transform (resize the shorter side to size/0.875, center
crop ``size``) into an in-memory uint8 tensor. Suitable for small folders; random-resized crop for full
ImageNet streaming is not implemented yet (training uses the batched pad-crop-flip instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ExciteError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        short = round(size / 0.875)  # 224 -> 256, the usual ImageNet eval resize
        scale = short / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def load_split(folder: Path, classes: list[str] | None, size: int, skip_bad_images: bool):
    """Decode one split; returns ``(images, labels, classes, skipped)``."""
    if not folder.is_dir():
        raise FileNotFoundError(2, "No such file or directory", str(folder))
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ExciteError(f"{folder} has no class folders; expected {folder}/<class>/*.jpg")
    xs, ys, skipped = [], [], 0
    for label, cls in enumerate(classes):
        for p in sorted((folder / cls).glob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                xs.append(_decode(p, size))
            except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad file
                if not skip_bad_images:
                    raise ExciteError(f"cannot read image {p}: {e} (use --skip-bad-images to skip)") from None
                skipped += 1
                continue
            ys.append(label)
    if not xs:
        raise ExciteError(f"no readable images under {folder}")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), classes, skipped


def load_imagefolder(root, size: int = 224, skip_bad_images: bool = False):
    """Return ``(train, val)`` ``TensorData`` for an ImageNet-layout folder ``root``."""
    from . import TensorData

    root = Path(root)
    xtr, ytr, classes, s1 = load_split(root / "train", None, size, skip_bad_images)
    xva, yva, _, s2 = load_split(root / "val", classes, size, skip_bad_images)
    tr = TensorData(xtr, ytr, len(classes), MEAN, STD)
    va = TensorData(xva, yva, len(classes), MEAN, STD)
    tr.skipped = va.skipped = s1 + s2
    return tr, va
