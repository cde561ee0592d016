"""Partitions: each scheme's promise, determinism, errors, and property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hdus_edge.data import SCHEMES, apportion, partition, stratified_split
from hdus_edge.errors import PartitionError

LABELS = np.repeat(np.arange(10), 60)[np.random.default_rng(7).permutation(600)]


def _assert_disjoint(parts: list[np.ndarray], n: int) -> np.ndarray:
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a sample went to two clients"
    assert joined.min() >= 0 and joined.max() < n
    assert all(p.dtype == np.int64 for p in parts)
    return joined


@pytest.mark.parametrize("scheme", SCHEMES)
def test_data_partition_disjoint_covering_deterministic(scheme: str) -> None:
    parts = partition(LABELS, 6, scheme, seed=3)
    joined = _assert_disjoint(parts, len(LABELS))
    assert len(parts) == 6 and all(len(p) > 0 for p in parts)
    if scheme != "missing-class":  # missing-class keeps its missing classes out, see its own test
        assert len(joined) == len(LABELS)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = partition(LABELS, 6, scheme, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 6, scheme, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_data_partition_fixed_sizes(scheme: str) -> None:
    parts = partition(LABELS, 5, scheme, seed=0, sizes=80)
    _assert_disjoint(parts, len(LABELS))
    assert [len(p) for p in parts] == [80] * 5


def test_data_partition_missing_class_lacks_exactly_its_class() -> None:
    # spread = most minus fewest samples of the classes a client has. With sizes=None the whole
    # pool is used, so classes lacked by nobody are shared by more clients: 60/5 vs 60/6 samples.
    for n_clients, sizes, spread in ((6, None, 2), (6, 90, 1), (12, None, 2), (3, 150, 1)):
        parts = partition(LABELS, n_clients, "missing-class", seed=1, sizes=sizes)
        joined = _assert_disjoint(parts, len(LABELS))
        if sizes is None:
            assert len(joined) == len(LABELS)
        for i, p in enumerate(parts):
            present = set(LABELS[p].tolist())
            assert present == set(range(10)) - {i % 10}, (n_clients, i, present)
            others = np.delete(np.bincount(LABELS[p], minlength=10), i % 10)
            assert others.max() - others.min() <= spread, (n_clients, i, others)


def test_data_partition_missing_class_mnist_shape() -> None:
    # The benchmark's situation: a 6000-sample pool of uneven classes, 6 clients x 1000 = everything.
    labels = np.repeat(np.arange(10), [590, 680, 620, 605, 590, 535, 575, 615, 585, 605])
    parts = partition(labels, 6, "missing-class", seed=0, sizes=1000)
    joined = _assert_disjoint(parts, len(labels))
    assert len(joined) == 6000
    for i, p in enumerate(parts):
        counts = np.bincount(labels[p], minlength=10)
        assert counts[i] == 0 and len(p) == 1000
        assert np.delete(counts, i).min() >= 80  # still draws every other class


def test_data_partition_missing_class_unused_when_impossible() -> None:
    # One client cannot take class 0, so it gets everything else and nothing more.
    parts = partition(LABELS, 1, "missing-class", seed=0)
    assert len(parts[0]) == 540 and 0 not in set(LABELS[parts[0]].tolist())
    with pytest.raises(PartitionError, match="lacking class 0 need 600"):
        partition(LABELS, 1, "missing-class", seed=0, sizes=600)


def test_data_partition_shards_few_classes() -> None:
    parts = partition(LABELS, 10, "shards", seed=2, shards_per_client=2)
    _assert_disjoint(parts, len(LABELS))
    n_classes = [len(set(LABELS[p].tolist())) for p in parts]
    assert max(n_classes) <= 2  # 60-sample shards line up with 60-sample classes here
    sized = partition(LABELS, 4, "shards", seed=2, shards_per_client=3, sizes=50)
    assert all(len(set(LABELS[p].tolist())) <= 6 for p in sized)


def test_data_partition_dirichlet_skew_follows_alpha() -> None:
    def mean_max_share(alpha: float) -> float:
        parts = partition(LABELS, 6, "dirichlet", seed=5, alpha=alpha)
        return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_max_share(0.05) > 0.5 > mean_max_share(1000.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_clients": 601, "scheme": "iid"}, "601 clients"),
        ({"n_clients": 0, "scheme": "iid"}, "positive integer"),
        ({"n_clients": 3, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"n_clients": 3, "scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
        ({"n_clients": 3, "scheme": "iid", "sizes": 201}, "exceeds the 600"),
        ({"n_clients": 3, "scheme": "iid", "sizes": 0}, "positive integer"),
        ({"n_clients": 3, "scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"n_clients": 3, "scheme": "shards", "shards_per_client": 5, "sizes": 4}, "at least 5 samples"),
        ({"n_clients": 3, "scheme": "bogus"}, "unknown partition scheme"),
    ],
)
def test_data_partition_impossible_requests(kwargs: dict, needle: str) -> None:
    with pytest.raises(PartitionError, match=needle):
        partition(LABELS, seed=0, **kwargs)


def test_data_partition_label_errors() -> None:
    with pytest.raises(PartitionError, match="unlabeled"):
        partition(np.array([0, -1, 1, 1]), 2, "dirichlet", seed=0)
    with pytest.raises(PartitionError, match="2 classes"):
        partition(np.zeros(10, np.int64), 2, "missing-class", seed=0)
    assert len(partition(np.array([-1, -1, -1, -1]), 2, "iid", seed=0)[0]) == 2  # iid ignores labels


def test_data_apportion() -> None:
    assert apportion([1, 1, 1], 7, [10, 10, 10]).tolist() == [3, 2, 2]
    assert apportion([1, 0, 0], 5, [2, 10, 10]).tolist() == [2, 2, 1]  # overflow spread by room
    assert apportion([0.2, 0.8], 10, [10, 3]).tolist() == [7, 3]
    with pytest.raises(ValueError):
        apportion([1, 1], 5, [2, 2])


def test_data_stratified_split_keeps_proportions() -> None:
    taken, rest = stratified_split(LABELS, 100, np.random.default_rng(0))
    assert len(taken) == 100 and len(rest) == 500
    assert np.bincount(LABELS[taken], minlength=10).tolist() == [10] * 10
    assert len(np.intersect1d(taken, rest)) == 0


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=120),
    n_clients=st.integers(1, 12),
    scheme=st.sampled_from(SCHEMES),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.floats(0.01, 50.0),
    k=st.integers(1, 3),
    sizes=st.one_of(st.none(), st.integers(1, 30)),
)
def test_data_partition_property_disjoint_or_clear_error(
    labels: list[int], n_clients: int, scheme: str, seed: int, alpha: float, k: int, sizes: int | None
) -> None:
    y = np.array(labels, dtype=np.int64)
    try:
        parts = partition(y, n_clients, scheme, seed=seed, alpha=alpha, shards_per_client=k, sizes=sizes)
    except PartitionError as exc:
        assert str(exc)  # an impossible request, said so in words
        return
    assert len(parts) == n_clients
    joined = _assert_disjoint(parts, len(y))
    if sizes is not None:
        assert [len(p) for p in parts] == [sizes] * n_clients
    elif scheme != "missing-class":
        assert len(joined) == len(y)
    if scheme == "missing-class":
        k_cls = int(y.max()) + 1
        for i, p in enumerate(parts):
            assert i % k_cls not in set(y[p].tolist())
    again = partition(y, n_clients, scheme, seed=seed, alpha=alpha, shards_per_client=k, sizes=sizes)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
