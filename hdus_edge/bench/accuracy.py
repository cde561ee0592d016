"""``hdus-edge bench accuracy``: the paper's accuracy comparison on the MNIST pool, old and new seeds side by side.

Pool: MNIST's 10,000 test images, carved into 6 clients x 1,000 (one class missing each; 80/20
train/local-test) and 2,000 held-out test images; the public reference set is either 2,000 more
images carved from the pool (``reference="pool"``) or a separate public set such as MNIST's 5,000
training images (a data folder), checked disjoint from every client by content. For homogeneous
(all L) and heterogeneous (S, M, L, L, L, L) fleets, the main models are trained once; then seeds are
distilled twice from the same main models, with the original distillation (``baseline_distill``:
KL on the fixed reference images) and with the current default, so the two columns differ in the
seeds only. Reported per column: seed/main agreement and seed accuracy on the global test set, the
ensemble (local and global, for several lam and both combine spaces), and the distillation time per
device; per setting: main alone (= ISGD), SISA-A (own main model and every neighbour's full main
model, uniform mean of probabilities: what the seeds stand in for); and a centralised model on the
union of client data as the upper bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hdus_edge.arch_names import DEFAULT_SEED_ARCH
from hdus_edge.data import (
    Dataset,
    FleetData,
    check_reference_disjoint,
    load_dataset,
    split_fleet,
    stratified_sample,
)
from hdus_edge.ensemble.combine import softmax
from hdus_edge.lab.evaluate import evaluate_fleet, mean
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    FleetProgress,
    InProcessFleet,
    LearningConfig,
    TrainedDevice,
    build_fleet,
    redistill_devices,
)
from hdus_edge.learning.train import accuracy, predict_logits, train
from hdus_edge.models import build_model, resolve_arch
from hdus_edge.topology import complete

SETTINGS: dict[str, tuple[str, ...]] = {
    "homogeneous": ("L", "L", "L", "L", "L", "L"),
    "heterogeneous": ("S", "M", "L", "L", "L", "L"),
}
LAMS = (0.25, 0.5, 0.75)
# The distillation before issue 15: KL at T = 4 on the teacher's logits for the fixed reference
# images, 40 epochs, into the 5k-parameter seed-cnn.
ORIGINAL_DISTILL = DistillConfig(method="fixed", epochs=40, temperature=4.0)
ORIGINAL_SEED_ARCH = "seed-cnn"


@dataclass(frozen=True)
class AccuracyBenchConfig:
    """Pool layout and budgets (defaults: the issue's MNIST layout)."""

    data: str = "mnist"  # "mnist" (the test split inside the package), "digits", or a data folder
    clients: int = 6
    client_size: int = 1000
    reference: str = "pool"  # "pool": carved from the pool; else a public data set (folder, .npz, name)
    reference_size: int = 2000  # from the pool, or a stratified sample of the public set (0: all of it)
    test_size: int = 2000
    seed: int = 0
    settings: tuple[str, ...] = tuple(SETTINGS)
    learning: LearningConfig = field(default_factory=LearningConfig)
    baseline_distill: DistillConfig = ORIGINAL_DISTILL
    seed_arch: str = DEFAULT_SEED_ARCH
    baseline_seed_arch: str = ORIGINAL_SEED_ARCH
    int8: bool = True  # also measure every model quantized to int8 (onnxruntime)


def _concat(parts: list[Dataset], name: str) -> Dataset:
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].num_classes, name)


def bench_data(cfg: AccuracyBenchConfig) -> FleetData:
    """The fleet's data: clients and test carved from the pool; the reference from it or public."""
    pool = load_dataset(cfg.data)
    if cfg.reference == "pool":
        return split_fleet(pool, cfg.clients, scheme="missing-class", client_size=cfg.client_size,
                           reference_size=cfg.reference_size, test_size=cfg.test_size, seed=cfg.seed)
    # A separate public set: carve nothing for the reference (a single generated input stands in
    # and is replaced), and prove the public set shares no image with any client.
    data = split_fleet(pool, cfg.clients, scheme="missing-class", client_size=cfg.client_size,
                       reference="noise", reference_size=1, test_size=cfg.test_size, seed=cfg.seed)
    public = load_dataset(cfg.reference)
    if cfg.reference_size and cfg.reference_size < len(public):
        public = public.subset(stratified_sample(public.y, cfg.reference_size, np.random.default_rng(cfg.seed)))
    reference = Dataset(public.x, public.y, pool.num_classes, f"public-{public.name}")
    check_reference_disjoint(reference, [c.train for c in data.clients] + [c.test for c in data.clients] + [data.test])
    return replace(data, reference=reference, reference_kind="public")


