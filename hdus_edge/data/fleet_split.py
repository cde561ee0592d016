"""Carve one pool of labeled data into a simulated fleet: clients, a reference set, a test set (pure).

Order of the cuts, each from what the previous left:
1. the global held-out test set (stratified, ``test_size``);
2. the public reference split (stratified, ``reference_size``), unless ``reference="noise"``, where
   generated inputs are used instead and nothing is carved;
3. the client partitions (:func:`~hdus_edge.data.partition.partition`);
4. per client, a local test split drawn stratified from the client's own part.

All parts are disjoint by index, and by content too: when the pool holds byte-equal copies of a
sample, only the first is kept (logged), so no copy can land on two sides of a cut; and
:func:`check_reference_disjoint` proves the reference part at the end.
Each stage draws from its own child of ``np.random.SeedSequence(seed)``, so a change in one stage's
size does not reshuffle the others' randomness more than it must.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hdus_edge.data.dataset import Dataset, concatenate, dataset_sha256, sample_hashes
from hdus_edge.data.partition import partition, stratified_split
from hdus_edge.data.reference import check_reference_disjoint, noise_reference
from hdus_edge.errors import ConfigError, DataError, PartitionError

logger = logging.getLogger(__name__)

REFERENCE_KINDS: tuple[str, ...] = ("public", "noise")


@dataclass(frozen=True, eq=False)
class ClientData:
    """One device's private data: ``train`` for its main model, ``test`` from the same distribution."""

    train: Dataset
    test: Dataset


@dataclass(frozen=True, eq=False)
class FleetData:
    """A simulated fleet's data: per-client splits, the shared reference set, the global test set."""

    clients: list[ClientData]
    reference: Dataset
    test: Dataset
    reference_kind: str
    seed: int
    scheme: str = ""

    @cached_property
    def reference_sha256(self) -> str:
        """The reference set's content hash (seeds carry it: peers see what a seed was distilled on)."""
        return dataset_sha256(self.reference)

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    @property
    def num_classes(self) -> int:
        return self.test.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.reference.input_shape


def split_fleet(
    pool: Dataset,
    n_clients: int,
    *,
    scheme: str = "missing-class",
    client_size: int | None = None,
    reference: str = "public",
    reference_size: int = 2000,
    test_size: int = 2000,
    local_test_fraction: float = 0.2,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> FleetData:
    """Split ``pool`` into a fleet (see the module docstring for the order of the cuts).

    ``client_size`` is samples per client before the local test split (``None``: all that is left,
    evenly). Raises ``PartitionError`` when the pool is too small for the request, ``ConfigError``
    for an unknown reference kind, ``DataError`` for an unlabeled pool.
    """
    if reference not in REFERENCE_KINDS:
        raise ConfigError(
            f"unknown reference kind {reference!r}", hint=f"use one of {', '.join(REFERENCE_KINDS)}"
        )
    if not pool.labeled:
        raise DataError(f"pool {pool.name!r} holds unlabeled samples (label -1); a fleet needs labeled data")
    if test_size < 0 or reference_size < 1:
        raise PartitionError(
            f"need test_size >= 0 and reference_size >= 1, got {test_size} and {reference_size}"
        )
    if not 0.0 <= local_test_fraction < 1.0:
        raise PartitionError(f"local_test_fraction must lie in [0, 1), got {local_test_fraction}")
    hashes = sample_hashes(pool.x)
    _, first = np.unique(hashes, return_index=True)
    available = np.sort(first).astype(np.int64)
    if len(available) < len(pool):
        logger.warning("pool %r: dropped %d duplicate samples", pool.name, len(pool) - len(available))
    carve = test_size + (reference_size if reference == "public" else 0)
    if carve >= len(available):
        raise PartitionError(
            f"pool {pool.name!r} has {len(available)} distinct samples; the test set ({test_size}) and "
            f"reference split ({reference_size if reference == 'public' else 0}) leave none for the clients",
            hint="lower test_size / reference_size, or use reference='noise'",
        )

    ss_test, ss_ref, ss_part, ss_local, ss_noise = np.random.SeedSequence(seed).spawn(5)
    test_idx, available = _carve(pool, available, test_size, np.random.default_rng(ss_test))
    test = pool.subset(test_idx, name=f"{pool.name}-test")

    if reference == "public":
        ref_idx, available = _carve(pool, available, reference_size, np.random.default_rng(ss_ref))
        ref = pool.subset(ref_idx, name=f"{pool.name}-reference")
    else:
        ref = noise_reference(pool.input_shape, reference_size, _int_seed(ss_noise), pool.num_classes)

    parts = partition(
        pool.y[available], n_clients, scheme, seed=_int_seed(ss_part), alpha=alpha,
        shards_per_client=shards_per_client, sizes=client_size, num_classes=pool.num_classes,
    )
    local_rng = np.random.default_rng(ss_local)
    clients = []
    for i, part in enumerate(parts):
        idx = available[part]
        n_local = int(round(local_test_fraction * len(idx)))
        if len(idx) - n_local < 1:
            raise PartitionError(f"client {i} has {len(idx)} samples; none would be left to train on")
        local_pos, train_pos = stratified_split(pool.y[idx], n_local, local_rng)
        clients.append(ClientData(
            train=pool.subset(idx[train_pos], name=f"client-{i}-train"),
            test=pool.subset(idx[local_pos], name=f"client-{i}-test"),
        ))

    check_reference_disjoint(
        ref, [concatenate([c.train, c.test], name=f"client-{i}") for i, c in enumerate(clients)]
    )
    logger.info(
        "fleet from %r: %d clients (%s) x %s train, reference %s x %d, test %d",
        pool.name, n_clients, scheme, [len(c.train) for c in clients], reference, len(ref), len(test),
    )
    return FleetData(
        clients=clients, reference=ref, test=test, reference_kind=reference, seed=seed, scheme=scheme
    )


def _carve(
    pool: Dataset, available: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    taken, rest = stratified_split(pool.y[available], n_take, rng)
    return available[taken], available[rest]


def _int_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint64)[0])
