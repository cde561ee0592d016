"""The in-process demo: digits, 6 devices of mixed sizes, complete graph, one device forgotten.

It trains the fleet, evaluates every device, forgets one device, evaluates again, then rebuilds
from scratch the fleet in which that device never existed and compares outputs (the exactness
proof a user can watch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hdus_edge.data import FleetData, load_digits, split_fleet
from hdus_edge.distill import DistillConfig
from hdus_edge.fleet import DeviceSpec, FleetProgress, InProcessFleet, LearningConfig, build_fleet
from hdus_edge.models import resolve_arch
from hdus_edge.sim.evaluate import DeviceAccuracy, evaluate_fleet
from hdus_edge.sim.exactness import ExactnessResult, compare_fleets
from hdus_edge.topology import complete, without
from hdus_edge.train import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    """Defaults that finish in about a minute on 2 cores."""

    # Mixed sizes AND families: the heterogeneity HDUS is for; the fast members keep it near a minute.
    archs: tuple[str, ...] = ("mobilenet-s", "resnet-8", "mobilenet-m", "resnet-20", "mobilenet-l", "resnet-8")
    forget: int = 5  # index of the device to forget
    seed: int = 0
    learning: LearningConfig = field(
        default_factory=lambda: LearningConfig(train=TrainConfig(epochs=20), distill=DistillConfig(epochs=30))
    )


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured."""

    before: dict[str, DeviceAccuracy]
    after: dict[str, DeviceAccuracy]
    unlearned: str
    exactness: ExactnessResult
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The demo's JSON report (keys documented in the README)."""
        devices = []
        for device_id, b in self.before.items():
            a = self.after.get(device_id)
            devices.append(
                {
                    "id": device_id,
                    "arch": b.arch,
                    "main_acc": b.main_local,
                    "ensemble_acc": b.ensemble_local,
                    "main_global_acc": b.main_global,
                    "ensemble_global_acc": b.ensemble_global,
                    "after_unlearn_acc": None if a is None else a.ensemble_local,
                    "after_unlearn_global_acc": None if a is None else a.ensemble_global,
                }
            )
        return {
            "devices": devices,
            "unlearned": self.unlearned,
            "exact": self.exactness.exact,
            "max_abs_diff": self.exactness.max_abs_diff,
            "seconds": self.seconds,
        }


def demo_specs(cfg: DemoConfig) -> list[DeviceSpec]:
    """Device specs: ids dev-0.., main arch from the size list, one seed per device."""
    return [
        DeviceSpec(f"dev-{k}", resolve_arch(arch), seed=cfg.seed * 1000 + k) for k, arch in enumerate(cfg.archs)
    ]


def run_demo(cfg: DemoConfig = DemoConfig(), progress: FleetProgress | None = None) -> DemoResult:
    """Train, evaluate, forget one device, evaluate, and prove exactness against a never-joined fleet."""
    start = time.perf_counter()
    data: FleetData = split_fleet(
        load_digits(), len(cfg.archs), scheme="missing-class", reference_size=300, test_size=300, seed=cfg.seed
    )
    specs = demo_specs(cfg)
    ids = [s.device_id for s in specs]
    clients = {s.device_id: data.clients[k] for k, s in enumerate(specs)}
    index = {s.device_id: k for k, s in enumerate(specs)}
    fleet = build_fleet(specs, clients, data.reference, complete(ids), cfg.learning, progress)
    before = evaluate_fleet(fleet, data, index)
    target = ids[cfg.forget]
    fleet.unlearn(target)
    after = evaluate_fleet(fleet, data, index)
    never = _never_joined(specs, target, clients, data, cfg, progress)
    exactness = compare_fleets(fleet, never, data.test.x)
    return DemoResult(before, after, target, exactness, time.perf_counter() - start)


def _never_joined(
    specs: list[DeviceSpec],
    target: str,
    clients: dict,
    data: FleetData,
    cfg: DemoConfig,
    progress: FleetProgress | None,
) -> InProcessFleet:
    remaining = [s for s in specs if s.device_id != target]
    graph = without(complete([s.device_id for s in specs]), target)
    return build_fleet(remaining, clients, data.reference, graph, cfg.learning, progress)
