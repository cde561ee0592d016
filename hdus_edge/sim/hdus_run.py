"""HDUS in the simulator: train and distil (torch, worker processes), export to ONNX, then run every
device as a real agent on a real broker, forget devices with signed orders, and prove exactness
against a fleet that never had them, trained from scratch and run as agents too
(``hdus_edge.sim.exactness``); the calibrated membership attack (``hdus_edge.sim.privacy``) runs on
the forgotten device's data before, after, and in that fleet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.data import FleetData
from hdus_edge.device.agent import AgentSettings
from hdus_edge.lab.agents import AgentFleet, DeviceModels
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    FleetProgress,
    LearningConfig,
    TrainedDevice,
    train_devices,
)
from hdus_edge.learning.train import accuracy
from hdus_edge.protocol.topics import Topics
from hdus_edge.sim.exactness import (
    EXACT_TOLERANCE,
    ModelsCheck,
    compare_models,
    compare_outputs,
)
from hdus_edge.sim.privacy import (
    AttackResult,
    MembershipAttack,
    loss_attack,
    train_reference_models,
)
from hdus_edge.topology import Graph, without
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.request import UnlearnOutcome, verify_evidence

logger = logging.getLogger(__name__)
CREATED_AT = "2026-01-01T00:00:00Z"  # fixed, so exported bytes are reproducible run to run


class TrafficMeter:
    """Counts every message and byte that crosses the broker under a fleet's topic root."""

    def __init__(self, broker_url: str, fleet: str) -> None:
        self.topics = Topics(fleet)
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._transport = MqttTransport(broker_url, f"{fleet}.traffic-meter", handler=self._count, clean_session=True)
        self._transport.subscribe([f"{self.topics.root}/#"])

    def _count(self, topic: str, payload: bytes, retained: bool) -> None:
        kind = topic[len(self.topics.root) + 1 :].split("/", 1)[0]
        with self._lock:
            self.messages[kind] += 1
            self.bytes[kind] += len(payload)
            self._last = time.monotonic()

    def settle(self, quiet_s: float = 1.0, max_s: float = 30.0, **at_least: int) -> None:
        """Wait until ``at_least`` counts are reached (e.g. ``unlearn=3``) and no message came for
        ``quiet_s``, at most ``max_s``: in a busy process the meter's thread runs behind the broker."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            with self._lock:
                reached = all(self.messages[k] >= n for k, n in at_least.items())
                quiet = time.monotonic() - self._last >= quiet_s
            if reached and quiet:
                return
            time.sleep(0.05)
        logger.warning("traffic meter: still counting after %.0f s", max_s)

    def start(self) -> TrafficMeter:
        self._transport.connect()
        return self

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Messages and bytes so far, by topic kind (seeds, unlearn, receipts, ...)."""
        with self._lock:
            return {"messages": dict(self.messages), "bytes": dict(self.bytes)}

    def close(self) -> None:
        self._transport.close()


@dataclass
class HdusPhaseTimes:
    """Wall seconds per phase."""

    train_distill: float = 0.0
    export: float = 0.0
    publish: float = 0.0
    forget: list[float] = field(default_factory=list)
    never_joined: float = 0.0  # retraining and exporting the never-joined fleet


def export_models(devices: Sequence[TrainedDevice], input_shape: tuple[int, int, int], classes: int,
                  reference_sha256: str) -> dict[str, DeviceModels]:
    """Every device's main model and seed as ONNX with provenance."""
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance

    out = {}
    for d in devices:
        i = d.spec.device_id
        main = export_onnx(d.main, Provenance(i, "main", d.spec.main_arch, 1, input_shape, classes, CREATED_AT))
        seed = export_onnx(d.seed_model, Provenance(i, "seed", d.spec.seed_arch, 1, input_shape, classes, CREATED_AT,
                                                    reference_sha256))
        out[i] = DeviceModels(main, seed)
    return out


