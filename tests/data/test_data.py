"""Datasets: embedded digits, CIFAR archives in the exact python-version format, image folders, augmentation."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from excite.data import augment, load_cifar, load_dataset, load_digits, normalize
from excite.core.errors import ExciteError


def test_digits_real_split_fixed_and_stratified():
    from sklearn.datasets import load_digits as sk

    tr, te = load_digits()
    assert len(tr) + len(te) == 1797  # scikit-learn's bundled set
    assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (3, 32, 32)
    counts = np.bincount(sk().target, minlength=10)
    test_counts = torch.bincount(te.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - counts * 0.25) <= 1)  # stratified 25% test split
    tr2, te2 = load_digits()
    assert torch.equal(te.images, te2.images) and torch.equal(tr.labels, tr2.labels)  # fixed
    # Upsampling preserves the image: 4x4 block means track the 8x8 originals (0-16 -> 0-255).
    img = te.images[:, 0].float().view(-1, 8, 4, 8, 4).mean((2, 4))
    originals = torch.from_numpy(sk().images * 255 / 16).float()
    nearest = torch.cdist(img.flatten(1), originals.flatten(1)).min(1).values / 64
    assert nearest.max() < 25  # every test image matches an original digit within ~25 grey levels per pixel


def test_augment_is_a_padded_crop_or_its_mirror():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert torch.equal(augment(x, torch.Generator(), pad=0, flip=False), x)


def test_normalize_uses_channel_stats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert y[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def _batch(n, nc, key, seed):
    rng = np.random.default_rng(seed)
    # The real batches are Python-2 pickles of dicts with bytes keys and a uint8 ndarray [n, 3072].
    return {b"batch_label": b"x", key: rng.integers(0, nc, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * n}


def make_cifar(tmp_path, name="cifar10", n=6, bad_label=False):
    folder, nc, key = ("cifar-10-batches-py", 10, b"labels") if name == "cifar10" else ("cifar-100-python", 100, b"fine_labels")
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    batches = {f: _batch(n, nc, key, i) for i, f in enumerate(files)}
    if bad_label:
        batches[files[0]][key][0] = nc
    path = tmp_path / f"{name}-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f, b in batches.items():
            data = pickle.dumps(b, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{f}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, batches, files


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_and_extracted_folder(tmp_path, name):
    path, batches, files = make_cifar(tmp_path, name)
    tr, te = load_dataset(name, path)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    assert len(tr) == 6 * (len(files) - 1) and len(te) == 6
    first = batches[files[0]]
    assert torch.equal(tr.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))  # CHW, R plane first
    assert tr.labels[:6].tolist() == first[key]
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    tr2, _ = load_cifar(name, tmp_path / "x")
    assert torch.equal(tr.images, tr2.images)


def test_cifar_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset("cifar10", tmp_path / "nope.tar.gz")
    path, _, _ = make_cifar(tmp_path)
    trunc = tmp_path / "trunc.tar.gz"
    trunc.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ExciteError, match="corrupt or truncated archive|missing"):
        load_dataset("cifar10", trunc)
    (tmp_path / "bad").mkdir()
    bad, _, _ = make_cifar(tmp_path / "bad", bad_label=True)
    with pytest.raises(ExciteError, match="label 10 out of range; expected 0..9"):
        load_dataset("cifar10", bad)
    with pytest.raises(ExciteError, match="needs --data"):
        load_dataset("cifar10")
    with pytest.raises(ExciteError, match="unknown dataset 'cifar11'"):
        load_dataset("cifar11")


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(ExciteError, match="refusing global builtins.print"):
        load_cifar("cifar10", tmp_path)


def make_imagefolder(root, n=3, size=(40, 30)):
    """A tiny ImageNet-layout folder: ``n`` JPEGs per class, red 'cat' and blue 'dog', in train and val."""
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", size, colour).save(d / f"{i}.jpg")
    return root


def _fits(w, h, width, height, scale, ratio):
    """Could rounding a real (w', h') with area and ratio in bounds give the integers (w, h)?"""
    a = width * height
    return ((w + 0.5) * (h + 0.5) >= scale[0] * a and (w - 0.5) * (h - 0.5) <= scale[1] * a
            and (w + 0.5) / (h - 0.5) >= ratio[0] and (w - 0.5) / (h + 0.5) <= ratio[1])


@pytest.mark.parametrize("width,height", [(40, 30), (500, 375), (30, 40), (37, 11)])
def test_random_resized_crop_boxes_inside_and_within_bounds(width, height):
    import random

    from excite.data import sample_resized_crop

    rng = random.Random(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    areas = []
    for _ in range(500):
        left, top, w, h = sample_resized_crop(width, height, rng)
        assert 0 <= left and 0 <= top and 0 < w and 0 < h and left + w <= width and top + h <= height
        assert _fits(w, h, width, height, scale, ratio), (w, h)
        areas.append(w * h / (width * height))
    if width >= 100:  # a large image: draws cover the scale range (uniform in area fraction)
        assert min(areas) < 0.15 and max(areas) > 0.9


@pytest.mark.parametrize("width,height,box", [
    (400, 10, (193, 0, 13, 10)),   # too wide for 4/3: full height, width round(10 * 4/3) = 13, centered
    (10, 400, (0, 193, 10, 13)),   # too tall for 3/4: full width, height round(10 / (3/4)) = 13
])
def test_random_resized_crop_falls_back_to_center_crop(width, height, box):
    import random

    from excite.data import sample_resized_crop

    # After 10 draws that cannot fit (scale >= 0.5 of a 400x10 image never fits at ratio <= 4/3),
    # the documented fallback is the ratio-clipped center crop.
    assert sample_resized_crop(width, height, random.Random(1), scale=(0.5, 1.0)) == box


def test_eval_transform_is_resize_then_center_crop(tmp_path):
    from PIL import Image

    from excite.data.imagefolder import decode, eval_resize_size

    assert eval_resize_size(224) == 256  # the ResNet eval protocol
    # 40x30: left 10 columns red, right 10 blue, middle grey. size 16 -> shorter side 18 (scale 0.6),
    # 24x18 resized; center crop 16x16 starts at column 4 and row 1. Red covers resized columns 0-5,
    # so crop columns 0-1; blue covers 18-23, so crop columns 14-15; columns 3-12 are grey.
    im = Image.new("RGB", (40, 30), (128, 128, 128))
    im.paste((255, 0, 0), (0, 0, 10, 30))
    im.paste((0, 0, 255), (30, 0, 40, 30))
    im.save(tmp_path / "x.png")
    x = decode(tmp_path / "x.png", 16, train=False).int()
    assert x.shape == (3, 16, 16) and x.dtype == torch.int32
    assert (x[:, :, 0] - torch.tensor([255, 0, 0])[:, None]).abs().max() <= 2
    assert (x[:, :, 15] - torch.tensor([0, 0, 255])[:, None]).abs().max() <= 2
    assert (x[:, :, 3:13] - 128).abs().max() <= 2


def test_train_transform_crops_flips_and_is_seeded(tmp_path):
    from PIL import Image

    from excite.data import ImageFolderDataset

    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    im = Image.new("RGB", (40, 30), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 30))  # white left half: a flip shows as a bright right edge
    im.save(d / "x.png")
    ds = ImageFolderDataset(tmp_path / "train", size=12, train=True, seed=3)
    items = [ds[(0, e)][0] for e in range(40)]
    assert all(x.shape == (3, 12, 12) and x.dtype == torch.uint8 for x in items)
    assert torch.equal(ds[(0, 5)][0], items[5])  # the same (seed, epoch, index): the same crop
    left_bright = sum(int(x[0, :, 0].float().mean() > x[0, :, -1].float().mean()) for x in items)
    right_bright = sum(int(x[0, :, -1].float().mean() > x[0, :, 0].float().mean()) for x in items)
    assert left_bright > 5 and right_bright > 5  # crops straddling the edge, both unflipped and flipped


def test_imagefolder_streams_and_names_bad_images(tmp_path):
    make_imagefolder(tmp_path, n=2)
    tr, va = load_dataset("imagefolder", tmp_path, image_size=24)
    assert len(tr) == 4 and tr.num_classes == 2 and tr.classes == ["cat", "dog"] and tr.labels.tolist() == [0, 0, 1, 1]
    x, y, bad = va[3]
    assert x.shape == (3, 24, 24) and y == 1 and bad == 0
    assert x[2].float().mean() > 200 and x[0].float().mean() < 60  # a blue dog
    loader = torch.utils.data.DataLoader(tr, batch_size=2, num_workers=1,
                                         sampler=torch.utils.data.DistributedSampler(tr, num_replicas=2, rank=1))
    assert sum(len(b[0]) for b in loader) == 2  # works with DataLoader workers and a DistributedSampler
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    tr, _ = load_dataset("imagefolder", tmp_path, image_size=24)
    i = [p for p, _ in tr.samples].index(str(tmp_path / "train" / "dog" / "broken.jpg"))
    assert tr[i][1] == -1
    with pytest.raises(ExciteError, match="cannot read image .*broken.jpg"):
        tr.raise_bad(tr[i][2])
    tr, _ = load_dataset("imagefolder", tmp_path, image_size=24, skip_bad_images=True)
    x, y, bad = tr[i]
    assert bad == 1 and x.shape == (3, 24, 24)  # the next readable image stands in, counted
    with pytest.raises(FileNotFoundError):
        load_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ExciteError, match="no images"):
        load_dataset("imagefolder", tmp_path / "empty")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_cifar_verifies_md5_and_writes_atomically(tmp_path, name):
    import hashlib

    from excite.data import CIFAR_ARCHIVES, download_cifar

    assert CIFAR_ARCHIVES[name][0].startswith("https://www.cs.toronto.edu/~kriz/cifar-")
    (tmp_path / "src").mkdir()
    archive, _, _ = make_cifar(tmp_path / "src", name)
    url, md5 = archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()
    got = download_cifar(name, tmp_path / "dl", url=url, md5=md5)
    assert got == tmp_path / "dl" / archive.name and got.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [archive.name]  # no .part left
    tr, te = load_dataset(name, got)
    assert len(te) == 6
    assert download_cifar(name, tmp_path / "dl", url=url, md5=md5) == got  # reused, still verified
    with pytest.raises(ExciteError, match="checksum mismatch .*expected 0{32}"):
        download_cifar(name, tmp_path / "bad", url=url, md5="0" * 32)
    assert list((tmp_path / "bad").iterdir()) == []  # nothing that looks complete
    with pytest.raises(ExciteError, match="exists but its MD5"):
        download_cifar(name, tmp_path / "dl", url=url, md5="0" * 32)
    with pytest.raises(ExciteError, match="cannot download"):
        download_cifar(name, tmp_path / "x", url=(tmp_path / "missing.tar.gz").as_uri(), md5=md5)
