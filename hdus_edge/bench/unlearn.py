"""``hdus-edge bench unlearn``: how fast a fleet forgets, against retraining from scratch.

For each broker (embedded amqtt, Mosquitto) and fleet size (5, 20, 50 agents, each with its own state
dir and MQTT connection), it measures:

- seed propagation: from the first agent start until every device holds all its neighbours' seeds;
- unlearn latency: from publishing a signed order to the last holder's signed receipt, for several
  devices forgotten one after another (p50 / p95), seen by a requester in its own process;
- retraining: the measured time to train and distil one device, times the remaining devices (what
  DSGD/FedUnl-style forgetting redoes at the least); the ratio to the HDUS latency.

Fleets up to 20 devices use the complete graph (the paper's); larger ones a random 8-regular graph.
Every agent runs as its own OS process (``lab.processes``: ``hdus-edge agent``, as on a device), so
the figures measure the protocol, not one interpreter lock; ``in_process=True`` (``--in-process``)
runs the one-process ``AgentFleet`` instead, and ``both`` runs the two side by side, so the share of
a figure that is the interpreter lock shows. Each row says which: ``processes``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.device.agent import AgentSettings
from hdus_edge.lab.agents import AgentFleet, DeviceModels
from hdus_edge.lab.outside import OutsideRequester
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.lab.synthetic import REFERENCE_SHA, synthetic_models
from hdus_edge.topology import build_graph

logger = logging.getLogger(__name__)

DEFAULT_SIZES = (5, 20, 50)
# How each fleet runs: the row's ``processes`` value, and whether its agents share this process.
FLEET_MODES = {"one per device": False, "one": True}


def retrain_seconds_per_device() -> float:
    """Measured seconds to train one demo device (resnet-8 main + the default seed, default budgets) on digits."""
    from hdus_edge.data import load_digits, split_fleet
    from hdus_edge.learning.inprocess import DeviceSpec, LearningConfig, train_device

    data = split_fleet(load_digits(), 6, scheme="missing-class", reference_size=300, test_size=300, seed=0)
    start = time.perf_counter()
    train_device(DeviceSpec("r", "resnet-8", seed=0), data.clients[0], data.reference, LearningConfig())
    return time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_one(broker_url: str, n: int, forgets: int, root: Path, models: dict[str, DeviceModels],
              in_process: bool = False) -> dict[str, Any]:
    """Build an n-agent fleet on ``broker_url`` (each agent its own process unless ``in_process``),
    then forget ``forgets`` devices one after another."""
    ids = sorted(models)[:n]
    graph = build_graph("complete" if n <= 20 else "random-regular", ids, degree=min(8, n - 1), seed=0)
    fleet_cfg = FleetConfig(FleetSection(f"bench{n}", broker_url), DataSection((1, 8, 8), 10, "public", REFERENCE_SHA),
                            EnsembleSection(0.5, "probs"))
    chosen = {i: models[i] for i in ids}
    fleet: AgentFleet | ProcessFleet
    if in_process:
        fleet = AgentFleet(root, broker_url, fleet_cfg, chosen, graph,
                           AgentSettings(probe_in_subprocess=False, digest_interval_s=60.0))
    else:
        fleet = ProcessFleet(root, broker_url, fleet_cfg, chosen, graph, digest_interval_s=60.0)
    latencies: list[float] = []
    receipts = 0
    with fleet, OutsideRequester(fleet.admin.root) as requester:
        # Both fleets time the same span: the first agent launched -> every neighbour's seed held.
        propagation = fleet.start(timeout=600)
        for target in ids[-forgets:]:
            # The requester runs in its own process, as the admin's would: in the agents' process it
            # would wait for the GIL behind every agent and see receipts seconds late (lab/outside.py).
            outcome = requester.unlearn(broker_url, fleet_cfg.fleet.name, target, wait_s=30)
            if outcome["latency_s"] is not None:
                latencies.append(outcome["latency_s"])
            else:
                logger.warning("unlearn of %s: no receipt from %s within 30 s", target, ", ".join(outcome["missing"]))
            receipts += outcome["receipts"]
            fleet.retire([target])  # what AgentFleet.unlearn does after its request
            fleet.wait_converged(60)
    return {
        "devices": n, "degree": len(graph[ids[0]]), "processes": "one" if in_process else "one per device",
        "seed_propagation_s": propagation,
        "unlearn_p50_s": _percentile(latencies, 50), "unlearn_p95_s": _percentile(latencies, 95),
        "unlearn_samples": len(latencies), "incomplete": forgets - len(latencies), "receipts": receipts,
    }


def run_unlearn_bench(sizes: tuple[int, ...] = DEFAULT_SIZES, brokers: tuple[str, ...] = ("amqtt", "mosquitto"),
                      forgets: int = 8, progress: Any = None,
                      modes: tuple[str, ...] = ("one per device",)) -> dict[str, Any]:
    """Run every (broker, size, fleet mode) case side by side and return the figures.

    ``modes`` are ``FLEET_MODES`` keys: ``"one per device"`` (agent processes), ``"one"`` (this process).
    """
    from hdus_edge.transport.broker import EmbeddedBroker
    from hdus_edge.transport.mosquitto import MosquittoProcess

    if not modes or any(m not in FLEET_MODES for m in modes):
        raise ValueError(f"modes must be among {sorted(FLEET_MODES)}, got {modes!r}")
    models = synthetic_models(max(sizes))
    per_device = retrain_seconds_per_device()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdus-bench-unlearn-") as tmp:
        for broker in brokers:
            for n in sizes:
                for mode in modes:
                    if progress:
                        progress(f"{broker}, {n} devices, {'agents in one process' if FLEET_MODES[mode] else 'a process per agent'}")
                    root = Path(tmp) / f"{broker}-{n}-{'one' if FLEET_MODES[mode] else 'procs'}"
                    if broker == "amqtt":
                        with EmbeddedBroker() as b:
                            row = bench_one(b.url, n, min(forgets, n - 2), root, models, FLEET_MODES[mode])
                    else:
                        proc = MosquittoProcess(root / "mosquitto").start()
                        try:
                            row = bench_one(proc.url, n, min(forgets, n - 2), root, models, FLEET_MODES[mode])
                        finally:
                            proc.stop()
                    retrain = per_device * (n - 1)
                    row |= {"broker": broker, "retrain_fleet_s": retrain,
                            "speedup_vs_retrain": retrain / row["unlearn_p95_s"] if row["unlearn_samples"] else None}
                    rows.append(row)
    return {"retrain_one_device_s": per_device, "cores": os.cpu_count(), "rows": rows}
