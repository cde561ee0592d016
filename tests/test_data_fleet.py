"""Fleet splits (disjoint by content), generated reference sets, and the overlap check."""

from __future__ import annotations

import numpy as np
import pytest

from hdus_edge.data import (
    Dataset,
    FleetData,
    check_reference_disjoint,
    concatenate,
    dataset_sha256,
    load_digits,
    load_mnist,
    noise_reference,
    sample_hashes,
    split_fleet,
)
from hdus_edge.errors import (
    ConfigError,
    DataError,
    DataShapeError,
    PartitionError,
    ReferenceOverlapError,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def _hashes(ds: Dataset) -> set[str]:
    return set(sample_hashes(ds.x).tolist())


def _assert_content_disjoint(fleet: FleetData) -> None:
    groups = {"reference": fleet.reference, "test": fleet.test}
    for i, c in enumerate(fleet.clients):
        groups[f"c{i}-train"], groups[f"c{i}-test"] = c.train, c.test
    names = list(groups)
    for a in range(len(names)):
        ha = _hashes(groups[names[a]])
        assert len(ha) == len(groups[names[a]]), f"{names[a]} holds a sample twice"
        for b in range(a + 1, len(names)):
            assert not ha & _hashes(groups[names[b]]), f"{names[a]} and {names[b]} share samples"


def test_data_fleet_digits_six_clients(digits: Dataset) -> None:
    fleet = split_fleet(digits, 6, reference_size=300, test_size=300, seed=0)
    _assert_content_disjoint(fleet)
    assert fleet.n_clients == 6 and fleet.reference_kind == "public" and fleet.scheme == "missing-class"
    assert len(fleet.reference) == 300 and len(fleet.test) == 300
    assert fleet.reference.labeled and fleet.input_shape == (1, 8, 8) and fleet.num_classes == 10
    used = len(fleet.reference) + len(fleet.test) + sum(len(c.train) + len(c.test) for c in fleet.clients)
    assert used == len(digits)  # 1197 left for clients, all of it used (no class is lacked by all)
    for i, c in enumerate(fleet.clients):
        assert c.train.class_counts()[i] == 0 and c.test.class_counts()[i] == 0
        assert np.count_nonzero(c.train.class_counts()) == 9
        assert abs(len(c.test) - 0.2 * (len(c.train) + len(c.test))) <= 1
    # stratified carving keeps the pool's class mix
    assert fleet.test.class_counts().min() >= 28 and fleet.reference.class_counts().min() >= 28


def test_data_fleet_deterministic(digits: Dataset) -> None:
    kw = dict(scheme="dirichlet", reference_size=200, test_size=200, seed=11, alpha=0.3)
    a, b = split_fleet(digits, 4, **kw), split_fleet(digits, 4, **kw)
    assert a.reference_sha256 == b.reference_sha256 == dataset_sha256(a.reference)
    assert dataset_sha256(a.test) == dataset_sha256(b.test)
    for ca, cb in zip(a.clients, b.clients):
        assert dataset_sha256(ca.train) == dataset_sha256(cb.train)
        assert dataset_sha256(ca.test) == dataset_sha256(cb.test)
    c = split_fleet(digits, 4, **{**kw, "seed": 12})
    assert c.reference_sha256 != a.reference_sha256


def test_data_fleet_mnist_benchmark_split() -> None:
    pool = load_mnist("test")
    fleet = split_fleet(pool, 6, client_size=1000, reference_size=2000, test_size=2000, seed=0)
    _assert_content_disjoint(fleet)
    assert len(fleet.reference) == 2000 and len(fleet.test) == 2000
    for i, c in enumerate(fleet.clients):
        assert len(c.train) + len(c.test) == 1000 and len(c.test) == 200
        counts = c.train.class_counts() + c.test.class_counts()
        assert counts[i] == 0 and np.delete(counts, i).min() >= 80


def test_data_fleet_noise_reference(digits: Dataset) -> None:
    fleet = split_fleet(digits, 3, scheme="iid", reference="noise", reference_size=64, test_size=300,
                        client_size=400, seed=2)
    assert fleet.reference_kind == "noise" and len(fleet.reference) == 64
    assert (fleet.reference.y == -1).all() and fleet.reference.input_shape == (1, 8, 8)
    _assert_content_disjoint(fleet)
    # no public split carved: the test set and 3 x 400 clients come from the pool alone
    assert len(fleet.test) == 300 and all(len(c.train) + len(c.test) == 400 for c in fleet.clients)


def test_data_fleet_errors(digits: Dataset) -> None:
    with pytest.raises(PartitionError, match="leave none"):
        split_fleet(digits, 6)  # the 2000 + 2000 defaults do not fit 1797 samples
    with pytest.raises(PartitionError, match="exceeds"):
        split_fleet(digits, 6, client_size=500, reference_size=300, test_size=300)
    with pytest.raises(ConfigError, match="reference kind"):
        split_fleet(digits, 2, reference="teacher", reference_size=100, test_size=100)
    with pytest.raises(PartitionError, match="local_test_fraction"):
        split_fleet(digits, 2, reference_size=100, test_size=100, local_test_fraction=1.0)
    unlabeled = noise_reference((1, 8, 8), 50, seed=0, num_classes=10)
    with pytest.raises(DataError, match="unlabeled"):
        split_fleet(unlabeled, 2, reference_size=5, test_size=5)


def test_data_fleet_duplicates_in_pool_never_leak(digits: Dataset) -> None:
    # A pool in which every sample appears twice: index-disjoint is not enough.
    pool = concatenate([digits.subset(np.arange(600)), digits.subset(np.arange(600))], name="twice")
    fleet = split_fleet(pool, 3, reference_size=100, test_size=100, seed=4)
    _assert_content_disjoint(fleet)
    used = len(fleet.reference) + len(fleet.test) + sum(len(c.train) + len(c.test) for c in fleet.clients)
    assert used <= 600


def test_data_reference_overlap_detected(digits: Dataset) -> None:
    fleet = split_fleet(digits, 3, reference_size=200, test_size=200, seed=0)
    leaked = fleet.clients[1].train.subset(np.array([5, 9]))
    bad_ref = concatenate([fleet.reference, leaked], name="leaky")
    clients = [c.train for c in fleet.clients]
    with pytest.raises(ReferenceOverlapError) as info:
        check_reference_disjoint(bad_ref, clients)
    msg = str(info.value)
    assert "2 with client 1 ('client-1-train')" in msg and "client 0" not in msg and "'leaky'" in msg
    check_reference_disjoint(fleet.reference, clients)  # the real one passes
    # a copy is caught by content, whatever its label or position
    relabeled = Dataset(x=leaked.x[:1].copy(), y=np.array([-1], np.int64), num_classes=10, name="copy")
    with pytest.raises(ReferenceOverlapError, match="1 with client 1"):
        check_reference_disjoint(relabeled, clients)


def test_data_reference_shape_mismatch(digits: Dataset) -> None:
    ref = noise_reference((1, 4, 4), 5, seed=0, num_classes=10)
    with pytest.raises(DataShapeError, match="client 0"):
        check_reference_disjoint(ref, [digits])


@pytest.mark.parametrize("kind", ["mixed", "uniform", "blobs"])
def test_data_noise_reference(kind: str) -> None:
    a = noise_reference((1, 28, 28), 40, seed=3, num_classes=10, kind=kind)
    assert a.x.shape == (40, 1, 28, 28) and a.x.dtype == np.float32 and a.name == f"noise-{kind}"
    assert float(a.x.min()) >= 0.0 and float(a.x.max()) <= 1.0
    same = noise_reference((1, 28, 28), 40, seed=3, num_classes=10, kind=kind)
    other = noise_reference((1, 28, 28), 40, seed=4, num_classes=10, kind=kind)
    assert dataset_sha256(a) == dataset_sha256(same) != dataset_sha256(other)
    assert len(_hashes(a)) == 40
    zero_share = float((a.x == 0).mean())
    if kind == "blobs":
        assert zero_share > 0.3  # dark background, like digits
    if kind == "uniform":
        assert zero_share < 0.01
