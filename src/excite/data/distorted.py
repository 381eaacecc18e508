"""``digits-rts``: the embedded digits distorted as in the Spatial Transformer paper's RTS MNIST.

Jaderberg et al. 2015 (Sec. 4.1) build "RTS" MNIST by rotating each digit by a random angle in
+-45 degrees, scaling it by a random factor in 0.7-1.2 and translating it at random inside a 42x42
canvas. We do the same to the 32x32 upsampled digits of :func:`excite.data.load_digits`, with one
fixed generator, so the data (and the train/test split, which is the digits split) are identical on
every run and machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from excite.data.tensors import STATS, TensorData, load_digits

RTS_CANVAS = 42          # paper Sec. 4.1: RTS digits are placed in a 42x42 image
RTS_ANGLE = 45.0         # degrees, uniform in [-45, 45]
RTS_SCALE = (0.7, 1.2)   # uniform scale factor
RTS_SEED = 20150605      # the distortion generator's seed (the STN preprint's date); fixed forever


def distort_rts(images: torch.Tensor, generator: torch.Generator, *, canvas: int = RTS_CANVAS,
                angle: float = RTS_ANGLE, scale=RTS_SCALE) -> torch.Tensor:
    """Rotate, scale and translate uint8 ``[N, C, S, S]`` digits onto a ``canvas x canvas`` black image.

    The translation is uniform over the offsets that keep the scaled digit's square inside the canvas
    (a digit at scale 1.2 is 38 px wide, so it moves by at most +-2 px; one at 0.7 by up to +-10 px).
    Bilinear resampling in one batched ``grid_sample``; returns uint8 ``[N, C, canvas, canvas]``.
    """
    n, c, s, _ = images.shape
    rot = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(angle)
    sc = scale[0] + torch.rand(n, generator=generator, dtype=torch.float64) * (scale[1] - scale[0])
    room = (canvas - sc * s).clamp(min=0) / 2  # pixels the digit's centre may move each way
    tx = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * room
    ty = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * room
    # Inverse map, canvas coordinates (normalised to the canvas) -> source coordinates (normalised to
    # the digit): undo the translation, the rotation, then the scale (the digit spans s/canvas of it).
    k = canvas / (sc * s)
    cos, sin = torch.cos(rot), torch.sin(rot)
    t = torch.stack([tx, ty], 1) * 2 / canvas
    a = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1) * k[:, None, None]
    b = -(a @ t[:, :, None])
    theta = torch.cat([a, b], 2).float()
    grid = F.affine_grid(theta, [n, c, canvas, canvas], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def load_digits_rts(seed: int = RTS_SEED) -> tuple[TensorData, TensorData]:
    """The digits' train/test split (1,347 / 450), each image distorted once (RTS, 42x42, fixed ``seed``)."""
    train, test = load_digits()
    g = torch.Generator().manual_seed(seed)
    # One pass over train then test, so the training images do not depend on the test split's size.
    xtr = distort_rts(train.images, g)
    xte = distort_rts(test.images, g)
    mean, std = STATS["digits-rts"]
    return (TensorData(xtr, train.labels, 10, mean, std, flip=False),
            TensorData(xte, test.labels, 10, mean, std, flip=False))
