"""Scale study: what HDUS costs at 10, 30 and 100 devices, with 4 and 8 neighbours each.

For each fleet size N the pool is split into N devices (the same number of samples each, so the
per-device work is constant), small models are trained and distilled, and exported. Then, for each
neighbour count k, N real agents (own state dir, keys, store and MQTT connection each; each its own
OS process running ``hdus-edge agent``, as on a device, unless ``processes=False`` puts them all in
this one) start on one broker over a random k-regular graph, and the study measures:

- time per phase: train + distil, export, seed propagation (first agent start until every device
  holds all its neighbours' seeds), and unlearn latency (signed order to the last signed receipt)
  for several devices forgotten one after another;
- messages and bytes through the broker, per topic kind, for propagation and for forgetting;
- memory per running agent (each agent process's RSS; in-process: this process's growth / N).

Then how each grows: the least-squares exponent of log(figure) on log(N) for each k (1 = linear),
and the ratio between k = 8 and k = 4 at each N. Training runs on this machine's cores, so its
time grows with N here, where on a real fleet each device trains on its own hardware (the table
gives the per-device figure too).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from hdus_edge.data import load_dataset, split_fleet
from hdus_edge.device.agent import AgentSettings
from hdus_edge.errors import ConfigError
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import DeviceSpec, LearningConfig, train_devices
from hdus_edge.learning.train import TrainConfig
from hdus_edge.sim.studies.common import Announce, growth_exponent, quiet
from hdus_edge.topology import build_graph

BROKERS = ("mosquitto", "amqtt")


@dataclass(frozen=True)
class ScaleStudyConfig:
    """Fleet sizes, neighbour counts, and the small models every device runs."""

    sizes: tuple[int, ...] = (10, 30, 100)
    degrees: tuple[int, ...] = (4, 8)
    main_arch: str = "mobilenet-s"
    seed_arch: str = "seed-cnn"
    dataset: str = "mnist"
    client_size: int = 80  # per device, train + local test
    reference_size: int = 500
    test_size: int = 500
    train_epochs: int = 3
    distill_epochs: int = 5
    forgets: int = 3  # devices forgotten one after another per case
    broker: str = "mosquitto"  # "mosquitto" or "amqtt" (started here), or a broker URL
    seed: int = 0
    workers: int = 0
    # One OS process per agent: in one process, figures at 100 agents on 2 cores measure the
    # interpreter lock as much as the protocol (lab/processes.py).
    processes: bool = True

    def validate(self) -> ScaleStudyConfig:
        """Raise ``ConfigError`` for settings that cannot run."""
        if not self.sizes or min(self.sizes) < 3:
            raise ConfigError("scale sizes must be at least 3 devices each")
        if not self.degrees or min(self.degrees) < 1:
            raise ConfigError("neighbour counts must be positive")
        if self.forgets < 1 or self.forgets > min(self.sizes) - 2:
            raise ConfigError(f"forgets must lie in [1, {min(self.sizes) - 2}] so 2 devices remain")
        if self.broker in ("", "embedded"):
            raise ConfigError("the scale study needs 'mosquitto', 'amqtt' or a broker URL")
        return self


@contextlib.contextmanager
def _broker(kind: str, root: Path) -> Iterator[str]:
    if kind == "mosquitto":
        from hdus_edge.transport.mosquitto import MosquittoProcess

        proc = MosquittoProcess(root / "mosquitto").start()
        try:
            yield proc.url
        finally:
            proc.stop()
    elif kind == "amqtt":
        from hdus_edge.transport.broker import EmbeddedBroker

        with EmbeddedBroker() as b:
            yield b.url
    else:
        yield kind


def run_scale_study(cfg: ScaleStudyConfig, announce: Announce = quiet) -> dict[str, Any]:
    """Run every (N, k) case; returns the rows and the growth figures."""
    from hdus_edge.sim.hdus_run import export_models

    cfg.validate()
    pool = load_dataset(cfg.dataset)
    learning = LearningConfig(train=TrainConfig(epochs=cfg.train_epochs, seed=cfg.seed),
                              distill=DistillConfig(epochs=cfg.distill_epochs, seed=cfg.seed))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdus-scale-") as tmp, _broker(cfg.broker, Path(tmp)) as url:
        for n in sorted(cfg.sizes):
            announce(f"scale: {n} devices, train + distil")
            data = split_fleet(pool, n, scheme="missing-class", client_size=cfg.client_size,
                               reference_size=cfg.reference_size, test_size=cfg.test_size, seed=cfg.seed)
            ids = [f"dev-{k:03d}" for k in range(n)]
            specs = [DeviceSpec(i, cfg.main_arch, cfg.seed_arch, seed=cfg.seed * 1000 + k) for k, i in enumerate(ids)]
            t0 = time.perf_counter()
            devices = train_devices(specs, dict(zip(ids, data.clients)), data.reference, learning,
                                    workers=cfg.workers or None)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            models = export_models(devices, data.input_shape, data.num_classes, data.reference_sha256)
            export_s = time.perf_counter() - t0
            del devices
            for k in sorted(cfg.degrees):
                degree = min(k, n - 1)
                announce(f"scale: {n} devices x {degree} neighbours, agents on the broker")
                row = _agents_case(url, Path(tmp) / f"n{n}-k{k}", models, ids, degree, cfg, data)
                rows.append({"devices": n, "degree": degree, "train_distill_s": train_s,
                             "train_distill_per_device_s": train_s / n, "export_s": export_s} | row)
    return {"settings": {"sizes": list(cfg.sizes), "degrees": list(cfg.degrees), "main_arch": cfg.main_arch,
                         "seed_arch": cfg.seed_arch, "dataset": cfg.dataset, "client_size": cfg.client_size,
                         "train_epochs": cfg.train_epochs, "distill_epochs": cfg.distill_epochs,
                         "forgets": cfg.forgets, "broker": cfg.broker, "seed": cfg.seed,
                         "processes": "one per device" if cfg.processes else "one",
                         "cpu_cores": psutil.cpu_count() or 0},
            "rows": rows, "growth": _growth(rows)}


def _agents_case(url: str, root: Path, models: dict[str, Any], ids: list[str], degree: int,
                 cfg: ScaleStudyConfig, data: Any) -> dict[str, Any]:
    """N agents on ``url`` over a random ``degree``-regular graph: propagation, then forgetting."""
    from hdus_edge.lab.agents import AgentFleet
    from hdus_edge.lab.outside import OutsideRequester
    from hdus_edge.lab.processes import ProcessFleet
    from hdus_edge.sim.hdus_run import TrafficMeter, fleet_config

    n = len(ids)
    kind = "complete" if degree >= n - 1 else "random-regular"
    graph = build_graph(kind, ids, degree=degree, seed=cfg.seed)
    name = f"scale{n}k{degree}s{cfg.seed}-{uuid.uuid4().hex[:8]}"  # unique: a shared broker keeps retained state
    fleet_cfg = fleet_config(name, url, data, LearningConfig())
    # Digests every 60 s: the default 30 s would add background traffic to a short measurement.
    settings = AgentSettings(probe_in_subprocess=False, digest_interval_s=60.0)
    process = psutil.Process()
    meter = TrafficMeter(url, name).start()
    try:
        # The admin's requester runs in its own process, as it would in a real fleet: in this one it
        # would wait for the GIL behind every agent (see lab/outside.py).
        fleet: AgentFleet | ProcessFleet
        if cfg.processes:
            fleet = ProcessFleet(root, url, fleet_cfg, models, graph, digest_interval_s=settings.digest_interval_s)
        else:
            fleet = AgentFleet(root, url, fleet_cfg, models, graph, settings)
        with fleet, OutsideRequester(fleet.admin.root) as requester:
            rss0 = process.memory_info().rss
            propagation = fleet.start(timeout=600)
            if isinstance(fleet, ProcessFleet):
                rss = fleet.rss_bytes()
                rss_per_agent = sum(rss.values()) / max(1, len(rss)) / 2**20
            else:
                rss_per_agent = (process.memory_info().rss - rss0) / n / 2**20
            meter.settle(seeds=n * degree)
            publish = meter.snapshot()
            latencies, receipts, holders = [], 0, 0
            for target in ids[-cfg.forgets:]:
                outcome = requester.unlearn(url, fleet_cfg.fleet.name, target, wait_s=60)
                holders += len(outcome["holders"])
                receipts += outcome["receipts"]
                if outcome["latency_s"] is not None:
                    latencies.append(outcome["latency_s"])
                fleet.retire([target])  # what AgentFleet.unlearn does after its request
                fleet.wait_converged(60)
            meter.settle(unlearn=cfg.forgets, receipts=receipts)
            total = meter.snapshot()
    finally:
        meter.close()
    forget_traffic = {k: {kind_: total[k].get(kind_, 0) - publish[k].get(kind_, 0) for kind_ in total[k]}
                      for k in ("messages", "bytes")}
    return {
        "propagation_s": propagation,
        "publish_messages": sum(publish["messages"].values()),
        "publish_bytes": sum(publish["bytes"].values()),
        "seed_messages": publish["messages"].get("seeds", 0),
        "publish_traffic": publish,
        "forget_traffic": forget_traffic,
        "forget_messages_per_unlearn": sum(forget_traffic["messages"].values()) / cfg.forgets,
        "forget_bytes_per_unlearn": sum(forget_traffic["bytes"].values()) / cfg.forgets,
        "unlearn_latency_s": latencies,
        "unlearn_p50_s": statistics.median(latencies) if latencies else None,
        "unlearn_max_s": max(latencies) if latencies else None,
        "unlearn_incomplete": cfg.forgets - len(latencies),
        "receipts": receipts, "holders": holders,
        "rss_per_agent_mib": rss_per_agent,
        "processes": "one per device" if cfg.processes else "one",
    }


def _growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponent of each figure in N per neighbour count, and the k=max / k=min ratio per N."""
    figures = ("propagation_s", "publish_messages", "publish_bytes", "unlearn_p50_s",
               "forget_messages_per_unlearn", "train_distill_s")
    by_degree: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_degree.setdefault(r["degree"], []).append(r)
    exponents = {str(k): {f: growth_exponent([r["devices"] for r in rs], [r[f] for r in rs]) for f in figures}
                 for k, rs in sorted(by_degree.items())}
    ratios = {}
    for n in sorted({r["devices"] for r in rows}):
        at_n = sorted((r for r in rows if r["devices"] == n), key=lambda r: r["degree"])
        lo, hi = at_n[0], at_n[-1]
        if hi["degree"] > lo["degree"]:
            ratios[str(n)] = {"degrees": [lo["degree"], hi["degree"]]} | {
                f: (hi[f] / lo[f] if lo[f] and hi[f] is not None else None) for f in figures if f != "train_distill_s"}
    return {"exponent_in_n": exponents, "degree_ratio": ratios}
