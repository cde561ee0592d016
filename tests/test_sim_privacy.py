"""The membership attack has power where there is something to find, and none where there is not.

Power: a model overfit on a few samples (many epochs, no augmentation) must be caught (AUC high, CI
well above 0.5). Calibration: a model that never saw the members or the non-members must score
chance (CI around 0.5). Reference models see only a disjoint public set, as in the simulator.
"""

from __future__ import annotations

import numpy as np
import pytest

from hdus_edge.data import load_digits
from hdus_edge.ensemble.combine import softmax
from hdus_edge.learning.train import TrainConfig, predict_logits, torch_threads, train
from hdus_edge.models import build_model
from hdus_edge.sim.privacy import (
    MembershipAttack,
    auc,
    auc_with_ci,
    train_reference_models,
)

OVERFIT = TrainConfig(epochs=60, augment=False, seed=3)


@pytest.fixture(scope="module")
def split():
    """Members, non-members (same distribution), a public reference set and an unrelated set: disjoint."""
    pool = load_digits()
    order = np.random.default_rng(0).permutation(len(pool))
    parts = np.split(order[:760], [80, 160, 460])
    return [pool.subset(p) for p in parts]  # members, nonmembers, reference, unrelated


def _model_on(data, cfg=OVERFIT):
    model = build_model("resnet-8", data.input_shape, data.num_classes, seed=cfg.seed)
    with torch_threads(1):
        train(model, data, cfg)
    return lambda x: softmax(predict_logits(model, x))


@pytest.fixture(scope="module")
def attack(split):
    members, nonmembers, reference, _ = split
    refs = train_reference_models(reference, "resnet-8", TrainConfig(epochs=20, augment=False), count=2, seed=100)
    return MembershipAttack.calibrate(refs, members.x, members.y, nonmembers.x, nonmembers.y, seed=0)


def test_the_attack_catches_an_overfit_model(split, attack):
    # Prepare: trained on the members only, long enough to memorise them.
    target = _model_on(split[0])
    # Execute
    result = attack.run(target)
    # Assert
    assert result.auc >= 0.8 and result.ci_low > 0.65, result


def test_the_attack_is_at_chance_on_a_model_that_never_saw_the_members(split, attack):
    target = _model_on(split[3], TrainConfig(epochs=15, augment=False, seed=3))  # members and non-members both out
    result = attack.run(target)
    assert result.ci_low < 0.5 < result.ci_high and abs(result.auc - 0.5) < 0.1, result


def test_auc_counts_ties_as_half_and_the_bootstrap_is_seeded():
    assert auc(np.array([1.0, 2.0]), np.array([0.0, 0.5])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    m, n = np.arange(30.0), np.arange(10.0, 40.0)
    assert auc_with_ci(m, n, seed=4) == auc_with_ci(m, n, seed=4)
    low, high = auc_with_ci(m, n, seed=4).ci_low, auc_with_ci(m, n, seed=4).ci_high
    assert low < auc(m, n) < high