def probs(fleet: AgentFleet | ProcessFleet, device_id: str, x: np.ndarray) -> np.ndarray:
    """A device's ensemble output as probabilities (whatever the combine space)."""
    from hdus_edge.ensemble.combine import softmax

    out = fleet.predict(device_id, x)
    return out if fleet.fleet.ensemble.space == "probs" else softmax(out)


def evaluate_agents(fleet: AgentFleet | ProcessFleet, data: FleetData, index: dict[str, int]) -> dict[str, dict[str, float]]:
    """Local-test and global-test accuracy of every running agent's ensemble."""
    out = {}
    for i in fleet.running():
        local = data.clients[index[i]].test
        out[i] = {"local": accuracy(fleet.predict(i, local.x), local.y),
                  "global": accuracy(fleet.predict(i, data.test.x), data.test.y)}
    return out


def fleet_config(name: str, broker_url: str, data: FleetData, learning: LearningConfig) -> FleetConfig:
    """The fleet config the simulated devices share."""
    return FleetConfig(FleetSection(name, broker_url),
                       DataSection(data.input_shape, data.num_classes, data.reference_kind if data.reference_kind in ("public", "noise") else "public",
                                   data.reference_sha256),
                       EnsembleSection(learning.lam, learning.space))


@dataclass
class HdusSim:
    """Everything the HDUS part of a simulation produced.

    ``max_abs_diff`` / ``argmax_identical``: check (b), the running agents' ensembles after
    forgetting against the agents of a never-joined fleet *retrained from scratch*;
    ``models_check``: check (a), every remaining device's models against the retrained ones.
    """

    devices: list[TrainedDevice]
    models: dict[str, DeviceModels]
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    outcomes: list[UnlearnOutcome]
    evidence_problems: list[str]
    max_abs_diff: float
    argmax_identical: bool
    traffic: dict[str, Any]
    times: HdusPhaseTimes
    mia: dict[str, Any]
    unlearn_latency_s: list[float]
    main_acc: dict[str, dict[str, float]]
    models_check: ModelsCheck = field(default_factory=lambda: ModelsCheck({}))
    never_devices: list[TrainedDevice] = field(default_factory=list)
    admin_public_key: str = ""  # hex: what an auditor needs to verify the evidence offline

    @property
    def exact_models(self) -> bool:
        """Check (a): every remaining model bit-identical to its retrained twin."""
        return self.models_check.identical

    @property
    def exact(self) -> bool:
        """Both checks: bit-identical models and equal ensemble outputs (<= 1e-6, same argmax)."""
        return self.exact_models and self.argmax_identical and self.max_abs_diff <= EXACT_TOLERANCE


MIA_REFERENCE_MODELS = 4  # reference models per target: enough to calibrate, cheap on the reference set


