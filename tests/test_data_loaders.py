"""Loaders: sklearn digits, the real MNIST files inside the package, IDX written here (raw and gz), .npz, folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hdus_edge.data import (
    MNIST_DIR_ENV,
    Dataset,
    decode_idx,
    default_mnist_dir,
    encode_idx,
    load_data_folder,
    load_dataset,
    load_digits,
    load_idx,
    load_idx_folder,
    load_mnist,
    load_npz,
    save_npz,
)
from hdus_edge.data.idx import IMAGES_MAGIC
from hdus_edge.errors import DataError, DataFormatError, DataShapeError

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _images(n: int = 5, h: int = 3, w: int = 4) -> np.ndarray:
    return (np.arange(n * h * w, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(n, h, w)


def _write_pair(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    ip = folder / f"train-images-idx3-ubyte{suffix}"
    lp = folder / f"train-labels-idx1-ubyte{suffix}"
    for path, arr in ((ip, images), (lp, labels)):
        data = encode_idx(arr)
        path.write_bytes(gzip.compress(data) if gz else data)
    return ip, lp


def test_data_digits_shape_and_range() -> None:
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.num_classes == 10
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0  # raw 0..16, divided by 16
    assert ds.class_counts().min() >= 170
    assert load_dataset("digits").x.tobytes() == ds.x.tobytes()


def test_data_mnist_real_files() -> None:
    folder = default_mnist_dir()
    assert folder.is_dir(), f"MNIST test split expected at {folder}"
    ds = load_mnist("test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == np.float32
    assert ds.num_classes == 10
    assert ds.class_counts().tolist() == MNIST_COUNTS
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    # the first test image is a 7; its pixels are raw / 255
    assert ds.y[0] == 7
    assert np.allclose(ds.x * 255.0, np.round(ds.x * 255.0), atol=1e-4)
    assert load_dataset("mnist").x.tobytes() == ds.x.tobytes()


def test_data_mnist_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MNIST_DIR_ENV, str(tmp_path))
    assert default_mnist_dir() == tmp_path
    monkeypatch.delenv(MNIST_DIR_ENV)
    # the copy inside the package, never a folder beside the repository
    assert default_mnist_dir().parts[-3:] == ("hdus_edge", "data", "mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_data_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    imgs, labels = _images(), np.array([0, 3, 1, 3, 2], np.uint8)
    ip, lp = _write_pair(tmp_path, imgs, labels, gz=gz)
    ds = load_idx(ip, lp)
    assert ds.x.shape == (5, 1, 3, 4)
    np.testing.assert_array_equal(ds.x[:, 0], imgs.astype(np.float32) / 255.0)
    assert ds.y.tolist() == [0, 3, 1, 3, 2] and ds.num_classes == 4
    assert load_idx(ip, lp, num_classes=10).num_classes == 10
    folder_ds = load_idx_folder(tmp_path)
    assert folder_ds.name == tmp_path.name
    np.testing.assert_array_equal(folder_ds.x, ds.x)
    np.testing.assert_array_equal(load_data_folder(tmp_path).y, ds.y)
    np.testing.assert_array_equal(load_dataset(str(tmp_path)).y, ds.y)


def test_data_idx_bad_magic_names_file(tmp_path: Path) -> None:
    ip, lp = _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    # swapped files: each has the other's magic number
    with pytest.raises(DataFormatError, match="magic number 2049") as info:
        load_idx(lp, ip)
    assert str(lp) in str(info.value)
    garbage = tmp_path / "junk-images-idx3"
    garbage.write_bytes(b"\x00\x00\x08\x07" + bytes(40))
    with pytest.raises(DataFormatError, match=str(garbage)):
        load_idx(garbage, lp)


@pytest.mark.parametrize("gz", [False, True])
def test_data_idx_truncated(tmp_path: Path, gz: bool) -> None:
    ip, lp = _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    data = ip.read_bytes()[:-7]
    ip.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match="truncated") as info:
        load_idx(ip, lp)
    assert str(ip) in str(info.value)
    header_only = tmp_path / "short-images-idx3"
    header_only.write_bytes(data[:10])
    with pytest.raises(DataFormatError, match="inside the IDX header"):
        load_idx(header_only, lp)


def test_data_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    ip, lp = _write_pair(tmp_path, _images(50, 10, 10), np.zeros(50, np.uint8), gz=True)
    ip.write_bytes(ip.read_bytes()[:-20])  # cut the gzip stream itself
    with pytest.raises(DataFormatError, match="gzip") as info:
        load_idx(ip, lp)
    assert str(ip) in str(info.value)


def test_data_idx_trailing_bytes(tmp_path: Path) -> None:
    ip, lp = _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    lp.write_bytes(lp.read_bytes() + b"\x00")
    with pytest.raises(DataFormatError, match="trailing bytes") as info:
        load_idx(ip, lp)
    assert str(lp) in str(info.value)


def test_data_idx_count_mismatch(tmp_path: Path) -> None:
    ip, lp = _write_pair(tmp_path, _images(5), np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataFormatError, match="5 images") as info:
        load_idx(ip, lp)
    assert str(lp) in str(info.value) and "4 labels" in str(info.value)


def test_data_idx_missing_file(tmp_path: Path) -> None:
    ip, lp = _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    missing = tmp_path / "nope-labels-idx1-ubyte"
    with pytest.raises(DataError, match="no such file") as info:
        load_idx(ip, missing)
    assert not isinstance(info.value, DataFormatError)
    assert str(missing) in str(info.value)


def test_data_idx_folder_needs_exactly_one_pair(tmp_path: Path) -> None:
    _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=True)
    with pytest.raises(DataError, match="exactly one IDX images file"):
        load_idx_folder(tmp_path)
    only_images = tmp_path / "half"
    only_images.mkdir()
    (only_images / "x-images-idx3-ubyte").write_bytes(encode_idx(_images()))
    with pytest.raises(DataError, match="labels.*found none"):
        load_data_folder(only_images)


def test_data_decode_idx_pure() -> None:
    arr = _images(2, 2, 2)
    np.testing.assert_array_equal(decode_idx(encode_idx(arr), expect_magic=IMAGES_MAGIC), arr)
    with pytest.raises(DataFormatError, match="too short"):
        decode_idx(b"\x00", expect_magic=IMAGES_MAGIC, source="x")


def test_data_npz_roundtrip_and_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ds = Dataset(x=rng.random((4, 1, 5, 5), dtype=np.float32), y=np.array([0, 2, 1, 2], np.int64),
                 num_classes=7, name="mine")
    path = save_npz(ds, tmp_path / "sub" / "mine.npz")
    back = load_npz(path)
    assert back.x.tobytes() == ds.x.tobytes() and back.y.tolist() == ds.y.tolist()
    assert back.num_classes == 7 and back.name == "mine"
    assert list((tmp_path / "sub").iterdir()) == [path]  # no temp file left behind
    # uint8 [N, H, W] -> /255 and a channel axis
    raw = tmp_path / "raw.npz"
    np.savez(raw, x=_images(3), y=np.array([1, 0, 1], np.uint8))
    r = load_npz(raw)
    assert r.x.shape == (3, 1, 3, 4) and r.num_classes == 2 and r.name == "raw"
    np.testing.assert_array_equal(r.x[:, 0], _images(3).astype(np.float32) / 255.0)
    assert load_dataset(str(raw)).x.tobytes() == r.x.tobytes()


@pytest.mark.parametrize(
    ("arrays", "error", "needle"),
    [
        ({"x": np.full((2, 3, 3), 3.0)}, DataFormatError, "missing array 'y'"),
        ({"x": np.full((2, 3, 3), 3.0), "y": np.zeros(2, np.int64)}, DataFormatError, r"\[0, 1\]"),
        ({"x": np.zeros((2, 3, 3), np.int32), "y": np.zeros(2, np.int64)}, DataFormatError, "dtype int32"),
        ({"x": np.zeros((2, 2, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, DataShapeError, "shape"),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(3, np.int64)}, DataFormatError, "3 labels"),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2, np.float32)}, DataFormatError, "integer"),
    ],
)
def test_data_npz_rejects(tmp_path: Path, arrays: dict, error: type, needle: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(error, match=needle) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_data_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(b"definitely not a zip file")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_npz(path)
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


def test_data_folder_of_npz_files(tmp_path: Path) -> None:
    for i, n in enumerate((3, 2)):
        np.savez(tmp_path / f"part{i}.npz", x=_images(n), y=np.full(n, i, np.uint8))
    ds = load_data_folder(tmp_path)
    assert len(ds) == 5 and ds.y.tolist() == [0, 0, 0, 1, 1] and ds.name == tmp_path.name
    np.savez(tmp_path / "part9.npz", x=_images(2, 5, 5), y=np.zeros(2, np.uint8))
    with pytest.raises(DataShapeError, match="part9.npz"):
        load_data_folder(tmp_path)


def test_data_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_data_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="no data found"):
        load_data_folder(tmp_path)
    _write_pair(tmp_path, _images(), np.zeros(5, np.uint8), gz=False)
    np.savez(tmp_path / "extra.npz", x=_images(1), y=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match="ambiguous"):
        load_data_folder(tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar-definitely-not-here")
