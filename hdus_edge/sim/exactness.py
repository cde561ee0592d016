"""Exactness evidence: a fleet after forgetting vs the fleet in which the device never existed.

The never-joined fleet must be *trained from scratch* without the forgotten devices (same seeds,
same data for the others): comparing the very same trained models with and without s_j proves only
that s_j was deleted, and stays silent about a leak (a seed distilled from an ensemble that held
s_j). Two checks, both needed: (a) ``compare_models``: every remaining device's main model and seed
are bit-identical to the retrained ones, in weights and in ONNX bytes; (b) ``compare_outputs``:
the ensembles' outputs agree within ``EXACT_TOLERANCE`` with identical predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hdus_edge.learning.inprocess import InProcessFleet, TrainedDevice

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


@dataclass(frozen=True)
class ModelsCheck:
    """Check (a): every remaining device's models against the ones retrained in a never-joined fleet.

    ``devices[i]`` says, for device ``i``, whether its main model and seed are bit-identical in
    weights (every state-dict tensor) and in exported ONNX bytes (same fixed provenance).
    """

    devices: dict[str, dict[str, bool]]

    @property
    def identical(self) -> bool:
        """True when every remaining device's weights and ONNX bytes are bit-identical."""
        return bool(self.devices) and all(all(v.values()) for v in self.devices.values())

    @property
    def differing(self) -> list[str]:
        """``device/part`` of everything that is not bit-identical (e.g. ``dev-0/seed_weights``)."""
        return [f"{i}/{k}" for i, v in sorted(self.devices.items()) for k, ok in v.items() if not ok]


def same_weights(a: Any, b: Any) -> bool:
    """True when two torch modules hold the same state-dict keys, shapes, dtypes and values, bit for bit."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def compare_models(had: Mapping[str, TrainedDevice], retrained: Mapping[str, TrainedDevice],
                   had_onnx: Mapping[str, Any], retrained_onnx: Mapping[str, Any]) -> ModelsCheck:
    """Compare, for every device of ``retrained``, its main model and seed with what it had
    (``*_onnx``: ``DeviceModels``-like objects with ``main_onnx`` and ``seed_onnx`` bytes)."""
    rows = {}
    for i in sorted(retrained):
        a, b = had[i], retrained[i]
        rows[i] = {"main_weights": same_weights(a.main, b.main), "seed_weights": same_weights(a.seed_model, b.seed_model),
                   "main_onnx": had_onnx[i].main_onnx == retrained_onnx[i].main_onnx,
                   "seed_onnx": had_onnx[i].seed_onnx == retrained_onnx[i].seed_onnx}
    return ModelsCheck(rows)


def compare_outputs(after: Callable[[str, np.ndarray], np.ndarray], never_joined: Callable[[str, np.ndarray], np.ndarray],
                    devices: Sequence[str], x: np.ndarray) -> ExactnessResult:
    """Check (b): every device's ensemble output in two fleets (``predict(device, x)`` each) on ``x``."""
    worst, same = 0.0, True
    for i in sorted(devices):
        a, b = after(i, x), never_joined(i, x)
        worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
        same = same and bool(np.array_equal(a.argmax(1), b.argmax(1)))
    return ExactnessResult(worst, same, tuple(sorted(devices)))