def run_hdus(
    *,
    data: FleetData,
    specs: Sequence[DeviceSpec],
    graph: Graph,
    learning: LearningConfig,
    broker_url: str,
    root: Path,
    forget: Sequence[str],
    progress: FleetProgress | None = None,
    workers: int | None = None,
    name: str = "sim",
    mia_seed: int = 0,
    devices: Sequence[TrainedDevice] | None = None,
    forget_at_once: bool = False,
    membership_inference: bool = True,
    processes: bool = False,
) -> HdusSim:
    """Train, export, run agents, forget ``forget``, and prove the result against a never-joined fleet.

    The never-joined fleet is trained from scratch here (``train_devices`` on the remaining specs,
    their own data, the same seeds), exported, and run as agents on the same broker; see
    ``hdus_edge.sim.exactness`` for the two checks. ``devices``: already trained devices (in
    ``specs`` order) to use instead of training the first fleet (the never-joined one is always
    retrained). ``forget_at_once``: publish every order at the same moment.
    ``membership_inference``: run the calibrated attack (trains reference models; studies that do
    not report it switch it off).
    ``processes``: both fleets run each agent as its own OS process (``hdus-edge agent``, as on a
    device), and every output compared comes from the agent's own inference API, bit for bit as it
    computed it (the cheapest sound way out of a process: no torch or copy of the ensemble here);
    the requester stays in this process, which then runs no agent.
    """
    times = HdusPhaseTimes()
    index = {s.device_id: k for k, s in enumerate(specs)}
    clients = {s.device_id: data.clients[k] for k, s in enumerate(specs)}
    t0 = time.perf_counter()
    if devices is None:
        devices = train_devices(specs, clients, data.reference, learning, progress, workers)
        times.train_distill = time.perf_counter() - t0
    devices = list(devices)
    by_id = {d.spec.device_id: d for d in devices}
    main_acc = {d.spec.device_id: _main_accuracy(d, clients[d.spec.device_id].test, data) for d in devices}
    t0 = time.perf_counter()
    models = export_models(devices, data.input_shape, data.num_classes, data.reference_sha256)
    times.export = time.perf_counter() - t0
    attacks = ({t: _attack_for(t, by_id[t], clients[t], data, learning, mia_seed) for t in forget}
               if membership_inference else {})
    cfg = fleet_config(name, broker_url, data, learning)
    settings = AgentSettings(lam=learning.lam, space=learning.space, probe_in_subprocess=False, digest_interval_s=30.0)
    meter = TrafficMeter(broker_url, name).start()
    outcomes: list[UnlearnOutcome] = []
    mia: dict[str, Any] = {t: {"target_main": attacks[t].run(_torch_probs(by_id[t].main)).to_json(),
                               "target_seed": attacks[t].run(_torch_probs(by_id[t].seed_model)).to_json()}
                           for t in attacks}
    try:
        with _fleet(processes, root / "hdus", broker_url, cfg, models, graph, settings) as fleet:
            times.publish = fleet.start()
            fleet.wait_settled(60)
            before = evaluate_agents(fleet, data, index)
            holders = {t: [i for i in sorted(graph) if t in graph[i] and i not in forget] for t in forget}
            mia_before = {t: {i: attacks[t].run(_agent_probs(fleet, i)) for i in holders[t]} for t in attacks}
            if forget_at_once and len(forget) > 1:
                t0 = time.perf_counter()
                outcomes.extend(fleet.unlearn_together(list(forget)))
                fleet.wait_converged(60)
                times.forget.append(time.perf_counter() - t0)
            else:
                for target in forget:
                    t0 = time.perf_counter()
                    outcomes.append(fleet.unlearn(target))
                    fleet.wait_converged(60)
                    times.forget.append(time.perf_counter() - t0)
            fleet.wait_settled(60)
            after = evaluate_agents(fleet, data, index)
            meter.settle(unlearn=len(outcomes), receipts=sum(len(o.receipts) for o in outcomes))
            traffic = meter.snapshot()
            remaining = fleet.running()
            t0 = time.perf_counter()
            never_specs = [s for s in specs if s.device_id in remaining]
            never_devices = train_devices(never_specs, {i: clients[i] for i in remaining}, data.reference, learning,
                                          None, workers)
            never_models = export_models(never_devices, data.input_shape, data.num_classes, data.reference_sha256)
            times.never_joined = time.perf_counter() - t0
            models_check = compare_models(by_id, {d.spec.device_id: d for d in never_devices}, models, never_models)
            never_graph = graph
            for target in forget:
                never_graph = without(never_graph, target)
            never_cfg = fleet_config(f"{name}-never", broker_url, data, learning)
            with _fleet(processes, root / "never", broker_url, never_cfg, never_models, never_graph, settings) as never:
                never.start()
                never.wait_settled(60)
                outputs = compare_outputs(fleet.predict, never.predict, remaining, data.test.x)
                for t in attacks:
                    rows = {"before": mia_before[t],
                            "after": {i: attacks[t].run(_agent_probs(fleet, i)) for i in holders[t]},
                            "never_joined": {i: attacks[t].run(_agent_probs(never, i)) for i in holders[t]}}
                    mia[t] |= {k: _mean_result(v) for k, v in rows.items()}
                    mia[t] |= {"members": len(attacks[t].members_y), "nonmembers": len(attacks[t].nonmembers_y),
                               "reference_models": MIA_REFERENCE_MODELS,
                               # What there is to find: the main model's fit on members vs held-out.
                               "target_train_accuracy": by_id[t].train_report.train_accuracy,
                               "target_heldout_accuracy": main_acc[t]["local"],
                               "loss_attack_target_main": _loss_baseline(by_id[t], clients[t], mia_seed)}
    finally:
        meter.close()
    admin_pub = fleet.admin.key().public_key
    problems = [p for o in outcomes for p in verify_evidence(o.evidence(), admin_pub, name)]
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
    if not models_check.identical:
        logger.warning("not exact: models differ from the never-joined fleet's: %s", ", ".join(models_check.differing))
    return HdusSim(devices, models, before, after, outcomes, problems, outputs.max_abs_diff, outputs.argmax_identical,
                   traffic, times, mia, latencies, main_acc, models_check, never_devices, admin_pub.hex())


