"""In-memory splits: uint8 image tensors with their labels and statistics, and the batch-wide tensor
augmentation that keeps the loader from ever being the bottleneck (the airbench approach)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from excite.core.errors import ExciteError

# Per-channel mean/std on a 0-1 scale. CIFAR-10's are the commonly quoted training-set statistics;
# digits' were computed on its upsampled training split (one grey value repeated on 3 channels).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.19, 0.19, 0.19), (0.30, 0.30, 0.30)),
    "digits-rts": ((0.16, 0.16, 0.16), (0.28, 0.28, 0.28)),  # its training split, computed the same way
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}


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


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[TensorData, TensorData]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0-16), upsampled to 32x32.

    The split is stratified and fixed (``seed``), so every run and every machine sees the same test set.
    """
    from sklearn.datasets import load_digits as _load  # slow import, digits only
    from sklearn.model_selection import train_test_split  # slow import, digits only

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in 0..1
    # Bilinear upsampling to the CIFAR resolution that the CIFAR ResNets expect (3 stride-1/2/2 stages).
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    mean, std = STATS["digits"]
    mk = lambda i: TensorData(x[torch.from_numpy(i)], y[torch.from_numpy(i)], 10, mean, std, flip=False)  # noqa: E731
    return mk(idx_tr), mk(idx_te)


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
