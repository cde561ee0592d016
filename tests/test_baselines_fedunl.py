"""FedUnl: FedAvg; forgetting by subtracting stored updates (approximate) or by retraining (exact)."""

import pytest

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.models import build_model
from hdus_edge.sim.baselines import (
    BaselineBudget,
    FedUnl,
    FedUnlRetrain,
    compare_runs,
    exact_check,
    message_bytes,
)
from hdus_edge.topology import complete

IDS = ["a", "b", "c", "d"]
BUDGET = BaselineBudget(rounds=3, local_epochs=2, batch_size=16, lr=2e-2, seed=0)
ARCH = "seed-cnn"
CHANCE = 0.1


@pytest.fixture(scope="module")
def data():
    return split_fleet(
        load_digits(), 4, scheme="missing-class", client_size=150, reference_size=300, test_size=300, seed=3
    )


@pytest.fixture(scope="module")
def runs(data):
    """One FedAvg training, then its retrain twin; 'c' forgotten by both (each on its own copy)."""
    approx = FedUnl(arch=ARCH, repair_rounds=2, workers=2)
    before = approx.fit(data, IDS, ARCH, complete(IDS), BUDGET)
    exact = approx.retrain_twin()
    twin_before = exact.evaluate()
    return approx, exact, before, twin_before, approx.forget("c"), exact.forget("c")


def test_fedavg_learns_and_counts_both_directions(runs, data):
    approx, exact, before, twin_before, _, _ = runs
    assert before.mean_local > 2 * CHANCE and before.mean_global > 2 * CHANCE
    # One training serves both methods.
    assert exact.name == "fedunl-retrain" and twin_before.acc_local == before.acc_local
    assert twin_before.acc_global == before.acc_global and twin_before.train_bytes_sent == before.train_bytes_sent
    per_message = message_bytes(build_model(ARCH, data.input_shape, data.num_classes))
    assert before.train_bytes_sent == BUDGET.rounds * 2 * 4 * per_message  # down and up, 4 clients


def test_fedunl_subtracts_and_repairs_and_says_it_is_approximate(runs, data):
    approx, _, _, _, cost, _ = runs
    assert not cost.exact and not approx.exact_forgetting
    assert set(approx.evaluate().acc_local) == {"a", "b", "d"}
    assert cost.epochs_redone == 2 * BUDGET.local_epochs * 3  # 2 repair rounds, 3 clients
    per_message = message_bytes(build_model(ARCH, data.input_shape, data.num_classes))
    assert cost.bytes_sent == 2 * 2 * 3 * per_message
    # The coordinator kept nothing of c: 3 training rounds + 2 repairs, 3 clients each.
    assert len(approx.history) == 5 and all(set(r.updates) == {"a", "b", "d"} for r in approx.history)
    assert [x for x, _ in approx.recovery_curve()] == [0.0, 1.0, 2.0]
    check = exact_check(approx)
    assert not check.weights_identical and check.max_weight_diff > 0  # not the never-joined model


def test_fedunl_retrain_is_bit_for_bit_the_never_joined_run(runs):
    _, exact, _, _, _, cost = runs
    assert isinstance(exact, FedUnlRetrain) and cost.exact
    assert cost.epochs_redone == BUDGET.rounds * BUDGET.local_epochs * 3 and cost.bytes_sent > 0
    assert exact.history == []  # retraining needs no stored updates
    curve = exact.recovery_curve()
    assert len(curve) == BUDGET.rounds + 1 and curve[-1][1] == pytest.approx(exact.evaluate().mean_local)
    check = exact_check(exact)
    assert check.weights_identical and check.max_output_diff == 0.0 and check.exact


def test_fedunl_same_seed_same_run(runs, data):
    approx, _, before, _, _, _ = runs
    again = FedUnl(arch=ARCH, repair_rounds=2, workers=1)
    result = again.fit(data, IDS, ARCH, complete(IDS), BUDGET)
    assert result.acc_local == before.acc_local and result.acc_global == before.acc_global
    again.forget("c")
    assert compare_runs(again, approx).weights_identical


def test_retrain_twin_only_before_forgetting(runs):
    approx = runs[0]
    with pytest.raises(ValueError, match="forgotten nothing"):
        approx.retrain_twin()
