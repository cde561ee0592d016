"""DSGD: gossip averaging over the graph; forgetting retrains everyone, bit for bit the never-joined run."""

import pytest

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.models import build_model
from hdus_edge.sim.baselines import (
    DSGD,
    BaselineBudget,
    compare_runs,
    exact_check,
    message_bytes,
)
from hdus_edge.topology import ring

IDS = ["a", "b", "c", "d"]
BUDGET = BaselineBudget(rounds=3, local_epochs=2, batch_size=16, lr=2e-2, seed=0)
ARCH = "seed-cnn"  # fast; the shared architecture is a parameter
CHANCE = 0.1


@pytest.fixture(scope="module")
def data():
    return split_fleet(
        load_digits(), 4, scheme="missing-class", client_size=150, reference_size=300, test_size=300, seed=3
    )


@pytest.fixture(scope="module")
def fitted(data):
    """A ring DSGD run, fitted then with 'b' forgotten: (run, result before, cost, result after)."""
    dsgd = DSGD(arch=ARCH, workers=2)
    before = dsgd.fit(data, IDS, ["resnet-8"] * 4, ring(IDS), BUDGET)  # arch= wins over the devices' archs
    cost = dsgd.forget("b")
    return dsgd, before, cost, dsgd.evaluate()


def test_dsgd_learns_and_counts_gossip_bytes(fitted, data):
    dsgd, before, _, _ = fitted
    assert dsgd.arch == ARCH
    assert before.mean_local > 2 * CHANCE and before.mean_global > 2 * CHANCE
    per_message = message_bytes(build_model(ARCH, data.input_shape, data.num_classes))
    # Ring of 4: 8 directed messages per round.
    assert before.train_bytes_sent == 8 * BUDGET.rounds * per_message


def test_dsgd_forgetting_retrains_and_costs_it(fitted, data):
    dsgd, _, cost, after = fitted
    assert set(after.acc_local) == {"a", "c", "d"} and dsgd.forgotten == ("b",)
    assert cost.exact and cost.device_id == "b" and cost.seconds > 0
    assert cost.epochs_redone == BUDGET.rounds * BUDGET.local_epochs * 3
    per_message = message_bytes(build_model(ARCH, data.input_shape, data.num_classes))
    # Without b the ring a-b-c-d is the path a-d-c: 4 directed messages per round.
    assert cost.bytes_sent == 4 * BUDGET.rounds * per_message
    curve = dsgd.recovery_curve()
    assert [x for x, _ in curve] == [0.0, 1.0, 2.0, 3.0]
    assert curve[-1][1] == pytest.approx(after.mean_local) and curve[-1][1] > curve[0][1]


def test_dsgd_after_forgetting_is_bit_for_bit_the_never_joined_run(fitted):
    dsgd, _, _, _ = fitted
    check = exact_check(dsgd)  # fresh DSGD on the fleet without b, same seeds, serial or not
    assert check.weights_identical and check.max_weight_diff == 0.0
    assert check.max_output_diff == 0.0 and check.exact


def test_dsgd_same_seed_same_run_whatever_the_thread_count(data, fitted):
    dsgd, before, _, _ = fitted
    again = DSGD(arch=ARCH, workers=1)
    result = again.fit(data, IDS, ARCH, ring(IDS), BUDGET)
    assert result.acc_local == before.acc_local and result.acc_global == before.acc_global
    again.forget("b")
    assert compare_runs(again, dsgd).weights_identical
