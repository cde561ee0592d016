"""Helpers for agent and fleet tests (not a test module): a small trained fleet, provisioned on disk.

Training is the slow part, so ``trained_models`` is computed once per test session and cached; every
test provisions fresh state directories and agents from those bytes.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.data import FleetData, load_digits, split_fleet
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    InProcessFleet,
    LearningConfig,
    build_fleet,
)
from hdus_edge.learning.train import TrainConfig
from hdus_edge.state import AdminDir, StateDir, init_fleet, provision_device
from hdus_edge.topology import complete

IDS = ("d0", "d1", "d2", "d3", "d4")
ARCHS = ("resnet-8", "mobilenet-s", "resnet-8", "mobilenet-s", "resnet-8")
CREATED = "2026-01-01T00:00:00Z"
LEARNING = LearningConfig(train=TrainConfig(epochs=2), distill=DistillConfig(epochs=3), lam=0.5, space="probs")


@dataclass(frozen=True)
class TrainedFleet:
    data: FleetData
    fleet: InProcessFleet
    main_onnx: dict[str, bytes]
    seed_onnx: dict[str, bytes]


@functools.lru_cache(maxsize=1)
def trained_models() -> TrainedFleet:
    """5 devices on digits, trained briefly, exported to ONNX (cached for the session)."""
    return _train(IDS)


@functools.lru_cache(maxsize=4)
def retrained_without(*gone: str) -> TrainedFleet:
    """The fleet in which ``gone`` never existed, trained from scratch: same data split, same
    per-device seeds, the others' own data (cached). Exactness is proved against this, never against
    the cached models of ``trained_models`` with a seed left out."""
    return _train(tuple(i for i in IDS if i not in gone))


def _train(ids: tuple[str, ...]) -> TrainedFleet:
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance

    data = split_fleet(load_digits(), len(IDS), scheme="missing-class", reference_size=300, test_size=300, seed=11)
    specs = [DeviceSpec(i, a, seed=k) for k, (i, a) in enumerate(zip(IDS, ARCHS)) if i in ids]
    clients = {i: data.clients[k] for k, i in enumerate(IDS) if i in ids}
    fleet = build_fleet(specs, clients, data.reference, complete(list(ids)), LEARNING, workers=1)
    main, seed = {}, {}
    for i, d in fleet.devices.items():
        main[i] = export_onnx(d.main, Provenance(i, "main", d.spec.main_arch, 1, (1, 8, 8), 10, CREATED))
        seed[i] = export_onnx(
            d.seed_model, Provenance(i, "seed", d.spec.seed_arch, 1, (1, 8, 8), 10, CREATED, data.reference_sha256)
        )
    return TrainedFleet(data, fleet, main, seed)


def fleet_config(name: str, broker: str, reference_sha256: str) -> FleetConfig:
    return FleetConfig(FleetSection(name, broker), DataSection((1, 8, 8), 10, "public", reference_sha256),
                       EnsembleSection(LEARNING.lam, LEARNING.space))


def provision(tmp: Path, broker: str, ids=IDS, neighbors=None, fleet_name: str = "t",
              models: TrainedFleet | None = None) -> tuple[AdminDir, dict[str, StateDir]]:
    """An admin dir and one state dir per device with ``models`` (default: the cached fleet's) installed."""
    tf = models or trained_models()
    admin = init_fleet(tmp / "admin", fleet_config(fleet_name, broker, tf.data.reference_sha256))
    states = {}
    for i in ids:
        nbrs = tuple(j for j in ids if j != i) if neighbors is None else tuple(neighbors[i])
        st = provision_device(admin, tmp / i, i, "generic-x86_64", neighbors=nbrs)
        (st.models / "main.onnx").write_bytes(tf.main_onnx[i])
        (st.models / "seed.onnx").write_bytes(tf.seed_onnx[i])
        (st.models / "seed.json").write_text('{"version": 1}')
        states[i] = st
    return admin, states


FAST = AgentSettings(lam=LEARNING.lam, space=LEARNING.space, probe_in_subprocess=False, digest_interval_s=0.5)


def start_agent(state: StateDir, broker: str, settings: AgentSettings = FAST) -> DeviceAgent:
    return DeviceAgent.from_state_dir(state, broker_url=broker, settings=settings).start()


def wait_members(agents, expected: dict[str, tuple[str, ...]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(agents[i].members() == expected[i] for i in expected):
            return
        time.sleep(0.05)
    got = {i: agents[i].members() for i in expected}
    raise AssertionError(f"members did not converge: expected {expected}, got {got}")


def complete_members(ids) -> dict[str, tuple[str, ...]]:
    return {i: tuple(j for j in sorted(ids) if j != i) for i in ids}


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())