def _seed_figures(fleet: InProcessFleet, data: FleetData, index: dict[str, int]) -> dict[str, Any]:
    """Seed fidelity, the ensemble for every (space, lam), and the distillation time, of one fleet."""
    devices = sorted(fleet.devices.values(), key=lambda d: d.spec.device_id)
    seed_logits = [predict_logits(d.seed_model, data.test.x) for d in devices]
    main_logits = [predict_logits(d.main, data.test.x) for d in devices]
    figures: dict[str, Any] = {
        "seed_agreement": mean([float((s.argmax(1) == m.argmax(1)).mean()) for s, m in zip(seed_logits, main_logits)]),
        "seed_alone": mean([accuracy(s, data.test.y) for s in seed_logits]),
        "distill_seconds_per_device": mean([d.distill_report.seconds for d in devices]),
        "distill_cpu_seconds_per_device": mean([d.distill_report.cpu_seconds for d in devices]),
        "distill_method": devices[0].distill_report.method,
    }
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
    figures["ensemble_local"] = mean([a.ensemble_local for a in accs.values()])
    figures["ensemble_global"] = mean([a.ensemble_global for a in accs.values()])
    figures["rules"] = rule_figures(fleet, data, index)
    figures["per_device"] = [
        {"id": a.device_id, "arch": a.arch, "ensemble_local": a.ensemble_local, "ensemble_global": a.ensemble_global}
        for a in accs.values()
    ]
    return figures


# Combination rules measured against the shipped one (``combine``: (1 - lam) * main + lam * mean of
# seeds, over probabilities). Both stay exact: a function of the current members only.
def rule_by_trained_classes(members: list[np.ndarray], weights: list[float], trained: list[np.ndarray]) -> np.ndarray:
    """Per class, the weighted mean over the members whose owner trained on that class (all members
    where none did): a seed's blind spot does not dilute the classes its owner never saw."""
    w = np.array(weights)[:, None] * np.stack(trained).astype(np.float64)  # [members, classes]
    w = np.where(w.sum(0, keepdims=True) > 0, w, np.array(weights)[:, None])
    w = w / w.sum(0, keepdims=True)
    return sum(wm * p for wm, p in zip(w, members))


