"""Accuracy of every device in an in-process fleet, on its local test split and the global test set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hdus_edge.data import FleetData
from hdus_edge.learning.inprocess import InProcessFleet
from hdus_edge.learning.train import accuracy


@dataclass(frozen=True)
class DeviceAccuracy:
    """One device's accuracies (NaN where a split is empty)."""

    device_id: str
    arch: str
    main_local: float
    main_global: float
    ensemble_local: float
    ensemble_global: float
    members: tuple[str, ...]


def evaluate_fleet(fleet: InProcessFleet, data: FleetData, client_index: dict[str, int]) -> dict[str, DeviceAccuracy]:
    """Evaluate main model alone and ensemble for every device still in ``fleet``."""
    out: dict[str, DeviceAccuracy] = {}
    for device_id, device in sorted(fleet.devices.items()):
        local = data.clients[client_index[device_id]].test
        out[device_id] = DeviceAccuracy(
            device_id=device_id,
            arch=device.spec.main_arch,
            main_local=accuracy(fleet.main_output(device_id, local.x), local.y),
            main_global=accuracy(fleet.main_output(device_id, data.test.x), data.test.y),
            ensemble_local=accuracy(fleet.ensemble_output(device_id, local.x), local.y),
            ensemble_global=accuracy(fleet.ensemble_output(device_id, data.test.x), data.test.y),
            members=fleet.members(device_id),
        )
    return out


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, NaN for no values."""
    return float(sum(values) / len(values)) if values else float("nan")
