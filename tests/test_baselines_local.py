"""ISGD and SISA-A: local training only, forgetting deletes models, exact against a never-joined rerun."""

import pytest

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.errors import ConfigError
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import DeviceSpec, LearningConfig, train_devices
from hdus_edge.sim.baselines import (
    ISGD,
    BaselineBudget,
    FleetSetup,
    LocalModels,
    SisaA,
    compare_runs,
    device_seed,
    exact_check,
    message_bytes,
    train_local_models,
)
from hdus_edge.sim.baselines.local import local_train_config
from hdus_edge.topology import complete, ring

IDS = ["a", "b", "c", "d"]
ARCHS = ["seed-cnn", "seed-mlp", "seed-cnn", "seed-mlp"]  # heterogeneous, and fast
BUDGET = BaselineBudget(epochs=4, batch_size=16, lr=1e-2, seed=0)
CHANCE = 0.1


@pytest.fixture(scope="module")
def data():
    return split_fleet(
        load_digits(), 4, scheme="missing-class", client_size=150, reference_size=300, test_size=300, seed=3
    )


@pytest.fixture(scope="module")
def local(data):
    """Local models trained once (on 2 threads); runs below reuse them unless they test training."""
    return train_local_models(FleetSetup.build(data, IDS, ARCHS, complete(IDS)), BUDGET, workers=2)


def test_isgd_fits_and_forgetting_drops_the_device_for_free(data, local):
    # Prepare
    isgd = ISGD(local_models=local)
    before = isgd.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    # Execute
    cost = isgd.forget("b")
    after = isgd.evaluate()
    # Assert
    assert before.mean_local > 2 * CHANCE and before.mean_global > 2 * CHANCE
    assert before.train_bytes_sent == 0 and before.train_seconds == local.seconds
    assert set(after.acc_local) == set(after.acc_global) == {"a", "c", "d"}
    assert cost.exact and cost.epochs_redone == 0 and cost.bytes_sent == 0 and cost.seconds < 0.5
    assert cost.device_id == "b" and isgd.forgotten == ("b",)
    # Nobody else changed: local-only models never saw b.
    assert all(after.acc_local[d] == before.acc_local[d] for d in after.acc_local)
    assert isgd.recovery_curve() == [(0.0, after.mean_local)]


def test_sisa_holds_neighbours_full_models_and_counts_their_bytes(data, local):
    sisa = SisaA(local_models=local)
    result = sisa.fit(data, IDS, ARCHS, ring(IDS), BUDGET)
    assert sisa.holdings("a") == ("b", "d") and sisa.holdings("c") == ("b", "d")
    sizes = {d: message_bytes(local.models[d].model) for d in IDS}
    assert sizes["a"] != sizes["b"]  # heterogeneous models travel at their own size
    # Each device sends its full model to each of its two ring neighbours, once.
    assert result.train_bytes_sent == sum(2 * sizes[d] for d in IDS)
    isgd = ISGD(local_models=local)
    alone = isgd.fit(data, IDS, ARCHS, ring(IDS), BUDGET)
    assert result.mean_global > alone.mean_global  # the neighbours' models help on the classes a device lacks


def test_sisa_forgetting_equals_the_never_joined_fleet(data, local):
    # Prepare
    sisa = SisaA(local_models=local)
    sisa.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    untouched = SisaA(local_models=local)
    untouched.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    # Execute
    cost = sisa.forget("b")
    check = exact_check(sisa)  # trains a fresh run without b from scratch
    # Assert: b mattered before, and nothing of it is left.
    x = data.test.x
    assert max(float(abs(untouched.outputs(d, x) - sisa.outputs(d, x)).max()) for d in sisa.devices) > 1e-3
    assert cost.exact and cost.bytes_sent == 0 and cost.epochs_redone == 0
    assert sisa.holdings("a") == ("c", "d")
    assert check.max_output_diff <= 1e-6 and check.argmax_identical and check.exact
    assert check.weights_identical and check.devices == ("a", "c", "d")


def test_sisa_forgetting_two_devices_in_sequence(data, local):
    sisa = SisaA(local_models=local)
    sisa.fit(data, IDS, ARCHS, ring(IDS), BUDGET)
    sisa.forget("a")
    sisa.forget("b")
    assert sisa.devices == ("c", "d") and sisa.holdings("c") == ("d",) and sisa.forgotten == ("a", "b")
    assert exact_check(sisa).exact


def test_same_seed_same_models_whatever_the_thread_count(data, local):
    # Prepare: the fixture trained on 2 threads; this run trains serially.
    shared, serial = ISGD(local_models=local), ISGD(workers=1)
    # Execute
    a = shared.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    b = serial.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    # Assert
    assert a.acc_local == b.acc_local and a.acc_global == b.acc_global
    assert compare_runs(shared, serial).weights_identical


def test_another_seed_gives_other_models(data, local):
    a, b = SisaA(local_models=local), SisaA()
    a.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    b.fit(data, IDS, ARCHS, complete(IDS), BaselineBudget(epochs=4, batch_size=16, lr=1e-2, seed=1))
    check = compare_runs(a, b)
    assert not check.weights_identical and check.max_output_diff > 1e-3


def test_reusing_local_models_is_checked(data, local):
    with pytest.raises(ConfigError, match="budget"):
        ISGD(local_models=local).fit(data, IDS, ARCHS, complete(IDS), BaselineBudget(epochs=5))
    with pytest.raises(ConfigError, match="arch"):
        SisaA(local_models=local).fit(data, IDS, "seed-cnn", complete(IDS), BUDGET)


def test_isgd_models_are_the_hdus_main_models(data, local):
    # Prepare: an HDUS fleet whose devices use the baselines' per-device seeds and the same training.
    specs = [DeviceSpec(d, arch, seed=device_seed(BUDGET.seed, d)) for d, arch in zip(IDS, ARCHS)]
    cfg = LearningConfig(train=local_train_config(BUDGET, "unused"), distill=DistillConfig(epochs=1))
    devices = train_devices(specs, {d: data.clients[k] for k, d in enumerate(IDS)}, data.reference, cfg, workers=1)
    # Execute: ISGD on the fleet's main models, and ISGD trained by the baselines.
    from_fleet = ISGD(local_models=LocalModels.from_fleet(devices, seconds=1.5))
    result = from_fleet.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    trained = ISGD(local_models=local)
    trained.fit(data, IDS, ARCHS, complete(IDS), BUDGET)
    # Assert: the same models bit for bit, so ISGD is exactly "HDUS with lam = 0".
    assert result.train_seconds == 1.5
    assert compare_runs(from_fleet, trained).weights_identical
