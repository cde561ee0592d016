"""Exactness, proved: forgetting j leaves every device as if j had never existed.

We build the fleet, unlearn, then build from scratch (same seeds, same data) the fleet in which the
forgotten devices never existed, and compare every remaining device's ensemble output.
"""

import copy

import numpy as np
import pytest

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import DeviceSpec, LearningConfig, build_fleet
from hdus_edge.learning.train import TrainConfig
from hdus_edge.sim.exactness import compare_fleets
from hdus_edge.topology import complete, ring, without

CFG = LearningConfig(train=TrainConfig(epochs=3), distill=DistillConfig(epochs=4), lam=0.5, space="probs")
SPECS = [
    DeviceSpec("a", "mobilenet-s", seed=1),
    DeviceSpec("b", "resnet-8", seed=2),
    DeviceSpec("c", "resnet-8", seed=3),
    DeviceSpec("d", "mobilenet-s", seed=4),
]


@pytest.fixture(scope="module")
def data():
    return split_fleet(load_digits(), len(SPECS), scheme="missing-class", reference_size=300, test_size=300, seed=7)


@pytest.fixture(scope="module")
def clients(data):
    return {s.device_id: data.clients[k] for k, s in enumerate(SPECS)}


def _fleet(specs, graph, data, clients, cfg=CFG):
    return build_fleet(specs, clients, data.reference, graph, cfg)


@pytest.fixture(scope="module")
def trained(data, clients):
    """The complete-graph fleet, trained once; tests work on deep copies."""
    return _fleet(SPECS, complete([s.device_id for s in SPECS]), data, clients)


def test_unlearn_one_equals_never_joined(data, clients, trained):
    # Prepare
    ids = [s.device_id for s in SPECS]
    fleet = copy.deepcopy(trained)
    never = _fleet([s for s in SPECS if s.device_id != "b"], without(complete(ids), "b"), data, clients)
    before = max(
        float(np.abs(fleet.ensemble_output(i, data.test.x) - never.ensemble_output(i, data.test.x)).max())
        for i in never.devices
    )
    # Execute
    held = fleet.unlearn("b")
    result = compare_fleets(fleet, never, data.test.x)
    # Assert: b's seed mattered before, and after forgetting nothing of it is left.
    assert before > 1e-3
    assert held == {"a": True, "c": True, "d": True}
    assert result.max_abs_diff <= 1e-6 and result.argmax_identical and result.exact


def test_unlearn_two_in_sequence_equals_never_joined(data, clients, trained):
    ids = [s.device_id for s in SPECS]
    fleet = copy.deepcopy(trained)
    fleet.unlearn("a")
    fleet.unlearn("d")
    never = _fleet([SPECS[1], SPECS[2]], without(without(complete(ids), "a"), "d"), data, clients)
    result = compare_fleets(fleet, never, data.test.x)
    assert result.exact, result
    assert fleet.members("b") == ("c",) and fleet.members("c") == ("b",)


def test_ring_unlearn_reports_only_real_holders(trained):
    ids = [s.device_id for s in SPECS]
    fleet = copy.deepcopy(trained)
    fleet.graph = ring(ids)
    fleet.holdings = {i: {} for i in ids}
    fleet.exchange_seeds()
    held = fleet.unlearn("a")
    assert held == {"b": True, "c": False, "d": True}


def test_training_is_deterministic_bit_for_bit(data, clients):
    one = _fleet(SPECS[:1], {"a": frozenset()}, data, clients)
    two = _fleet(SPECS[:1], {"a": frozenset()}, data, clients)
    for p, q in zip(one.devices["a"].main.parameters(), two.devices["a"].main.parameters()):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())


def test_no_seeds_means_ensemble_is_the_main_model(data, clients):
    fleet = _fleet(SPECS[:1], {"a": frozenset()}, data, clients)
    x = data.test.x[:50]
    np.testing.assert_array_equal(fleet.ensemble_output("a", x), fleet.main_output("a", x))
