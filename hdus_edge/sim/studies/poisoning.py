"""Poisoning study: one device trains on label-flipped data and publishes the seed distilled from
that main model. How much do its neighbours lose, and does forgetting it give everything back?

The fleet runs twice from the same data and per-device seeds: once honest, once with the poisoned
device. The poisoned fleet runs as real agents on a real broker; the admin then forgets the
poisoned device with a signed order, and the fleet is compared with one that never had it. Because
every honest device's main model and seed are bit-identical in both runs, the only difference a
neighbour sees is the poisoned seed, and forgetting removes exactly that (HDUS keeps no state that
mixes neighbours). What forgetting cannot give back is the honest contribution the device would
have made: that is the gap between "clean" and "after".

The attack flips every training label y to C - 1 - y ("reverse"), or to (y + 1) mod C ("shift").
The combine weight of one seed is lam / K for K seeds, so the damage shrinks with the number of
neighbours and with a smaller lam: the study sweeps lam in-process to show it.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.data import ClientData, Dataset, FleetData
from hdus_edge.errors import ConfigError
from hdus_edge.lab.evaluate import mean
from hdus_edge.learning.inprocess import InProcessFleet, TrainedDevice, train_devices
from hdus_edge.learning.train import accuracy
from hdus_edge.sim.config import DEMO_ARCHS, SimConfig
from hdus_edge.sim.studies.common import Announce, ensemble_probs, quiet
from hdus_edge.topology import build_graph, without

logger = logging.getLogger(__name__)

FLIPS = ("reverse", "shift")


@dataclass(frozen=True)
class PoisoningConfig:
    """The fleet, which device is poisoned and how, and the lam values to sweep in-process."""

    archs: tuple[str, ...] = DEMO_ARCHS
    dataset: str = "digits"
    topology: str = "complete"
    degree: int = 4
    reference_size: int = 300
    test_size: int = 300
    train_epochs: int = 20
    distill_epochs: int = 30
    lam: float = 0.5
    poisoned: str = "dev-0"
    flip: str = "reverse"
    lam_sweep: tuple[float, ...] = (0.25, 0.5, 0.75)
    # (topology, neighbours per device): the poisoned seed's weight is lam / neighbours.
    topology_sweep: tuple[tuple[str, int], ...] = (("complete", 0), ("random-regular", 3), ("ring", 2))
    broker: str = ""  # empty: an embedded amqtt broker
    seed: int = 0
    workers: int = 0

    def sim_config(self) -> SimConfig:
        """The equivalent simulator settings (HDUS only; the baselines are not part of the study)."""
        return SimConfig(archs=self.archs, dataset=self.dataset, topology=self.topology, degree=self.degree,
                         reference_size=self.reference_size, test_size=self.test_size, lam=self.lam,
                         train_epochs=self.train_epochs, distill_epochs=self.distill_epochs, forget=(self.poisoned,),
                         methods=(), broker=self.broker, seed=self.seed, workers=self.workers).validate()

    def validate(self) -> PoisoningConfig:
        """Raise ``ConfigError`` for settings that cannot run."""
        if self.flip not in FLIPS:
            raise ConfigError(f"unknown label flip {self.flip!r}", hint=f"use one of {', '.join(FLIPS)}")
        self.sim_config()
        return self


def flip_labels(ds: Dataset, kind: str) -> Dataset:
    """``ds`` with every label flipped: ``reverse`` y -> C-1-y, ``shift`` y -> (y+1) mod C."""
    c = ds.num_classes
    y = (c - 1 - ds.y) if kind == "reverse" else (ds.y + 1) % c
    return Dataset(x=ds.x, y=y.astype(ds.y.dtype), num_classes=c, name=f"{ds.name}-flipped-{kind}")


def run_poisoning(cfg: PoisoningConfig, announce: Announce = quiet) -> dict[str, Any]:
    """Run the study; returns its figures (see the module docstring)."""
    from hdus_edge.sim.hdus_run import run_hdus
    from hdus_edge.sim.runner import (
        broker_for,
        build_data,
        build_topology,
        device_specs,
        learning_config,
    )

    sim = cfg.validate().sim_config()
    announce("poisoning: data and training (honest fleet + the poisoned device)")
    data = build_data(sim)
    specs = device_specs(sim)
    graph = build_topology(sim)
    learning = learning_config(sim)
    ids = [s.device_id for s in specs]
    p = ids.index(cfg.poisoned)
    poisoned_clients = list(data.clients)
    poisoned_clients[p] = ClientData(train=flip_labels(data.clients[p].train, cfg.flip), test=data.clients[p].test)
    workers = cfg.workers or None
    honest = train_devices(specs, dict(zip(ids, data.clients)), data.reference, learning, workers=workers)
    bad = train_devices([specs[p]], {cfg.poisoned: poisoned_clients[p]}, data.reference, learning, workers=1)[0]
    poisoned_devices = [bad if d.spec.device_id == cfg.poisoned else d for d in honest]
    poisoned_data = replace(data, clients=poisoned_clients)

    announce("poisoning: the poisoned fleet on real agents, then forget the poisoned device")
    with tempfile.TemporaryDirectory(prefix="hdus-poison-") as tmp, broker_for(sim) as url:
        run = run_hdus(data=poisoned_data, specs=specs, graph=graph, learning=learning, broker_url=url,
                       root=Path(tmp), forget=(cfg.poisoned,), name=f"poison{cfg.seed}-{uuid.uuid4().hex[:8]}", mia_seed=cfg.seed,
                       devices=poisoned_devices)
    neighbours = sorted(i for i in graph if cfg.poisoned in graph[i])
    clean = _in_process(honest, graph, cfg.lam, data, ids)
    clean_fleet, bad_fleet = _fleet(honest, graph, cfg.lam), _fleet(poisoned_devices, graph, cfg.lam)
    rows = {}
    for i in neighbours:
        rows[i] = {"clean": clean[i], "poisoned": run.before[i], "after_forget": run.after[i],
                   "attack_success_clean": _attack_success(ensemble_probs(clean_fleet, i, data.test.x), data, cfg.flip),
                   "attack_success_poisoned": _attack_success(ensemble_probs(bad_fleet, i, data.test.x), data, cfg.flip)}
    bad_seed, honest_seed = _seed_logits(bad, data.test.x), _seed_logits(honest[p], data.test.x)
    summary = {k: {"local": mean([r[k]["local"] for r in rows.values()]),
                   "global": mean([r[k]["global"] for r in rows.values()])}
               for k in ("clean", "poisoned", "after_forget")}
    sweep = [_neighbour_means(cfg, honest, poisoned_devices, graph, data, ids, lam) | {"lam": lam}
             for lam in cfg.lam_sweep]
    topologies = []
    for kind, degree in cfg.topology_sweep:
        g = build_graph(kind, ids, degree=min(degree, len(ids) - 1), seed=cfg.seed)
        topologies.append(_neighbour_means(cfg, honest, poisoned_devices, g, data, ids, cfg.lam) | {
            "topology": kind, "seeds_per_neighbour": mean([len(g[i]) for i in g if cfg.poisoned in g[i]])})
    return {
        "settings": {"archs": list(cfg.archs), "dataset": cfg.dataset, "topology": cfg.topology,
                     "poisoned": cfg.poisoned, "flip": cfg.flip, "lam": cfg.lam, "neighbours": neighbours,
                     "seeds_per_neighbour": mean([len(graph[i]) for i in neighbours]),
                     "train_epochs": cfg.train_epochs, "distill_epochs": cfg.distill_epochs, "seed": cfg.seed},
        "poisoned_seed_global_acc": accuracy(bad_seed, data.test.y),
        "honest_seed_global_acc": accuracy(honest_seed, data.test.y),
        "seed_attack_success": {"honest": _attack_success(honest_seed, data, cfg.flip),
                                "poisoned": _attack_success(bad_seed, data, cfg.flip)},
        "per_neighbour": rows,
        "mean": summary,
        "drop_global": summary["clean"]["global"] - summary["poisoned"]["global"],
        "drop_local": summary["clean"]["local"] - summary["poisoned"]["local"],
        "recovered_global": summary["after_forget"]["global"] - summary["poisoned"]["global"],
        "residual_global": summary["clean"]["global"] - summary["after_forget"]["global"],
        "attack_success": {"clean": mean([r["attack_success_clean"] for r in rows.values()]),
                           "poisoned": mean([r["attack_success_poisoned"] for r in rows.values()])},
        "forget": {"max_abs_diff_vs_never_joined": run.max_abs_diff, "argmax_identical": run.argmax_identical,
                   "receipts": sum(len(o.receipts) for o in run.outcomes),
                   "holders": sum(len(o.holders) for o in run.outcomes),
                   "latency_s": run.unlearn_latency_s, "evidence_problems": run.evidence_problems},
        "lam_sweep": sweep,
        "topology_sweep": topologies,
    }


def _seed_logits(device: TrainedDevice, x: np.ndarray) -> np.ndarray:
    from hdus_edge.learning.train import predict_logits

    return predict_logits(device.seed_model, x)


def _fleet(devices: list[TrainedDevice], graph: Any, lam: float) -> InProcessFleet:
    fleet = InProcessFleet(devices, graph, lam, "probs")
    fleet.exchange_seeds()
    return fleet


def _attack_success(outputs: np.ndarray, data: FleetData, flip: str) -> float:
    """Fraction of global test samples (whose label the flip changes) predicted as the flipped label."""
    target = flip_labels(data.test, flip).y
    moved = target != data.test.y
    return float((outputs.argmax(1)[moved] == target[moved]).mean()) if moved.any() else 0.0


def _in_process(devices: list[TrainedDevice], graph: Any, lam: float, data: FleetData,
                ids: list[str]) -> dict[str, dict[str, float]]:
    fleet = _fleet(devices, graph, lam)
    out = {}
    for k, i in enumerate(ids):
        out[i] = {"local": accuracy(fleet.ensemble_output(i, data.clients[k].test.x), data.clients[k].test.y),
                  "global": accuracy(fleet.ensemble_output(i, data.test.x), data.test.y)}
    return out


def _neighbour_means(cfg: PoisoningConfig, honest: list[TrainedDevice], poisoned: list[TrainedDevice], graph: Any,
                     data: FleetData, ids: list[str], lam: float) -> dict[str, float]:
    """Mean global accuracy of the poisoned device's neighbours in ``graph``: honest, poisoned, forgotten."""
    neighbours = [i for i in ids if cfg.poisoned in graph[i]]
    clean = _in_process(honest, graph, lam, data, ids)
    bad = _in_process(poisoned, graph, lam, data, ids)
    rest = [d for d in honest if d.spec.device_id != cfg.poisoned]
    rest_ids = [i for i in ids if i != cfg.poisoned]
    forgotten = _in_process(rest, without(graph, cfg.poisoned), lam, _drop_client(data, ids, cfg.poisoned), rest_ids)
    return {"clean": mean([clean[i]["global"] for i in neighbours]),
            "poisoned": mean([bad[i]["global"] for i in neighbours]),
            "after_forget": mean([forgotten[i]["global"] for i in neighbours])}


def _drop_client(data: FleetData, ids: list[str], device_id: str) -> FleetData:
    return replace(data, clients=[c for i, c in zip(ids, data.clients) if i != device_id])
