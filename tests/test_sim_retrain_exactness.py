"""The exactness check behind the simulator's report can fail: plant a leak, see "not exact".

``run_hdus`` proves forgetting against a never-joined fleet that it trains from scratch with the same
trainer. A leaky trainer (a device's seed distilled from its ensemble, which holds the forgotten
device's seed; or a main model taught by its neighbours' seeds) makes the retrained models differ
from the ones the fleet had, and both checks say so. Comparing the same trained models with and
without the seed, as the simulator once did, reports 0.0 for the very same leak.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from hdus_edge.learning.distill import DistillConfig, distill
from hdus_edge.learning.inprocess import InProcessFleet, train_devices
from hdus_edge.sim import hdus_run
from hdus_edge.sim.config import SimConfig
from hdus_edge.sim.exactness import compare_fleets
from hdus_edge.sim.runner import (
    broker_for,
    build_data,
    build_topology,
    device_specs,
    learning_config,
)
from hdus_edge.topology import complete

SMALL = SimConfig(archs=("resnet-8", "resnet-8", "resnet-8"), train_epochs=1, distill_epochs=2, reference_size=100,
                  test_size=100, client_size=60, forget=("dev-2",), methods=(), workers=1)


class _Mixture(nn.Module):
    """log of the mean of members' probabilities: a teacher that carries every member's knowledge."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.stack([m(x).softmax(1) for m in self.members]).mean(0) + 1e-9)


def _leaky(kind: str):
    """A trainer with a planted leak at the first device (test-only hook for ``run_hdus``)."""

    def train(specs, clients, reference, cfg, progress=None, workers=None):
        devices = train_devices(specs, clients, reference, cfg, progress, workers=1)
        first, others = devices[0], devices[1:]
        if kind == "seed-from-ensemble":
            seed = _fresh_copy(first.seed_model)
            distill(_Mixture([first.main, *[d.seed_model for d in others]]), seed, reference, cfg.distill)
            devices[0] = replace(first, seed_model=seed)
        else:  # "main-taught-by-neighbours"
            main = _fresh_copy(first.main)
            distill(_Mixture([d.seed_model for d in others]), main, reference, DistillConfig(epochs=1))
            devices[0] = replace(first, main=main)
        return devices

    return train


def _fresh_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _run(tmp_path, processes: bool = False):
    data = build_data(SMALL)
    with broker_for(SMALL) as url:
        return hdus_run.run_hdus(data=data, specs=device_specs(SMALL), graph=build_topology(SMALL),
                                 learning=learning_config(SMALL), broker_url=url, root=tmp_path, forget=SMALL.forget,
                                 workers=1, name=f"leak-{tmp_path.name[-8:]}", membership_inference=False,
                                 processes=processes)


def test_agent_processes_prove_exactness_through_their_inference_api(tmp_path):
    # Execute: both fleets (the one that forgets, the never-joined one) as agent processes.
    sim = _run(tmp_path, processes=True)
    # Assert: outputs compared come from the agents' APIs; forgetting is exact, evidence complete.
    assert sim.exact and sim.exact_models and sim.max_abs_diff <= 1e-6, (sim.max_abs_diff, sim.models_check)
    assert all(o.complete for o in sim.outcomes) and sim.evidence_problems == []
    assert sorted(sim.after) == ["dev-0", "dev-1"]
    assert list((tmp_path / "hdus" / "devices").glob("*/agent.ready"))  # they ran as processes


def test_a_planted_leak_is_reported_not_exact_by_agent_processes(tmp_path, monkeypatch):
    # The same leak as below, seen through the agent processes' inference APIs (check (b)).
    monkeypatch.setattr(hdus_run, "train_devices", _leaky("seed-from-ensemble"))
    sim = _run(tmp_path, processes=True)
    assert not sim.exact and sim.max_abs_diff > 1e-6


@pytest.mark.parametrize("kind, part", [("seed-from-ensemble", "seed"), ("main-taught-by-neighbours", "main")])
def test_a_planted_leak_is_reported_not_exact(tmp_path, monkeypatch, kind, part):
    # Prepare: the leak is in the trainer, so the fleet and its never-joined twin both get it.
    monkeypatch.setattr(hdus_run, "train_devices", _leaky(kind))
    # Execute
    sim = _run(tmp_path)
    # Assert: check (a) names the leaking model, check (b) sees different outputs, the verdict is no.
    assert not sim.exact and not sim.exact_models
    assert f"dev-0/{part}_weights" in sim.models_check.differing
    assert f"dev-0/{part}_onnx" in sim.models_check.differing
    assert all(all(v.values()) for i, v in sim.models_check.devices.items() if i != "dev-0")
    assert sim.max_abs_diff > 1e-6
    # The deletion itself worked (receipts, evidence): only a retrain shows the leak.
    assert all(o.complete for o in sim.outcomes) and sim.evidence_problems == []
    # What the old check compared: the very same trained models with and without dev-2's seed. It
    # passes the leak.
    after = InProcessFleet(sim.devices, complete(["dev-0", "dev-1", "dev-2"]), 0.5, "probs")
    after.exchange_seeds()
    after.unlearn("dev-2")
    same_models = InProcessFleet([d for d in sim.devices if d.spec.device_id != "dev-2"],
                                 complete(["dev-0", "dev-1"]), 0.5, "probs")
    same_models.exchange_seeds()
    assert compare_fleets(after, same_models, build_data(SMALL).test.x).exact


@pytest.fixture(scope="module")
def three_devices():
    data, specs = build_data(SMALL), device_specs(SMALL)
    return data, specs, train_devices(specs, {s.device_id: data.clients[k] for k, s in enumerate(specs)},
                                      data.reference, learning_config(SMALL), workers=1)


@pytest.mark.parametrize("method", ["isgd", "sisa-a"])
def test_isgd_and_sisa_exactness_is_checked_against_retrained_mains(method, three_devices):
    # Prepare: three devices trained once; forget dev-2; the "retrained" mains are copies of the same
    # models, then one of them is perturbed (what a leak in training would leave).
    from hdus_edge.sim.baselines import LocalModels, make_baseline, retrained_check

    data, specs, devices = three_devices
    run = make_baseline(method, local_models=LocalModels.from_fleet(devices, 0.0))
    run.fit(data, SMALL.device_ids, tuple(s.main_arch for s in specs), build_topology(SMALL), _budget())
    run.forget("dev-2")
    retrained = [_fresh_copy_device(d) for d in devices if d.spec.device_id != "dev-2"]
    # Execute / Assert: identical mains -> exact; one changed weight -> not exact.
    assert retrained_check(run, retrained).exact
    with torch.no_grad():
        next(retrained[0].main.parameters()).add_(0.05)
    check = retrained_check(run, retrained)
    assert not check.exact and not check.weights_identical


def _fresh_copy_device(device):
    return replace(device, main=_fresh_copy(device.main))


def _budget():
    from hdus_edge.sim.baselines import BaselineBudget

    return BaselineBudget(epochs=1, rounds=1, local_epochs=1, batch_size=16, lr=1e-2, seed=0)
