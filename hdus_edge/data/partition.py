"""Split sample indices among clients: iid, Dirichlet, label shards, missing-class (pure).

Every function takes its randomness from ``np.random.default_rng(seed)``: the same inputs and seed
give the same output, bit for bit. Partitions are disjoint and each client's indices come back
sorted ascending (training shuffles with its own seed, so pool order carries no meaning here).

Schemes, with ``sizes`` = samples per client (``None``: the whole pool, split as evenly as it goes):

- ``"iid"``: a uniform random permutation cut into equal parts.
- ``"dirichlet"``: client i draws class proportions q_i ~ Dir(alpha * 1) and takes its samples in
  those proportions (Hsu et al. 2019). Small alpha = very skewed clients. When the pool has run
  out of a class that q_i asks for, that share goes to the remaining classes in q_i's proportions.
- ``"shards"``: the samples (a stratified subset when ``sizes`` is set) sorted by label and cut into
  ``n_clients * shards_per_client`` contiguous shards; each client gets ``shards_per_client`` at
  random (McMahan et al. 2017), so it sees about that many classes (a shard may straddle two).
- ``"missing-class"`` (the HDUS paper's setting): client i never sees class ``i % num_classes``
  and draws the other classes as evenly as the pool allows. With ``sizes=None`` every client
  gets the same number of samples, the largest the pool supports without the missing classes.
"""

from __future__ import annotations

import logging

import numpy as np

from hdus_edge.errors import PartitionError

logger = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "missing-class")


