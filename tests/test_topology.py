"""Neighbour graphs."""

import pytest

from hdus_edge.errors import ConfigError
from hdus_edge.topology import build_graph, complete, ring, without

IDS = [f"d{k}" for k in range(10)]


def _symmetric(g):
    return all(i in g[j] for i, nbrs in g.items() for j in nbrs)


def test_complete_links_everyone_but_self():
    g = complete(IDS)
    assert all(g[i] == frozenset(IDS) - {i} for i in IDS)


def test_ring_has_degree_two():
    g = ring(IDS)
    assert all(len(n) == 2 for n in g.values()) and _symmetric(g)


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_random_regular_is_regular_symmetric_and_seeded(degree):
    g = build_graph("random-regular", IDS, degree=degree, seed=3)
    assert all(len(n) == degree and i not in n for i, n in g.items()) and _symmetric(g)
    assert g == build_graph("random-regular", IDS, degree=degree, seed=3)


def test_small_world_keeps_edge_count_and_symmetry():
    g = build_graph("small-world", IDS, degree=4, rewire=0.3, seed=1)
    assert sum(len(n) for n in g.values()) == len(IDS) * 4 and _symmetric(g)


def test_impossible_regular_graph_is_a_config_error():
    with pytest.raises(ConfigError, match="3-regular"):
        build_graph("random-regular", IDS[:5], degree=3)


def test_unknown_topology_names_the_choices():
    with pytest.raises(ConfigError, match="complete"):
        build_graph("star", IDS)


def test_without_removes_device_and_its_links():
    g = without(complete(IDS), "d3")
    assert "d3" not in g and all("d3" not in n for n in g.values())
