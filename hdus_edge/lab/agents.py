"""A fleet of real agents in one process: one state dir, key pair and MQTT connection per device.

The simulator and the benchmarks use it to run HDUS exactly as devices do (signed seeds over a real
broker, safe loading, the store, receipts); only the process is shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdus_edge.config import FleetConfig
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.files import write_json
from hdus_edge.state import AdminDir, StateDir, init_fleet, provision_device
from hdus_edge.topology import Graph
from hdus_edge.unlearn.request import UnlearnOutcome, request_unlearn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceModels:
    """What one simulated device runs: its exported ONNX main model and seed."""

    main_onnx: bytes
    seed_onnx: bytes
    profile: str = "generic-x86_64"


def provision_lab_fleet(
    root: Path, fleet: FleetConfig, models: Mapping[str, DeviceModels], graph: Graph
) -> tuple[AdminDir, dict[str, StateDir]]:
    """An admin dir under ``root/admin`` and one exported device state dir per model under ``root/devices``."""
    admin = init_fleet(Path(root) / "admin", fleet)
    states: dict[str, StateDir] = {}
    for device_id in sorted(models):
        m = models[device_id]
        state = provision_device(admin, Path(root) / "devices" / device_id, device_id, m.profile,
                                 neighbors=tuple(sorted(graph.get(device_id, ()))))
        (state.models / "main.onnx").write_bytes(m.main_onnx)
        (state.models / "seed.onnx").write_bytes(m.seed_onnx)
        write_json(state.seed_info_file, {"version": 1})
        states[device_id] = state
    return admin, states


def order_unlearn(admin: AdminDir, broker_url: str, fleet: str, target: str, wait_s: float = 30.0) -> UnlearnOutcome:
    """The admin orders ``target`` forgotten from this process; returns the collected receipts."""
    key = admin.key()
    return request_unlearn(broker_url=broker_url, fleet=fleet, admin_key=key.public_key, signer=key,
                           issuer="admin", target=target, epoch=0, wait_s=wait_s, settle_s=0.2)


def order_unlearn_together(admin: AdminDir, broker_url: str, fleet: str, targets: list[str],
                           wait_s: float = 30.0) -> list[UnlearnOutcome]:
    """Every one of ``targets`` ordered forgotten at the same moment (a requester thread each);
    outcomes in ``targets`` order once all have their receipts."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(lambda t: order_unlearn(admin, broker_url, fleet, t, wait_s), targets))


class AgentFleet:
    """Provision, start, forget and stop N agents on one broker."""

    def __init__(
        self,
        root: Path,
        broker_url: str,
        fleet: FleetConfig,
        models: Mapping[str, DeviceModels],
        graph: Graph,
        settings: AgentSettings,
    ) -> None:
        self.root = Path(root)
        self.broker_url = broker_url
        self.fleet = fleet
        self.graph = graph
        self.settings = settings
        self.admin, self.states = provision_lab_fleet(self.root, fleet, models, graph)
        self.agents: dict[str, DeviceAgent] = {}

    def start(self, timeout: float = 120.0) -> float:
        """Start every agent (in parallel) and wait until each holds all its neighbours' seeds.

        Returns the seconds from the first start to convergence (seed propagation).
        """
        begin = time.monotonic()

        def start_one(device_id: str) -> DeviceAgent:
            return DeviceAgent.from_state_dir(self.states[device_id], broker_url=self.broker_url,
                                              settings=self.settings).start()

        # One at a time: amqtt 0.12 can fail a connect while another client subscribes
        # ("dictionary changed size during iteration"); an agent starts in ~0.1 s anyway.
        for device_id in sorted(self.states):
            try:
                self.agents[device_id] = start_one(device_id)
            except Exception:
                self.stop()
                raise
        self.wait_converged(timeout)
        return time.monotonic() - begin

    def expected_members(self) -> dict[str, tuple[str, ...]]:
        """What each running agent should hold: its neighbours that are still in the fleet."""
        alive = set(self.agents)
        return {i: tuple(sorted(set(self.graph.get(i, ())) & alive)) for i in self.agents}

    def wait_converged(self, timeout: float) -> None:
        """Block until every agent's ensemble holds exactly its live neighbours' seeds."""
        expected = self.expected_members()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.agents[i].members() == expected[i] for i in expected):
                return
            time.sleep(0.01)
        bad = {i: self.agents[i].members() for i in expected if self.agents[i].members() != expected[i]}
        raise TimeoutError(f"fleet did not converge in {timeout:g} s: {len(bad)} devices differ, e.g. {list(bad.items())[:2]}")

    def wait_settled(self, timeout: float) -> None:
        """Block until the fleet has converged and every agent predicts with the fused graph of its
        current member set (agents fuse in the background after each change; until then they run
        per-member sessions, equal only to 1e-6). Comparisons of outputs start from here."""
        deadline = time.monotonic() + timeout
        self.wait_converged(timeout)
        for device_id, agent in sorted(self.agents.items()):
            runtime = agent.runtime
            # With no seeds the output is the main model's alone; no fuse is scheduled for that.
            if runtime.strategy == "fused" and agent.members() and not runtime.wait_fused(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{device_id}: no fused graph for members {agent.members()} after {timeout:g} s")
        if self.expected_members() != {i: a.members() for i, a in self.agents.items()}:
            raise TimeoutError("fleet membership changed while waiting for fused graphs")

    def unlearn(self, target: str, wait_s: float = 30.0) -> UnlearnOutcome:
        """The admin orders ``target`` forgotten; returns the collected receipts."""
        outcome = order_unlearn(self.admin, self.broker_url, self.fleet.fleet.name, target, wait_s)
        self.retire([target])
        return outcome

    def retire(self, targets: list[str]) -> None:
        """Stop the agents of forgotten ``targets`` and take them out of the graph."""
        for target in targets:
            agent = self.agents.pop(target, None)
            if agent is not None:
                agent.stop()
        gone = set(targets)
        self.graph = {i: frozenset(n - gone) for i, n in self.graph.items() if i not in gone}

    def unlearn_together(self, targets: list[str], wait_s: float = 30.0) -> list[UnlearnOutcome]:
        """The admin orders every one of ``targets`` forgotten at the same moment (one requester
        thread each); returns their outcomes in ``targets`` order once all have their receipts."""
        outcomes = order_unlearn_together(self.admin, self.broker_url, self.fleet.fleet.name, targets, wait_s)
        self.retire(targets)
        return outcomes

    def running(self) -> list[str]:
        """The ids of the running agents, sorted."""
        return sorted(self.agents)

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Device ``device_id``'s ensemble output, once its fused graph has caught up with its members.

        Until then the agent answers with per-member sessions, equal to 1e-6 but not bit for bit, so
        measurements (the membership-inference AUCs above all) would depend on timing.
        """
        self.agents[device_id].runtime.wait_fused()
        return self.agents[device_id].predict(x)

    def stop(self) -> None:
        """Stop every agent."""
        for agent in self.agents.values():
            try:
                agent.stop()
            except Exception:  # stopping is best effort; one failure must not leak the others
                logger.exception("stopping agent %s failed", agent.device_id)
        self.agents.clear()

    def __enter__(self) -> AgentFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
