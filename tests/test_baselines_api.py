"""The baselines' shared pieces: budgets, the fleet setup, seeds, mixing weights, state vectors, errors."""

import numpy as np
import pytest
import torch

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.errors import ConfigError
from hdus_edge.models import build_model
from hdus_edge.sim.baselines import (
    METHODS,
    BaselineBudget,
    FleetSetup,
    device_seed,
    make_baseline,
    message_bytes,
    mixing_weights,
)
from hdus_edge.sim.baselines.sgd import load_state_vector, parallel_map, state_vector
from hdus_edge.topology import complete, ring, small_world

IDS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def data():
    return split_fleet(load_digits(), 4, scheme="missing-class", reference_size=300, test_size=300, seed=3)


def test_budget_rejects_nonsense():
    with pytest.raises(ValueError):
        BaselineBudget(epochs=0)
    with pytest.raises(ValueError):
        BaselineBudget(lr=0.0)
    reduced, full = BaselineBudget.reduced(seed=4), BaselineBudget.full()
    assert reduced.seed == 4
    # Every method sees its data about as often: local epochs = rounds x local epochs.
    assert reduced.epochs == reduced.rounds * reduced.local_epochs
    assert full.epochs == full.rounds * full.local_epochs


def test_setup_validates_fit_arguments(data):
    with pytest.raises(ConfigError, match="3 device ids for 4 clients"):
        FleetSetup.build(data, IDS[:3], "seed-cnn", complete(IDS[:3]))
    with pytest.raises(ConfigError, match="not unique"):
        FleetSetup.build(data, ["a", "a", "b", "c"], "seed-cnn", {})
    with pytest.raises(ConfigError, match="3 architectures"):
        FleetSetup.build(data, IDS, ["seed-cnn"] * 3, complete(IDS))
    with pytest.raises(ConfigError, match="unknown devices"):
        FleetSetup.build(data, IDS, "seed-cnn", {"a": frozenset({"z"})})
    with pytest.raises(ConfigError, match="not symmetric"):
        FleetSetup.build(data, IDS, "seed-cnn", {"a": frozenset({"b"})})


def test_setup_without_removes_data_arch_and_links(data):
    setup = FleetSetup.build(data, IDS, ["seed-cnn", "S", "seed-mlp", "M"], ring(IDS))
    assert setup.archs == ("seed-cnn", "mobilenet-s", "seed-mlp", "mobilenet-m")  # sizes resolved
    reduced = setup.without("b")
    assert reduced.device_ids == ("a", "c", "d")
    assert reduced.archs == ("seed-cnn", "seed-mlp", "mobilenet-m")
    assert reduced.data.n_clients == 3 and reduced.client("c") is setup.client("c")
    assert reduced.graph == {"a": frozenset({"d"}), "c": frozenset({"d"}), "d": frozenset({"a", "c"})}
    with pytest.raises(ConfigError, match="unknown device 'b'"):
        reduced.client("b")


def test_device_seed_depends_on_id_and_run_seed_only():
    assert device_seed(0, "dev-1") == device_seed(0, "dev-1")
    assert device_seed(0, "dev-1") != device_seed(0, "dev-2")
    assert device_seed(0, "dev-1") != device_seed(1, "dev-1")
    assert device_seed(0, "dev-1") == 132149143  # stable across processes and Python versions (CRC-32)


@pytest.mark.parametrize("graph", [complete(IDS), ring(IDS), small_world([f"n{i}" for i in range(8)], 4, 0.5, 1)])
def test_metropolis_weights_are_doubly_stochastic(graph):
    w = mixing_weights(graph)
    for i, row in w.items():
        assert set(row) == graph[i] | {i}
        assert abs(sum(row.values()) - 1.0) < 1e-12 and min(row.values()) > 0
        for j in graph[i]:
            assert w[i][j] == w[j][i]  # symmetric: the fleet mean is preserved
    uniform = mixing_weights(graph, "uniform")
    assert all(abs(sum(r.values()) - 1.0) < 1e-12 for r in uniform.values())
    with pytest.raises(ValueError):
        mixing_weights(graph, "max-degree")  # type: ignore[arg-type]


def test_complete_graph_metropolis_is_the_exact_mean():
    w = mixing_weights(complete(IDS))
    assert all(v == 0.25 for row in w.values() for v in row.values())


def test_state_vector_round_trip_and_message_size():
    a = build_model("seed-cnn", (1, 8, 8), 10, seed=1)
    b = build_model("seed-cnn", (1, 8, 8), 10, seed=2)
    vec = state_vector(a)
    load_state_vector(b, vec)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    floats = sum(v.numel() for v in a.state_dict().values() if v.is_floating_point())
    assert vec.numel() == floats and message_bytes(a) == 4 * floats
    with pytest.raises(ValueError):
        load_state_vector(b, torch.cat([vec, vec[:1]]))


def test_parallel_map_keeps_order_and_matches_serial():
    def work(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(64, 64, generator=g) @ torch.randn(64, 64, generator=g)

    serial = parallel_map(work, list(range(6)), 1)
    done: list[int] = []
    threaded = parallel_map(work, list(range(6)), 3, on_done=lambda n: done.append(n))
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded))
    assert done == [1, 2, 3, 4, 5, 6]


def test_make_baseline_knows_every_method_and_rejects_others():
    assert set(METHODS) == {"isgd", "dsgd", "fedunl", "fedunl-retrain", "sisa-a"}
    for name in METHODS:
        assert make_baseline(name).name == name
    with pytest.raises(ConfigError, match="unknown baseline 'sisa'"):
        make_baseline("sisa")


def test_calls_out_of_order_are_programming_errors(data):
    method = make_baseline("isgd")
    with pytest.raises(ValueError, match="fit"):
        method.evaluate()
    with pytest.raises(ValueError, match="fit"):
        method.forget("a")
    assert method.recovery_curve() == []


def test_forget_unknown_device_changes_nothing(data):
    method = make_baseline("isgd", workers=1)
    budget = BaselineBudget(epochs=1, batch_size=64, seed=0)
    before = method.fit(data, IDS, "seed-mlp", complete(IDS), budget)
    with pytest.raises(ConfigError, match="unknown device 'z'"):
        method.forget("z")
    assert method.devices == tuple(IDS) and method.forgotten == ()
    assert method.evaluate() == before
    with pytest.raises(ValueError, match="fitted already"):
        method.fit(data, IDS, "seed-mlp", complete(IDS), budget)
    assert np.isfinite(before.mean_local)