def rule_by_confidence(members: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Per sample, each member's weight times its top probability, normalised."""
    conf = np.stack([np.array(wm) * p.max(axis=1) for wm, p in zip(weights, members)])  # [members, N]
    conf = conf / conf.sum(0, keepdims=True)
    return sum(c[:, None] * p for c, p in zip(conf, members))


def rule_figures(fleet: InProcessFleet, data: FleetData, index: dict[str, int]) -> dict[str, dict[str, float]]:
    """Local and global accuracy of each measured rule at the fleet's lam (probabilities)."""
    num_classes = data.num_classes

    def trained(device_id: str) -> np.ndarray:
        mask = np.zeros(num_classes, bool)
        mask[np.unique(data.clients[index[device_id]].train.y)] = True
        return mask

    out: dict[str, dict[str, list[float]]] = {"trained_classes": {"local": [], "global": []},
                                              "confidence": {"local": [], "global": []}}
    for device_id in sorted(fleet.devices):
        holders = fleet.members(device_id)
        weights = [1 - fleet.lam] + [fleet.lam / len(holders)] * len(holders) if holders else [1.0]
        masks = [trained(device_id)] + [trained(j) for j in holders]
        for split, ds in (("local", data.clients[index[device_id]].test), ("global", data.test)):
            main, seeds = fleet.member_logits(device_id, ds.x)
            members = [softmax(m) for m in [main, *seeds]]
            out["trained_classes"][split].append(accuracy(rule_by_trained_classes(members, weights, masks), ds.y))
            out["confidence"][split].append(accuracy(rule_by_confidence(members, weights), ds.y))
    return {rule: {split: mean(v) for split, v in splits.items()} for rule, splits in out.items()}


def sisa_a(devices: list[TrainedDevice], data: FleetData, index: dict[str, int]) -> dict[str, float]:
    """Every device predicts with the uniform mean of probabilities of all main models (its own and
    its neighbours', complete graph): what the seeds stand in for."""
    def union(x: np.ndarray) -> np.ndarray:
        return np.mean([softmax(predict_logits(d.main, x)) for d in devices], axis=0)

    local = [accuracy(union(data.clients[index[d.spec.device_id]].test.x), data.clients[index[d.spec.device_id]].test.y)
             for d in devices]
    return {"local": mean(local), "global": accuracy(union(data.test.x), data.test.y)}


def run_accuracy_bench(cfg: AccuracyBenchConfig = AccuracyBenchConfig(), progress: FleetProgress | None = None) -> dict[str, Any]:
    """Run the comparison and return every figure as a JSON-able dict."""
    start = time.perf_counter()
    data = bench_data(cfg)
    new, old = cfg.learning, replace(cfg.learning, distill=cfg.baseline_distill)
    out: dict[str, Any] = {"settings": {
        "data": cfg.data, "clients": cfg.clients, "client_size": cfg.client_size, "reference": cfg.reference,
        "reference_samples": len(data.reference), "test_size": cfg.test_size, "lam": new.lam, "space": new.space,
        "train_epochs": new.train.epochs,
        "distill": {"original": _describe(old.distill, cfg.baseline_seed_arch), "new": _describe(new.distill, cfg.seed_arch)},
    }}
    for name in cfg.settings:
        t0 = time.perf_counter()
        sizes = SETTINGS[name]
        specs = [DeviceSpec(f"dev-{k}", resolve_arch(s), cfg.baseline_seed_arch, seed=cfg.seed * 1000 + k)
                 for k, s in enumerate(sizes[: cfg.clients])]
        ids = [s.device_id for s in specs]
        index = {i: k for k, i in enumerate(ids)}
        clients = {s.device_id: data.clients[k] for k, s in enumerate(specs)}
        fleet_old = build_fleet(specs, clients, data.reference, complete(ids), old, progress)
        devices = [fleet_old.devices[i] for i in ids]
        with_new_seed = [replace(d, spec=replace(d.spec, seed_arch=cfg.seed_arch)) for d in devices]
        fleet_new = InProcessFleet(redistill_devices(with_new_seed, clients, data.reference, new, progress),
                                   complete(ids), new.lam, new.space)
        fleet_new.exchange_seeds()
        accs = evaluate_fleet(fleet_old, data, index)
        figures: dict[str, Any] = {
            "archs": [s.main_arch for s in specs],
            "main_local": mean([a.main_local for a in accs.values()]),
            "main_global": mean([a.main_global for a in accs.values()]),
            "sisa_a": sisa_a(devices, data, index),
            "original": _seed_figures(fleet_old, data, index),
            "new": _seed_figures(fleet_new, data, index),
        }
        figures["distill_time_ratio"] = (figures["new"]["distill_seconds_per_device"]
                                         / figures["original"]["distill_seconds_per_device"])
        figures["distill_cpu_time_ratio"] = (figures["new"]["distill_cpu_seconds_per_device"]
                                             / figures["original"]["distill_cpu_seconds_per_device"])
        if cfg.int8:
            figures["int8"] = quantization_figures(fleet_new, data)
        figures["seconds"] = time.perf_counter() - t0
        out[name] = figures
    out["centralised"] = _centralised(data, cfg, progress)
    out["seconds"] = time.perf_counter() - start
    return out


def _describe(cfg: DistillConfig, seed_arch: str) -> dict[str, Any]:
    keys = ("method", "loss", "temperature", "epochs") + (("views",) if cfg.method == "views" else ())
    return {"seed": seed_arch, **{k: getattr(cfg, k) for k in keys}}


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
                         "acc_change": a8 - a32, "size_ratio": int8.report.size_ratio, "bytes_fp32": len(fp32)})
    return rows
