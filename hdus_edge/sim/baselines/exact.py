"""Exactness checks for baselines: a run after forgetting vs a fresh run the devices never joined.

After ``forget`` a baseline's ``setup`` is the fleet without the forgotten devices, so the
never-joined run is ``baseline.fresh().fit(*that setup*, same budget)``. Exact methods must match it:
SISA-A and ISGD on every output (their models are the same bit for bit), DSGD and FedUnl-retrain on
every weight (retraining from scratch with the same seeds is deterministic). For FedUnl the check
measures how far the approximate method lands from the exact answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hdus_edge.learning.inprocess import TrainedDevice
from hdus_edge.sim.baselines.base import Baseline, BaselineProgress
from hdus_edge.sim.exactness import EXACT_TOLERANCE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExactCheck:
    """How a run after forgetting compares with the never-joined run, over every remaining device."""

    method: str
    devices: tuple[str, ...]
    max_output_diff: float  # max abs difference of class probabilities on the inputs checked
    argmax_identical: bool
    weights_identical: bool  # every model state equal bit for bit (same names, shapes, values)
    max_weight_diff: float

    @property
    def exact(self) -> bool:
        """True when outputs agree within ``EXACT_TOLERANCE`` and every prediction is the same."""
        return self.argmax_identical and self.max_output_diff <= EXACT_TOLERANCE


def never_joined(after: Baseline, progress: BaselineProgress | None = None) -> Baseline:
    """A fresh run of the same method and settings, fitted on ``after``'s current (reduced) fleet."""
    setup = after.setup
    fresh = after.fresh()
    fresh.fit(setup.data, setup.device_ids, setup.archs, setup.graph, after.budget, progress)
    return fresh


def compare_runs(after: Baseline, reference: Baseline, x: np.ndarray | None = None) -> ExactCheck:
    """Compare outputs (on ``x``, default the global test set) and model states of two runs."""
    if after.devices != reference.devices:
        raise ValueError(f"runs differ in devices: {after.devices} vs {reference.devices}")
    x = after.setup.data.test.x if x is None else x
    worst, same = 0.0, True
    for d in after.devices:
        a, b = after.outputs(d, x), reference.outputs(d, x)
        worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
        same = same and bool(np.array_equal(a.argmax(1), b.argmax(1)))
    identical, weight_diff = _compare_states(after.model_states(), reference.model_states())
    return ExactCheck(after.name, after.devices, worst, same, identical, weight_diff)


def exact_check(after: Baseline, x: np.ndarray | None = None, progress: BaselineProgress | None = None) -> ExactCheck:
    """Fit the never-joined run of ``after`` and compare (costs one more training run)."""
    result = compare_runs(after, never_joined(after, progress), x)
    logger.info("%s: exact check over %d devices: max output diff %.3g, weights identical %s",
                after.name, len(result.devices), result.max_output_diff, result.weights_identical)
    return result


def _compare_states(
    a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]
) -> tuple[bool, float]:
    if a.keys() != b.keys() or any(a[m].keys() != b[m].keys() for m in a):
        return False, float("inf")
    identical, worst = True, 0.0
    for m in a:
        for k, t in a[m].items():
            u = b[m][k]
            if t.shape != u.shape or t.dtype != u.dtype:
                return False, float("inf")
            identical = identical and bool(torch.equal(t, u))
            if t.numel():
                worst = max(worst, float((t.double() - u.double()).abs().max()))
    return identical, worst


def retrained_check(after: Baseline, never_joined_devices: Sequence[TrainedDevice], x: np.ndarray | None = None) -> ExactCheck:
    """ISGD or SISA-A after forgetting against the same method built from main models that were
    trained from scratch without the forgotten devices (the HDUS never-joined fleet's, which are
    these methods' models by definition), fitted on ``after``'s current fleet, and compared."""
    from hdus_edge.sim.baselines.local import LocallyTrained, LocalModels

    if not isinstance(after, LocallyTrained):
        raise TypeError(f"{after.name} does not hold per-device main models; use exact_check")
    reference = type(after)(local_models=LocalModels.from_fleet(never_joined_devices, 0.0))
    setup = after.setup
    reference.fit(setup.data, setup.device_ids, setup.archs, setup.graph, after.budget)
    return compare_runs(after, reference, x)