def _fleet(processes: bool, root: Path, broker_url: str, cfg: FleetConfig, models: dict[str, DeviceModels],
           graph: Graph, settings: AgentSettings) -> AgentFleet | ProcessFleet:
    """The sim's fleet: agents in this process, or each in its own (serving its inference API)."""
    if processes:
        # Ensemble settings come from the fleet config (lam, space) in each state dir, as on a device.
        return ProcessFleet(root, broker_url, cfg, models, graph, digest_interval_s=settings.digest_interval_s,
                            http=True)
    return AgentFleet(root, broker_url, cfg, models, graph, settings)


def _main_accuracy(device: TrainedDevice, local: Any, data: FleetData) -> dict[str, float]:
    """The main model alone (= ISGD), on the local and the global test set."""
    from hdus_edge.learning.train import predict_logits

    return {"local": accuracy(predict_logits(device.main, local.x), local.y),
            "global": accuracy(predict_logits(device.main, data.test.x), data.test.y)}


def _torch_probs(model: Any) -> Any:
    from hdus_edge.ensemble.combine import softmax
    from hdus_edge.learning.train import predict_logits

    return lambda x: softmax(predict_logits(model, x))


def _agent_probs(fleet: AgentFleet | ProcessFleet, device_id: str) -> Any:
    return lambda x: probs(fleet, device_id, x)


def _attack_for(target: str, device: TrainedDevice, client: Any, data: FleetData, learning: LearningConfig,
                seed: int) -> MembershipAttack:
    """The calibrated attack on ``target``: members its training split, non-members its own held-out
    split; reference models of its main architecture, trained on the public reference set only."""
    refs = train_reference_models(data.reference, device.spec.main_arch, learning.train, MIA_REFERENCE_MODELS,
                                  seed=10_000 + 100 * seed)
    return MembershipAttack.calibrate(refs, client.train.x, client.train.y, client.test.x, client.test.y, seed=seed)


def _loss_baseline(device: TrainedDevice, client: Any, seed: int) -> dict[str, float]:
    """The raw loss-threshold attack on the target's main model, to show what calibration adds."""
    p = _torch_probs(device.main)
    return loss_attack(p(client.train.x), client.train.y, p(client.test.x), client.test.y, seed=seed).to_json()


def _mean_result(rows: dict[str, AttackResult]) -> dict[str, Any]:
    """Mean AUC and CI bounds over former neighbours, and each neighbour's own figures."""
    values = list(rows.values())
    if not values:
        return {"auc": None, "ci_low": None, "ci_high": None, "per_neighbour": {}}
    return {"auc": float(np.mean([r.auc for r in values])), "ci_low": float(np.mean([r.ci_low for r in values])),
            "ci_high": float(np.mean([r.ci_high for r in values])),
            "per_neighbour": {i: r.to_json() for i, r in rows.items()}}
