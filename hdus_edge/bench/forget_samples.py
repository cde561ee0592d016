"""``hdus-edge bench forget-samples``: forgetting samples on one device vs retraining the fleet.

For each shard count K (``train.shards``) a fleet of real agents (state dirs, keys, an embedded
broker) is trained, distilled and exported; device 0 then forgets 1 and then 100 of its samples
(``forget_samples_step``), and the time runs from the request to the last neighbour's signed swap
receipt. Every row is checked exact by training a device from scratch on the reduced data and
comparing weights and ONNX bit for bit. Against it: retraining the whole fleet, which is what
retraining-based unlearning does for any forget request: DSGD and FedUnl (FedAvg retrained from
scratch, the exact variant) fitted on the same data with the same per-device epochs, measured in
the same run. Accuracy is device 0's ensemble on its local test split, before and after.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.data import Dataset, FleetData, load_dataset, save_npz, split_fleet

logger = logging.getLogger(__name__)

PROFILE = "raspberry-pi-4"  # mobilenet-m main, fp32: a mid-size device


@dataclass(frozen=True)
class ForgetSamplesBenchConfig:
    """What the bench runs; ``quick()`` and ``full()`` are the two presets."""

    data: str = "mnist"
    devices: int = 6
    client_size: int | None = 1000
    reference_size: int = 2000
    test_size: int = 2000
    epochs: int = 20
    distill_epochs: int = 30
    samples: tuple[int, ...] = (1, 100)
    shards: tuple[int, ...] = (1, 4, 8)
    baselines: tuple[str, ...] = ("dsgd", "fedunl-retrain")
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> ForgetSamplesBenchConfig:
        """Digits, 4 devices, few epochs: every row in a few minutes on two cores."""
        return cls(data="digits", devices=4, client_size=None, reference_size=300, test_size=300, epochs=20,
                   distill_epochs=10, seed=seed)

    @classmethod
    def full(cls, seed: int = 0) -> ForgetSamplesBenchConfig:
        """MNIST, 6 devices of 1,000 samples (the paper's N)."""
        return cls(seed=seed)


def _fleet_data(cfg: ForgetSamplesBenchConfig) -> FleetData:
    return split_fleet(load_dataset(cfg.data), cfg.devices, scheme="missing-class", client_size=cfg.client_size,
                       reference_size=cfg.reference_size, test_size=cfg.test_size, seed=cfg.seed)


def _build(root: Path, name: str, broker: str, data: FleetData, train_files: dict[str, Path], cfg: ForgetSamplesBenchConfig,
           shards: int, only: tuple[str, ...] | None = None) -> tuple[Any, dict[str, Any], float]:
    """Provision and train a fleet; returns (admin, states, seconds per device to train + distil)."""
    from hdus_edge.admin.setup import ReferenceSet, create_fleet, provision
    from hdus_edge.data import dataset_sha256
    from hdus_edge.learning.steps import distill_step, export_step, train_step

    ref = ReferenceSet(data.reference, "public", "bench", dataset_sha256(data.reference))
    admin, _ = create_fleet(root / name / "admin", name, broker, ref)
    ids = tuple(sorted(train_files))
    states, spent = {}, []
    for i in only or ids:
        state = provision(admin, root / name / i, i, PROFILE, neighbors=tuple(j for j in ids if j != i)).state
        began = time.perf_counter()
        train_step(state, train_files[i], epochs=cfg.epochs, seed=cfg.seed, shards=shards)
        distill_step(state, epochs=cfg.distill_epochs, seed=cfg.seed)
        spent.append(time.perf_counter() - began)
        export_step(state, created_at="2026-01-01T00:00:00Z")
        states[i] = state
    return admin, states, float(np.mean(spent))


def _accuracy(agent: Any, test: Dataset) -> float:
    return float((agent.predict(test.x).argmax(axis=1) == test.y).mean())


# (data, device ids, main arch, epochs, seed, methods) -> seconds per method; the CLI passes
# ``hdus_edge.sim.retrain_cost.fleet_retrain_seconds`` (bench never imports sim).
FleetRetrain = Callable[..., dict[str, float]]


def run_forget_samples_bench(
    cfg: ForgetSamplesBenchConfig,
    progress: Callable[[str], None] | None = None,
    fleet_retrain: FleetRetrain | None = None,
) -> dict[str, Any]:
    """Every (K, samples) row side by side, with the fleet-retrain baselines measured in the same run."""
    from hdus_edge.config import load_profile
    from hdus_edge.data import load_npz
    from hdus_edge.device.agent import DeviceAgent, settings_for
    from hdus_edge.learning.exactness import compare_devices
    from hdus_edge.learning.samples import (
        data_of_record_path,
        forget_samples_step,
        read_manifest,
    )
    from hdus_edge.transport.broker import EmbeddedBroker
    from hdus_edge.unlearn.swap import collect_swap

    began = time.perf_counter()
    data = _fleet_data(cfg)
    ids = tuple(f"dev-{k}" for k in range(cfg.devices))
    target, rng = ids[0], np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    per_device: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="hdus-bench-forget-") as tmp, EmbeddedBroker() as broker:
        root = Path(tmp)
        files = {i: save_npz(data.clients[k].train, root / "data" / f"{i}.npz") for k, i in enumerate(ids)}
        if progress:
            progress("retraining the fleet with the baselines")
        baselines = {} if fleet_retrain is None else fleet_retrain(
            data, ids, arch=load_profile(PROFILE).model.main_arch, epochs=cfg.epochs, seed=cfg.seed,
            methods=cfg.baselines)
        for shards in cfg.shards:
            if progress:
                progress(f"training the fleet with {shards} shard(s)")
            admin, states, per_device[shards] = _build(root, f"k{shards}", broker.url, data, files, cfg, shards)
            agents = {}
            try:
                for i, st in states.items():
                    settings = dataclasses.replace(settings_for(st), probe_in_subprocess=False)
                    agents[i] = DeviceAgent.from_state_dir(st, broker_url=broker.url, settings=settings).start()
                for agent in agents.values():
                    agent.wait_for(lambda a: len(a.members()) == len(ids) - 1, 120)
                acc = _accuracy(agents[target], data.clients[0].test)
                for n in cfg.samples:
                    if progress:
                        progress(f"{shards} shard(s): forgetting {n} sample(s)")
                    manifest = read_manifest(states[target])
                    chosen = [manifest.ids[k] for k in sorted(rng.choice(manifest.size, n, replace=False))]
                    t0 = time.monotonic()
                    report = forget_samples_step(states[target], chosen, created_at="2026-01-01T00:00:00Z")
                    outcome = collect_swap(broker_url=broker.url, fleet=f"k{shards}", admin_key=admin.key().public_key,
                                           owner=target, request_id=report.request_id, wait_s=120, started_mono=t0)
                    seconds = outcome.last_receipt_s
                    version = report.seed_version
                    agents[target].wait_for(lambda a, v=version: a.status()["own_seed"]["version"] == v, 30)
                    acc_after = _accuracy(agents[target], data.clients[0].test)
                    reduced = save_npz(load_npz(data_of_record_path(states[target])), root / f"reduced-{shards}-{n}.npz")
                    _, scratch, _ = _build(root, f"s{shards}n{n}", broker.url, data, files | {target: reduced}, cfg, shards,
                                           only=(target,))
                    exact = compare_devices(states[target], scratch[target]).identical
                    rows.append({
                        "samples": n, "shards": shards, "exact": exact, "complete": outcome.complete,
                        "seconds": seconds, "retrain_seconds": report.train_seconds,
                        "distill_seconds": report.distill_seconds,
                        "export_seconds": report.seconds - report.train_seconds - report.distill_seconds,
                        "swap_seconds": None if seconds is None else seconds - report.seconds,
                        "retrained_shards": len(report.retrained_shards),
                        "speedup_vs_fleet_retrain": {k: (v / seconds if seconds else None) for k, v in baselines.items()},
                        "acc_before": acc, "acc_after": acc_after, "samples_left": report.samples_after,
                    })
                    acc = acc_after
            finally:
                for agent in agents.values():
                    agent.stop()
    acc_k1 = next((r["acc_before"] for r in rows if r["shards"] == cfg.shards[0]), float("nan"))
    return {
        "config": dataclasses.asdict(cfg),
        "fleet_retrain_seconds": baselines,
        "train_distill_seconds_per_device": {str(k): v for k, v in per_device.items()},
        "sharding_accuracy_cost": {str(r["shards"]): acc_k1 - r["acc_before"] for r in rows if r["samples"] == cfg.samples[0]},
        "rows": rows,
        "seconds": time.perf_counter() - began,
    }