def partition(
    labels: np.ndarray,
    n_clients: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    sizes: int | None = None,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Disjoint int64 index arrays into ``labels``, one per client (see the module docstring).

    ``num_classes`` defaults to the largest label + 1; pass it when some class may be absent
    from ``labels`` (it decides which class each missing-class client lacks).
    Raises ``PartitionError`` for requests the labels cannot meet.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    labels = labels.astype(np.int64)
    n = len(labels)
    if scheme not in SCHEMES:
        raise PartitionError(f"unknown partition scheme {scheme!r}", hint=f"use one of {', '.join(SCHEMES)}")
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise PartitionError(f"n_clients must be a positive integer, got {n_clients!r}")
    n_clients = int(n_clients)
    if n_clients > n:
        raise PartitionError(f"cannot give {n_clients} clients a sample each from {n} samples")
    client_sizes = _client_sizes(n, n_clients, sizes)
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = _iid(n, client_sizes, rng)
    else:
        k = _num_classes(labels, num_classes)
        if scheme == "dirichlet":
            parts = _dirichlet(labels, k, client_sizes, _check_alpha(alpha), rng)
        elif scheme == "shards":
            parts = _shards(labels, k, client_sizes, _check_shards(shards_per_client, client_sizes), rng)
        else:
            parts = _missing_class(labels, k, client_sizes, fixed=sizes is not None, rng=rng)
    return [np.sort(p).astype(np.int64) for p in parts]


# --- checks --------------------------------------------------------------------------------


def _client_sizes(n: int, n_clients: int, sizes: int | None) -> np.ndarray:
    if sizes is None:
        out = np.full(n_clients, n // n_clients, dtype=np.int64)
        out[: n % n_clients] += 1  # the first n % n_clients clients take one more
        return out
    if isinstance(sizes, bool) or not isinstance(sizes, (int, np.integer)) or sizes < 1:
        raise PartitionError(f"samples per client must be a positive integer, got {sizes!r}")
    if n_clients * int(sizes) > n:
        raise PartitionError(
            f"{n_clients} clients x {sizes} samples = {n_clients * int(sizes)} "
            f"exceeds the {n} samples available",
            hint="lower the client size or the number of clients",
        )
    return np.full(n_clients, int(sizes), dtype=np.int64)


def _num_classes(labels: np.ndarray, num_classes: int | None) -> int:
    if len(labels) and int(labels.min()) < 0:
        raise PartitionError(
            "label-based partitions need labeled samples, found label -1 (unlabeled)",
            hint="use scheme 'iid' for unlabeled data",
        )
    top = int(labels.max()) + 1 if len(labels) else 1
    if num_classes is None:
        return top
    if top > num_classes:
        raise PartitionError(f"label {top - 1} does not fit num_classes={num_classes}")
    return int(num_classes)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha > 0.0 or not np.isfinite(alpha):  # also rejects NaN
        raise PartitionError(
            f"Dirichlet alpha must be a positive finite number, got {alpha}",
            hint="0.1 is very skewed, 0.5 moderately, 100 close to iid",
        )
    return alpha


def _check_shards(k: int, client_sizes: np.ndarray) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise PartitionError(f"shards_per_client must be a positive integer, got {k!r}")
    if int(client_sizes.min()) < k:
        raise PartitionError(
            f"{k} shards per client need at least {k} samples per client, "
            f"but a client gets only {int(client_sizes.min())}"
        )
    return int(k)


# --- shared allocation helpers -------------------------------------------------------------


def apportion(weights: np.ndarray, total: int, capacity: np.ndarray) -> np.ndarray:
    """Integer counts ``<= capacity`` summing to ``total``, proportional to ``weights`` as far as
    capacity allows (largest remainder; ties go to the lower index). Deterministic.

    When every bin with room left has weight 0, the rest is spread in proportion to the room left.
    """
    weights = np.asarray(weights, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    if total < 0 or int(capacity.sum()) < total:
        raise ValueError(f"cannot place {total} items into capacity {int(capacity.sum())}")
    counts = np.zeros(len(capacity), dtype=np.int64)
    remaining = int(total)
    while remaining > 0:
        room = capacity - counts
        w = np.where(room > 0, np.where(np.isfinite(weights), np.maximum(weights, 0.0), 0.0), 0.0)
        if w.sum() <= 0.0:
            w = room.astype(np.float64)
        ideal = w / w.sum() * remaining
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        if add.sum() == 0:
            # Every ideal share is below 1 (so remaining < bins with weight): one each to the
            # largest shares. Stable sort keeps ties on the lower index.
            order = np.argsort(-(ideal), kind="stable")
            order = order[(room[order] > 0) & (w[order] > 0)][:remaining]
            add[order] = 1
        counts += add
        remaining -= int(add.sum())
    return counts


def _class_pools(labels: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    # One shuffled index list per class; drawing "the next m of class c" takes a prefix.
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(k)]


def stratified_sample(labels: np.ndarray, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """``n_take`` indices drawn at random with the class proportions of ``labels`` (sorted)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 <= n_take <= len(labels):
        raise ValueError(f"cannot draw {n_take} of {len(labels)} samples")
    if len(labels) and int(labels.min()) < 0:
        raise PartitionError("stratified sampling needs labeled samples, found label -1 (unlabeled)")
    k = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=k)
    take = apportion(counts, n_take, counts)
    pools = _class_pools(labels, k, rng)
    chosen = [pools[c][: take[c]] for c in range(k)]
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def stratified_split(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (a stratified sample of ``n_take``, the rest), both sorted."""
    taken = stratified_sample(labels, n_take, rng)
    mask = np.ones(len(labels), dtype=bool)
    mask[taken] = False
    return taken, np.flatnonzero(mask).astype(np.int64)


# --- schemes -------------------------------------------------------------------------------


def _cut(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(order[: int(sizes.sum())], np.cumsum(sizes)[:-1])


def _iid(n: int, sizes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return _cut(rng.permutation(n), sizes)


def _dirichlet(
    labels: np.ndarray, k: int, sizes: np.ndarray, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    pools = _class_pools(labels, k, rng)
    left = np.array([len(p) for p in pools], dtype=np.int64)
    used = np.zeros(k, dtype=np.int64)
    parts = []
    for size in sizes:
        q = rng.dirichlet(np.full(k, alpha))
        counts = apportion(q, int(size), left)
        parts.append(np.concatenate([pools[c][used[c]: used[c] + counts[c]] for c in range(k)]))
        used += counts
        left -= counts
    return parts


def _shards(
    labels: np.ndarray, k: int, sizes: np.ndarray, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n_clients = len(sizes)
    total = int(sizes.sum())
    chosen = stratified_sample(labels, total, rng) if total < len(labels) else np.arange(len(labels))
    # Sort by label; within a class the order is random so shards hold random samples of it.
    chosen = chosen[rng.permutation(len(chosen))]
    chosen = chosen[np.argsort(labels[chosen], kind="stable")]
    owners = rng.permutation(np.repeat(np.arange(n_clients), per_client))
    # Each client's `size` splits into `per_client` shard lengths differing by at most one.
    seen = np.zeros(n_clients, dtype=np.int64)
    lengths = np.empty(len(owners), dtype=np.int64)
    for slot, owner in enumerate(owners):
        base, extra = divmod(int(sizes[owner]), per_client)
        lengths[slot] = base + (1 if seen[owner] < extra else 0)
        seen[owner] += 1
    shards = np.split(chosen, np.cumsum(lengths)[:-1])
    return [np.concatenate([s for s, o in zip(shards, owners) if o == i]) for i in range(n_clients)]


def _missing_class(
    labels: np.ndarray, k: int, sizes: np.ndarray, *, fixed: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    if k < 2:
        raise PartitionError("missing-class needs at least 2 classes")
    n_clients = len(sizes)
    missing = np.arange(n_clients) % k
    supply = np.bincount(labels, minlength=k).astype(np.int64)
    total = int(supply.sum())
    # Hall's condition for this bipartite shape: the clients that lack class c can only use the
    # samples of the other classes. It is also sufficient (see _allocate_missing_class).
    lacking = np.bincount(missing, minlength=k)
    if not fixed:
        cap = min((total - int(supply[c])) // int(lacking[c]) for c in range(k) if lacking[c])
        if cap < int(sizes.max()):
            sizes = np.full(n_clients, cap, dtype=np.int64)
            logger.info(
                "missing-class: %d clients x %d samples; %d of %d samples stay unused",
                n_clients, cap, total - n_clients * cap, total,
            )
        if cap < 1:
            raise PartitionError("missing-class: a client would get no samples without its missing class")
    for c in range(k):
        need = int(sizes[missing == c].sum())
        if need > total - int(supply[c]):
            raise PartitionError(
                f"missing-class: the clients lacking class {c} need {need} samples, but only "
                f"{total - int(supply[c])} samples of other classes exist",
                hint="lower the client size or the number of clients",
            )
    counts = _allocate_missing_class(sizes, missing, supply)
    pools = _class_pools(labels, k, rng)
    used = np.zeros(k, dtype=np.int64)
    parts = []
    for i in range(n_clients):
        parts.append(np.concatenate([pools[c][used[c]: used[c] + counts[i, c]] for c in range(k)]))
        used += counts[i]
    return parts


def _allocate_missing_class(sizes: np.ndarray, missing: np.ndarray, supply: np.ndarray) -> np.ndarray:
    """Counts [client, class]: row sums = sizes, column sums <= supply, 0 at each missing class.

    Round robin, one sample per client per round: the client takes the class it holds fewest of
    (ties: the class with most left, then the lower id). The slack of class c,
    ``left - demand of clients lacking c - left of c``, must stay >= 0 for the rest to remain
    feasible; a move from class a by a client lacking b lowers every other slack by one, so when
    some class other than b has slack 0 the client must take that class. Feasible at the start
    implies at most one such class, hence the loop never gets stuck.
    """
    n_clients, k = len(sizes), len(supply)
    need = [int(s) for s in sizes]
    left = [int(s) for s in supply]
    remaining = sum(left)
    demand = [0] * k
    for i in range(n_clients):
        demand[int(missing[i])] += need[i]
    slack = [remaining - demand[c] - left[c] for c in range(k)]
    held = [[0] * k for _ in range(n_clients)]
    active = [i for i in range(n_clients) if need[i] > 0]
    while active:
        for i in active:
            lack = int(missing[i])
            tight = [c for c in range(k) if c != lack and slack[c] == 0]
            if tight:
                (c,) = tight  # more than one cannot happen while the state is feasible
            else:
                row = held[i]
                candidates = (c for c in range(k) if c != lack and left[c] > 0)
                c = min(candidates, key=lambda c: (row[c], -left[c], c))
            held[i][c] += 1
            need[i] -= 1
            left[c] -= 1
            for c2 in range(k):
                if c2 != c and c2 != lack:
                    slack[c2] -= 1
        active = [i for i in active if need[i] > 0]
    return np.array(held, dtype=np.int64).reshape(n_clients, k)
