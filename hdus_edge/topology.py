"""Neighbour graphs for a fleet (pure): who sends their seed to whom.

Graphs are undirected and returned as ``{device_id: frozenset(neighbour ids)}``; every random
choice takes a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hdus_edge.errors import ConfigError

Graph = dict[str, frozenset[str]]
TOPOLOGIES: tuple[str, ...] = ("complete", "ring", "random-regular", "small-world")


def complete(ids: Sequence[str]) -> Graph:
    """Every device a neighbour of every other (the paper's setting)."""
    return {i: frozenset(j for j in ids if j != i) for i in ids}


def ring(ids: Sequence[str]) -> Graph:
    """Each device linked to the one before and after it."""
    n = len(ids)
    if n < 3:
        return complete(ids)
    return {ids[k]: frozenset({ids[(k - 1) % n], ids[(k + 1) % n]}) for k in range(n)}


def random_regular(ids: Sequence[str], degree: int, seed: int) -> Graph:
    """A random ``degree``-regular graph, seeded.

    Starts from a circulant graph (ring lattice, plus the diameter chords when ``degree`` is odd)
    and randomises it with degree-preserving double-edge swaps; unlike the configuration model this
    never needs luck, whatever the degree.
    """
    n = len(ids)
    if degree >= n or degree < 0 or (n * degree) % 2:
        raise ConfigError(
            f"no {degree}-regular graph on {n} devices",
            hint="degree must be below the device count and degree x devices must be even",
        )
    edges = {tuple(sorted((k, (k + d) % n))) for k in range(n) for d in range(1, degree // 2 + 1)}
    if degree % 2:
        edges |= {tuple(sorted((k, k + n // 2))) for k in range(n // 2)}
    rng = np.random.default_rng(seed)
    edge_list = sorted(edges)
    for _ in range(10 * len(edge_list)):
        a, b = rng.choice(len(edge_list), size=2, replace=False)
        (u, v), (x, y) = edge_list[a], edge_list[b]
        if rng.random() < 0.5:
            x, y = y, x
        new1, new2 = tuple(sorted((u, x))), tuple(sorted((v, y)))
        if u == x or v == y or new1 in edges or new2 in edges:
            continue
        edges -= {edge_list[a], edge_list[b]}
        edges |= {new1, new2}
        edge_list[a], edge_list[b] = new1, new2
    return _from_edges(ids, edges)


def small_world(ids: Sequence[str], degree: int, rewire: float, seed: int) -> Graph:
    """Watts-Strogatz: a ring lattice of even ``degree``, each edge rewired with prob ``rewire``."""
    n = len(ids)
    if degree % 2 or degree >= n or not (0.0 <= rewire <= 1.0):
        raise ConfigError(
            f"invalid small-world graph: degree {degree}, rewire {rewire}, {n} devices",
            hint="use an even degree below the device count and rewire in [0, 1]",
        )
    rng = np.random.default_rng(seed)
    edges = {tuple(sorted((k, (k + d) % n))) for k in range(n) for d in range(1, degree // 2 + 1)}
    for a, b in sorted(edges):
        if rng.random() < rewire:
            candidates = [c for c in range(n) if c != a and tuple(sorted((a, c))) not in edges]
            if candidates:
                edges.discard((a, b))
                edges.add(tuple(sorted((a, int(rng.choice(candidates))))))
    return _from_edges(ids, edges)


def build_graph(kind: str, ids: Sequence[str], *, degree: int = 4, rewire: float = 0.1, seed: int = 0) -> Graph:
    """Build a named topology over ``ids``."""
    if kind == "complete":
        return complete(ids)
    if kind == "ring":
        return ring(ids)
    if kind == "random-regular":
        return random_regular(ids, degree, seed)
    if kind == "small-world":
        return small_world(ids, degree, rewire, seed)
    raise ConfigError(f"unknown topology {kind!r}", hint=f"use one of {', '.join(TOPOLOGIES)}")


def without(graph: Graph, device_id: str) -> Graph:
    """The graph with one device and all its links removed."""
    return {i: nbrs - {device_id} for i, nbrs in graph.items() if i != device_id}


def _from_edges(ids: Sequence[str], edges: set[tuple[int, int]]) -> Graph:
    nbrs: dict[str, set[str]] = {i: set() for i in ids}
    for a, b in edges:
        nbrs[ids[a]].add(ids[b])
        nbrs[ids[b]].add(ids[a])
    return {i: frozenset(s) for i, s in nbrs.items()}
