"""Datasets: embedded digits, CIFAR archives in the exact python-version format, image folders, augmentation."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from excite.data import augment, load_cifar, load_dataset, load_digits, normalize
from excite.errors import ExciteError


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


def test_imagefolder_decodes_and_names_bad_images(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            Image.new("RGB", (40, 30), colour).save(d / "a.jpg")
    tr, va = load_dataset("imagefolder", tmp_path)
    assert tr.images.shape == (2, 3, 224, 224) and tr.labels.tolist() == [0, 1] and tr.num_classes == 2
    assert tr.images[0, 0].float().mean() > 200 and tr.images[1, 2].float().mean() > 200  # red cat, blue dog
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ExciteError, match="broken.jpg"):
        load_dataset("imagefolder", tmp_path)
    tr, _ = load_dataset("imagefolder", tmp_path, skip_bad_images=True)
    assert tr.skipped == 1 and len(tr) == 2
