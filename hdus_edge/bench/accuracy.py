"""``hdus-edge bench accuracy``: the paper's accuracy comparison on the MNIST pool.

Pool: MNIST's 10,000 test images, carved into 6 clients x 1,000 (one class missing each; 80/20
train/local-test), 2,000 public reference images and 2,000 held-out test images, all disjoint.
For homogeneous (all L) and heterogeneous (S, M, L, L, L, L) fleets it reports main alone (= ISGD,
local only) against the ensemble, in both combine spaces and for several lam, plus a centralised
model trained on the union of client data as the upper bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from hdus_edge.data import Dataset, FleetData, load_dataset, split_fleet
from hdus_edge.lab.evaluate import evaluate_fleet, mean
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    FleetProgress,
    InProcessFleet,
    LearningConfig,
    build_fleet,
)
from hdus_edge.learning.train import accuracy, predict_logits, train
from hdus_edge.models import build_model, resolve_arch
from hdus_edge.topology import complete

SETTINGS: dict[str, tuple[str, ...]] = {
    "homogeneous": ("L", "L", "L", "L", "L", "L"),
    "heterogeneous": ("S", "M", "L", "L", "L", "L"),
}
LAMS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class AccuracyBenchConfig:
    """Pool layout and budgets (defaults: the issue's MNIST layout)."""

    data: str = "mnist"  # "mnist" (the test split inside the package), "digits", or a data folder
    clients: int = 6
    client_size: int = 1000
    reference_size: int = 2000
    test_size: int = 2000
    seed: int = 0
    learning: LearningConfig = LearningConfig()


def _concat(parts: list[Dataset], name: str) -> Dataset:
    import numpy as np

    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].num_classes, name)


def _fleet_figures(fleet: InProcessFleet, data: FleetData, index: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    original = (fleet.lam, fleet.space)
    for space in ("probs", "logits"):
        for lam in LAMS:
            fleet.lam, fleet.space = lam, space
            accs = evaluate_fleet(fleet, data, index)
            figures[f"{space}/lam={lam}"] = {
                "ensemble_local": mean([a.ensemble_local for a in accs.values()]),
                "ensemble_global": mean([a.ensemble_global for a in accs.values()]),
            }
    fleet.lam, fleet.space = original
    accs = evaluate_fleet(fleet, data, index)
    figures["main_local"] = mean([a.main_local for a in accs.values()])
    figures["main_global"] = mean([a.main_global for a in accs.values()])
    figures["per_device"] = [
        {"id": a.device_id, "arch": a.arch, "main_local": a.main_local, "ensemble_local": a.ensemble_local,
         "main_global": a.main_global, "ensemble_global": a.ensemble_global}
        for a in accs.values()
    ]
    return figures


def run_accuracy_bench(cfg: AccuracyBenchConfig = AccuracyBenchConfig(), progress: FleetProgress | None = None) -> dict[str, Any]:
    """Run the comparison and return every figure as a JSON-able dict."""
    start = time.perf_counter()
    pool = load_dataset(cfg.data)
    data = split_fleet(
        pool, cfg.clients, scheme="missing-class", client_size=cfg.client_size,
        reference_size=cfg.reference_size, test_size=cfg.test_size, seed=cfg.seed,
    )
    out: dict[str, Any] = {"settings": {"data": cfg.data, "clients": cfg.clients, "client_size": cfg.client_size,
                                        "reference_size": cfg.reference_size, "test_size": cfg.test_size,
                                        "lam": cfg.learning.lam, "space": cfg.learning.space,
                                        "train_epochs": cfg.learning.train.epochs,
                                        "distill_epochs": cfg.learning.distill.epochs,
                                        "temperature": cfg.learning.distill.temperature}}
    for name, sizes in SETTINGS.items():
        t0 = time.perf_counter()
        specs = [DeviceSpec(f"dev-{k}", resolve_arch(s), seed=cfg.seed * 1000 + k) for k, s in enumerate(sizes[: cfg.clients])]
        ids = [s.device_id for s in specs]
        clients = {s.device_id: data.clients[k] for k, s in enumerate(specs)}
        fleet = build_fleet(specs, clients, data.reference, complete(ids), cfg.learning, progress)
        figures = _fleet_figures(fleet, data, {i: k for k, i in enumerate(ids)})
        figures["archs"] = [s.main_arch for s in specs]
        figures["seed_agreement"] = mean([d.distill_report.agreement for d in fleet.devices.values()])
        figures["int8"] = quantization_figures(fleet, data)
        figures["seconds"] = time.perf_counter() - t0
        out[name] = figures
    out["centralised"] = _centralised(data, cfg, progress)
    out["seconds"] = time.perf_counter() - start
    return out


def _centralised(data: FleetData, cfg: AccuracyBenchConfig, progress: FleetProgress | None) -> dict[str, float]:
    union = _concat([c.train for c in data.clients], "union")
    model = build_model(resolve_arch("L"), union.input_shape, union.num_classes, seed=cfg.seed)
    bound = None if progress is None else (lambda d, t: progress("central", "train", d, t))
    # The union holds clients x more data: a third of the epochs gives it more steps than any device.
    epochs = max(5, cfg.learning.train.epochs // 3)
    train(model, union, replace(cfg.learning.train, seed=cfg.seed, epochs=epochs), bound)
    local = [accuracy(predict_logits(model, c.test.x), c.test.y) for c in data.clients]
    return {"local": mean(local), "global": accuracy(predict_logits(model, data.test.x), data.test.y)}



def quantization_figures(fleet: InProcessFleet, data: FleetData) -> list[dict[str, Any]]:
    """Each device's main model and seed: fp32 vs int8 (static, calibrated on the reference set) on
    the held-out test set: accuracy change and size ratio, measured with onnxruntime."""
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance
    from hdus_edge.onnx.quantize import quantize_int8
    from hdus_edge.onnx.session import make_session

    def acc(model_bytes: bytes) -> float:
        session = make_session(model_bytes, intra_op_threads=1)
        logits = session.run(None, {session.get_inputs()[0].name: data.test.x})[0]
        return accuracy(logits, data.test.y)

    rows = []
    calibration = data.reference.x[:256]
    for device_id, device in sorted(fleet.devices.items()):
        for role, model, arch in (("main", device.main, device.spec.main_arch),
                                  ("seed", device.seed_model, device.spec.seed_arch)):
            prov = Provenance(device_id, role, arch, 1, data.input_shape, data.num_classes, "2026-01-01T00:00:00Z",
                              data.reference_sha256 if role == "seed" else None)
            fp32 = export_onnx(model, prov)
            int8 = quantize_int8(fp32, calibration=calibration)
            a32, a8 = acc(fp32), acc(int8.data)
            rows.append({"device": device_id, "role": role, "arch": arch, "acc_fp32": a32, "acc_int8": a8,
                         "acc_change": a8 - a32, "size_ratio": int8.report.size_ratio})
    return rows
