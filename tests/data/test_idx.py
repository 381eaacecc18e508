"""Fashion-MNIST / MNIST: the idx-ubyte reader on generated files (good and bad), folder lookup,
downloads from file:// URLs with MD5 checks, training from the files, and a real-data run when the
Debian package's files are installed (.ci/run installs them)."""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from excite.data import idx as idx_mod
from excite.data import load_dataset
from excite.data.idx import IDX_FILES, download_idx, load_idx_dataset, read_idx, write_idx
from excite.core.errors import ExciteError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def make_idx_folder(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0) -> Path:
    """Four idx files of class-dependent 28x28 images: class c is a bright band at rows 2c..2c+5."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 6] = 230
        ext = ".gz" if gz else ""
        write_idx(folder / (IDX_FILES[f"{split}_images"] + ext), x)
        write_idx(folder / (IDX_FILES[f"{split}_labels"] + ext), y)
    return folder


def test_idx_reader_round_trip_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        p = write_idx(tmp_path / name, a)
        assert np.array_equal(read_idx(p, ndim=3), a)
    # The header by hand: 00 00 08 03, then big-endian 2, 3, 4.
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "00000003" "00000004") and len(raw) == 16 + 24
    assert gzip.decompress((tmp_path / "a-idx3-ubyte.gz").read_bytes()) == raw


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abcd", "4 data bytes for dimensions 5, expected 5 (truncated)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "3 data bytes for dimensions 2, expected 2 (trailing bytes)"),
    (b"PK\x03\x04whatever", "not an idx file (magic number 504b0304"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "idx data type 0x0d is not supported"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated header"),
    (b"", "not an idx file (magic number missing"),
])
def test_bad_idx_files_are_one_line_errors(tmp_path, data, message):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(data)
    with pytest.raises(ExciteError, match=r"bad-idx1-ubyte: .*" + message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_idx(p)
    assert "\n" not in str(e.value)


def test_wrong_dimensions_and_bad_gzip(tmp_path):
    p = write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ExciteError, match="1-dimensional idx data, expected 3 dimensions"):
        read_idx(p, ndim=3)
    g = tmp_path / "x.gz"
    g.write_bytes(gzip.compress(p.read_bytes())[:-9])
    with pytest.raises(ExciteError, match="corrupt or truncated gzip data"):
        read_idx(g)


def test_load_from_folder_normalises_from_the_training_split(tmp_path):
    folder = make_idx_folder(tmp_path / "fashion-mnist", gz=False)
    tr, te = load_idx_dataset("fashion-mnist", folder)
    assert tr.images.shape == (40, 3, 28, 28) and te.images.shape == (20, 3, 28, 28) and tr.images.dtype == torch.uint8
    assert tr.labels.tolist() == [i % 10 for i in range(40)] and tr.num_classes == 10
    raw = read_idx(folder / IDX_FILES["train_images"])
    assert tr.mean[0] == pytest.approx(raw.mean() / 255) and tr.std[0] == pytest.approx(raw.std() / 255)
    assert torch.equal(tr.images[:, 0], torch.from_numpy(raw.copy())) and torch.equal(tr.images[:, 2], tr.images[:, 0])
    assert tr.flip and not load_idx_dataset("mnist", folder)[0].flip  # a mirrored digit is another glyph
    # load_dataset finds the files through --data, a file inside the folder, or a parent holding <name>/.
    assert len(load_dataset("fashion-mnist", folder / IDX_FILES["test_labels"])[1]) == 20
    assert len(load_dataset("fashion-mnist", tmp_path)[0]) == 40


def test_mismatched_and_missing_files_name_the_problem(tmp_path, monkeypatch):
    folder = make_idx_folder(tmp_path / "fm")
    write_idx(folder / (IDX_FILES["test_labels"] + ".gz"), np.zeros(19, np.uint8))
    with pytest.raises(ExciteError, match="test split has 20 images but 19 labels"):
        load_idx_dataset("fashion-mnist", folder)
    write_idx(folder / (IDX_FILES["test_labels"] + ".gz"), np.full(20, 10, np.uint8))
    with pytest.raises(ExciteError, match="label 10 out of range"):
        load_idx_dataset("fashion-mnist", folder)
    (folder / (IDX_FILES["test_labels"] + ".gz")).unlink()
    with pytest.raises(ExciteError, match=r"has no t10k-labels-idx1-ubyte\[.gz\]"):
        load_idx_dataset("fashion-mnist", folder)
    # No folder given: the system folders are searched, and the error says where and what to do.
    monkeypatch.setattr(idx_mod, "SYSTEM_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("EXCITE_DATASETS", raising=False)
    with pytest.raises(ExciteError, match="apt-get install dataset-fashion-mnist, or pass --data DIR or --download"):
        load_dataset("fashion-mnist")
    monkeypatch.setenv("EXCITE_DATASETS", str(tmp_path))
    make_idx_folder(tmp_path / "mnist")
    assert len(load_dataset("mnist")[0]) == 40


def _served(tmp_path) -> tuple[str, dict]:
    src = make_idx_folder(tmp_path / "server", gz=True)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(src.iterdir())}  # noqa: S324
    return src.as_uri(), md5s


def test_download_checks_md5_and_reuses_good_files(tmp_path):
    url, md5s = _served(tmp_path)
    folder = download_idx("fashion-mnist", tmp_path / "data", base_url=url, md5s=md5s)
    assert folder == tmp_path / "data" / "fashion-mnist" and sorted(p.name for p in folder.iterdir()) == sorted(md5s)
    assert len(load_idx_dataset("fashion-mnist", folder)[0]) == 40
    stamp = (folder / "train-images-idx3-ubyte.gz").stat().st_mtime_ns
    download_idx("fashion-mnist", tmp_path / "data", base_url=url, md5s=md5s)  # present and right: reused
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_mtime_ns == stamp
    bad = dict(md5s, **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(ExciteError, match="checksum mismatch .* file discarded"):
        download_idx("fashion-mnist", tmp_path / "other", base_url=url, md5s=bad)
    assert not list((tmp_path / "other" / "fashion-mnist").glob("t10k-images*"))
    with pytest.raises(ExciteError, match="cannot download"):
        download_idx("mnist", tmp_path / "x", base_url=(tmp_path / "missing").as_uri(), md5s=md5s)
    # The official sums as published (Zalando's README; torchvision's MNIST resources).
    assert idx_mod.IDX_DOWNLOADS["fashion-mnist"][1]["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert idx_mod.IDX_DOWNLOADS["mnist"][1]["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"


def test_cli_trains_with_download_from_a_local_url(tmp_path, monkeypatch, capsys):
    from excite.cli import main

    url, md5s = _served(tmp_path)
    monkeypatch.setitem(idx_mod.IDX_DOWNLOADS, "fashion-mnist", (url, md5s))
    rc = main(["train", "--model", "resnet20", "--dataset", "fashion-mnist", "--download", "--data", str(tmp_path / "d"),
               "--epochs", "1", "--batch-size", "20", "--threads", "1", "--no-progress"])
    assert rc == 0 and "top-1" in capsys.readouterr().out
    assert (tmp_path / "d" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file()


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="dataset-fashion-mnist not installed (.ci/run installs it with apt)")
def test_real_fashion_mnist_subset_trains_well_above_chance():
    """The Debian package's files: 60,000 / 10,000 images, balanced classes; a small CNN trained for 2
    epochs on 3,000 of them must beat 40% on 3,000 test images (chance: 10%; 55.1% measured here)."""
    from excite.training import train

    tr, te = load_dataset("fashion-mnist")
    assert (len(tr), len(te)) == (60_000, 10_000) and tr.images.shape[1:] == (3, 28, 28)
    assert torch.bincount(tr.labels).tolist() == [6000] * 10 and torch.bincount(te.labels).tolist() == [1000] * 10
    assert tr.mean[0] == pytest.approx(0.2860, abs=1e-4) and tr.std[0] == pytest.approx(0.3530, abs=1e-4)

    r = train(dict(dataset="fashion-mnist", model=f"{__file__}:small_cnn", subset=3000, epochs=2, batch_size=64,
                   lr=0.05, progress=False))
    assert r["top1"] > 40 and not math.isnan(r["top1"])


def small_cnn():
    """A small CNN for the real-data test (a model reference: `tests/test_idx.py:small_cnn`)."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))
