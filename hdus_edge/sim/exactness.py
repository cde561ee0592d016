"""Exactness evidence: a fleet after forgetting vs the fleet in which the device never existed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdus_edge.learning.inprocess import InProcessFleet

EXACT_TOLERANCE = 1e-6  # the product's promise: max abs difference of ensemble outputs


@dataclass(frozen=True)
class ExactnessResult:
    """Max abs difference of ensemble outputs and whether every argmax matched, over all devices."""

    max_abs_diff: float
    argmax_identical: bool
    devices: tuple[str, ...]

    @property
    def exact(self) -> bool:
        """True when outputs agree within ``EXACT_TOLERANCE`` and predictions are identical."""
        return self.argmax_identical and self.max_abs_diff <= EXACT_TOLERANCE


def compare_fleets(after: InProcessFleet, never_joined: InProcessFleet, x: np.ndarray) -> ExactnessResult:
    """Compare every device's ensemble output in two fleets on the same inputs ``x``."""
    if set(after.devices) != set(never_joined.devices):
        raise ValueError(f"fleets differ in members: {sorted(after.devices)} vs {sorted(never_joined.devices)}")
    worst, same = 0.0, True
    for device_id in sorted(after.devices):
        if after.members(device_id) != never_joined.members(device_id):
            return ExactnessResult(float("inf"), False, tuple(sorted(after.devices)))
        a = after.ensemble_output(device_id, x)
        b = never_joined.ensemble_output(device_id, x)
        worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
        same = same and bool(np.array_equal(a.argmax(1), b.argmax(1)))
    return ExactnessResult(worst, same, tuple(sorted(after.devices)))
