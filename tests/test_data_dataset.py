"""Dataset validation, subsets and content hashes."""

from __future__ import annotations

import numpy as np
import pytest

from hdus_edge.data import Dataset, concatenate, dataset_sha256, sample_hashes
from hdus_edge.errors import DataShapeError


def _ds(n: int = 6, seed: int = 0, name: str = "t") -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 4, 4), dtype=np.float32)
    return Dataset(x=x, y=np.arange(n, dtype=np.int64) % 3, num_classes=3, name=name)


def test_data_dataset_basics() -> None:
    ds = _ds()
    assert len(ds) == 6
    assert ds.input_shape == (1, 4, 4)
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert ds.labeled
    assert "n=6" in repr(ds) and "input_shape=(1, 4, 4)" in repr(ds)


@pytest.mark.parametrize(
    ("x", "y", "k", "needle"),
    [
        (np.zeros((3, 1, 4, 4), np.float64), np.zeros(3, np.int64), 2, "float32"),
        (np.zeros((3, 4, 4), np.float32), np.zeros(3, np.int64), 2, "[N, C, H, W]"),
        (np.zeros((3, 1, 4, 4), np.float32), np.zeros(3, np.int32), 2, "int64"),
        (np.zeros((3, 1, 4, 4), np.float32), np.zeros(2, np.int64), 2, "3 samples but y holds 2"),
        (np.full((3, 1, 4, 4), 2.0, np.float32), np.zeros(3, np.int64), 2, "[0, 1]"),
        (np.full((3, 1, 4, 4), np.nan, np.float32), np.zeros(3, np.int64), 2, "[0, 1]"),
        (np.zeros((3, 1, 4, 4), np.float32), np.array([0, 1, 2], np.int64), 2, "labels must lie"),
        (np.zeros((3, 1, 4, 4), np.float32), np.array([0, -2, 1], np.int64), 2, "labels must lie"),
        (np.zeros((3, 1, 4, 4), np.float32), np.zeros(3, np.int64), 0, "num_classes"),
    ],
)
def test_data_dataset_rejects_bad_arrays(x: np.ndarray, y: np.ndarray, k: int, needle: str) -> None:
    with pytest.raises(DataShapeError, match="dataset 'bad'") as info:
        Dataset(x=x, y=y, num_classes=k, name="bad")
    assert needle in str(info.value)


def test_data_dataset_unlabeled_allowed() -> None:
    ds = Dataset(x=np.zeros((2, 1, 2, 2), np.float32), y=np.full(2, -1, np.int64), num_classes=10)
    assert not ds.labeled
    assert ds.class_counts().sum() == 0


def test_data_dataset_subset() -> None:
    ds = _ds()
    sub = ds.subset(np.array([4, 1]))
    assert len(sub) == 2 and sub.name == "t"
    np.testing.assert_array_equal(sub.x[0], ds.x[4])
    assert sub.y.tolist() == [1, 1]
    assert len(ds.subset(np.array([], dtype=np.int64), name="empty")) == 0
    assert len(ds.subset(ds.y == 0)) == 2
    with pytest.raises(TypeError):
        ds.subset(np.array([0.5]))


def test_data_dataset_sha256_stable_and_sensitive() -> None:
    a, b = _ds(seed=0, name="one"), _ds(seed=0, name="two")
    assert dataset_sha256(a) == dataset_sha256(b)  # the name is not content
    assert len(dataset_sha256(a)) == 64
    y2 = a.y.copy()
    y2[0] = 2
    assert dataset_sha256(Dataset(x=a.x, y=y2, num_classes=3)) != dataset_sha256(a)
    x2 = a.x.copy()
    x2[0, 0, 0, 0] = np.nextafter(x2[0, 0, 0, 0], np.float32(1))
    assert dataset_sha256(Dataset(x=x2, y=a.y, num_classes=3)) != dataset_sha256(a)
    # Pinned: the hash must not drift between runs or releases.
    fixed = Dataset(x=np.full((2, 1, 2, 2), 0.5, np.float32), y=np.array([0, 1], np.int64), num_classes=2)
    assert dataset_sha256(fixed) == "e2b0934bac8dde4800baa1c8d6ff88369d1737d0684d3a11ac5e08421f210f1f"
    assert sample_hashes(fixed.x)[0] == "b03b255a39db6e4899c5690ad58ccfd7"


def test_data_sample_hashes_by_content_not_position() -> None:
    ds = _ds(n=5)
    h = sample_hashes(ds.x)
    assert h.shape == (5,) and len(set(h.tolist())) == 5
    assert sample_hashes(ds.x[::-1]).tolist() == h.tolist()[::-1]
    # -0.0 == 0.0, so they must hash alike; a different shape must not collide.
    neg = np.zeros((1, 1, 2, 2), np.float32)
    neg[0, 0, 0, 0] = -0.0
    assert sample_hashes(neg)[0] == sample_hashes(np.zeros((1, 1, 2, 2), np.float32))[0]
    tall = sample_hashes(np.zeros((1, 1, 4, 1), np.float32))[0]
    assert tall != sample_hashes(np.zeros((1, 1, 2, 2), np.float32))[0]


def test_data_concatenate() -> None:
    a, b = _ds(n=2), _ds(n=3, seed=1)
    both = concatenate([a, b], name="ab")
    assert len(both) == 5 and both.name == "ab"
    odd = Dataset(x=np.zeros((1, 1, 3, 3), np.float32), y=np.zeros(1, np.int64), num_classes=3)
    with pytest.raises(DataShapeError, match="different input shapes"):
        concatenate([a, odd])
