"""Reference-set study: how much does the data that seeds are distilled on matter?

HDUS distils each seed on a reference set that holds no client data. The paper uses a public split;
a fleet may have only a small one, or none (generated noise). The study keeps everything else fixed:
the fleet is split once with the largest public reference carved out, the main models are trained
once, and only the seeds are distilled again on each reference variant (a public subset of 250,
1,000 or 4,000 samples, stratified, or as many generated noise images). For each it reports the
seed's top-1 agreement with its main model (on the local and the global test set), the seed's own
accuracy, and the ensemble's accuracy. Distillation runs a fixed number of epochs, so a larger set
also costs proportionally more compute (reported).

Ensembles are evaluated in-process (torch); the simulator's tests show the ONNX agents give the
same outputs within 1e-6.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hdus_edge.data import (
    Dataset,
    FleetData,
    load_dataset,
    noise_reference,
    split_fleet,
    stratified_sample,
)
from hdus_edge.errors import ConfigError
from hdus_edge.lab.evaluate import mean
from hdus_edge.learning.distill import top1_agreement
from hdus_edge.learning.inprocess import (
    InProcessFleet,
    TrainedDevice,
    redistill_devices,
    train_devices,
)
from hdus_edge.learning.train import accuracy, predict_logits
from hdus_edge.sim.studies.common import Announce, quiet
from hdus_edge.topology import complete

PAPER_ARCHS = ("S", "M", "L", "L", "L", "L")


@dataclass(frozen=True)
class ReferenceStudyConfig:
    """The fleet and the reference variants to compare."""

    archs: tuple[str, ...] = PAPER_ARCHS
    dataset: str = "mnist"
    partition: str = "missing-class"
    client_size: int = 800  # train + local test per device
    test_size: int = 1000
    public_sizes: tuple[int, ...] = (250, 1000, 4000)
    noise_size: int = 0  # 0: as many as the largest public variant
    noise_kind: str = "mixed"
    train_epochs: int = 20
    distill_epochs: int = 30
    lam: float = 0.5
    seed: int = 0
    workers: int = 0

    def validate(self) -> ReferenceStudyConfig:
        """Raise ``ConfigError`` for settings that cannot run."""
        if not self.public_sizes or min(self.public_sizes) < 1:
            raise ConfigError("public_sizes needs at least one positive size")
        if len(self.archs) < 2:
            raise ConfigError("the study needs at least 2 devices")
        return self


def reference_variants(data: FleetData, cfg: ReferenceStudyConfig) -> dict[str, Dataset]:
    """The public subsets (stratified, seeded) and the noise set, by name."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for n in sorted(cfg.public_sizes):
        idx = stratified_sample(data.reference.y, n, rng) if n < len(data.reference) else np.arange(len(data.reference))
        out[f"public-{n}"] = data.reference.subset(np.sort(idx), name=f"public-{n}")
    n_noise = cfg.noise_size or max(cfg.public_sizes)
    out[f"noise-{n_noise}"] = noise_reference(data.input_shape, n_noise, cfg.seed, data.num_classes, kind=cfg.noise_kind)
    return out


def run_reference_study(cfg: ReferenceStudyConfig, announce: Announce = quiet) -> dict[str, Any]:
    """Run the study; returns its figures (see the module docstring)."""
    from hdus_edge.sim.config import SimConfig
    from hdus_edge.sim.runner import device_specs, learning_config

    cfg.validate()
    sim = SimConfig(archs=cfg.archs, dataset=cfg.dataset, partition=cfg.partition, client_size=cfg.client_size,
                    reference_size=max(cfg.public_sizes), test_size=cfg.test_size, lam=cfg.lam,
                    train_epochs=cfg.train_epochs, distill_epochs=cfg.distill_epochs, forget=(), methods=(),
                    seed=cfg.seed, workers=cfg.workers)
    announce("reference: data")
    data = split_fleet(load_dataset(cfg.dataset), len(cfg.archs), scheme=cfg.partition,
                       client_size=cfg.client_size or None, reference_size=max(cfg.public_sizes),
                       test_size=cfg.test_size, seed=cfg.seed)
    specs = device_specs(sim)
    learning = learning_config(sim)
    clients = {s.device_id: c for s, c in zip(specs, data.clients)}
    variants = reference_variants(data, cfg)
    workers = cfg.workers or None
    rows: dict[str, Any] = {}
    devices: list[TrainedDevice] | None = None
    for name, ref in variants.items():
        t0 = time.perf_counter()
        if devices is None:
            announce(f"reference: train the main models, distil on {name}")
            devices = train_devices(specs, clients, ref, learning, workers=workers)
        else:
            announce(f"reference: distil again on {name}")
            devices = redistill_devices(devices, clients, ref, learning, workers=workers)
        rows[name] = _evaluate(devices, data, cfg.lam) | {
            "kind": "noise" if name.startswith("noise") else "public", "samples": len(ref),
            "distill_steps": cfg.distill_epochs * -(-len(ref) // learning.distill.batch_size),
            "distill_seconds_total": sum(d.distill_report.seconds for d in devices),
            "phase_seconds": time.perf_counter() - t0}
    assert devices is not None
    main_alone = {"local": mean([accuracy(predict_logits(d.main, c.test.x), c.test.y) for d, c in zip(devices, data.clients)]),
                  "global": mean([accuracy(predict_logits(d.main, data.test.x), data.test.y) for d in devices])}
    return {
        "settings": {"archs": list(cfg.archs), "dataset": cfg.dataset, "partition": cfg.partition,
                     "client_size": cfg.client_size, "test_size": cfg.test_size, "lam": cfg.lam,
                     "train_epochs": cfg.train_epochs, "distill_epochs": cfg.distill_epochs,
                     "noise_kind": cfg.noise_kind, "seed": cfg.seed},
        "main_alone": main_alone,
        "variants": rows,
    }


def _evaluate(devices: list[TrainedDevice], data: FleetData, lam: float) -> dict[str, Any]:
    ids = [d.spec.device_id for d in devices]
    fleet = InProcessFleet(devices, complete(ids), lam, "probs")
    fleet.exchange_seeds()
    per = {}
    for d, c in zip(devices, data.clients):
        i = d.spec.device_id
        per[i] = {
            "agreement_local": d.distill_report.agreement,
            "agreement_global": top1_agreement(d.seed_model, d.main, data.test.x),
            "seed_acc_global": accuracy(predict_logits(d.seed_model, data.test.x), data.test.y),
            "ensemble_local": accuracy(fleet.ensemble_output(i, c.test.x), c.test.y),
            "ensemble_global": accuracy(fleet.ensemble_output(i, data.test.x), data.test.y),
        }
    keys = next(iter(per.values())).keys()
    return {"mean": {k: mean([p[k] for p in per.values()]) for k in keys}, "per_device": per}
