"""A device's training-side steps on its state directory: train, distill, export (torch).

Each step reads what the previous one left in ``models/`` and writes its own result there:

    train   own data folder          -> models/main.pt
    distill models/main.pt + reference.npz -> models/seed.pt
    export  main.pt + seed.pt         -> models/main.onnx, models/seed.onnx, models/seed.json

Exactness lives in what each step may read: ``train`` sees the device's own data only (and refuses
data that shares samples with the public reference set), ``distill`` sees the main model and the
reference set in the state dir only, and ``export`` refuses a seed distilled from another main model.
A checkpoint holds enough to rebuild its model (arch, input shape, classes, state_dict) plus
provenance. This module imports torch; the agent and ``predict`` never import it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hdus_edge.data import (
    Dataset,
    check_reference_disjoint,
    dataset_sha256,
    load_data_folder,
    load_npz,
)
from hdus_edge.data.manifest import manifest_of
from hdus_edge.data.reference import check_reference_file
from hdus_edge.errors import CheckpointError, DataError, DataShapeError
from hdus_edge.files import atomic_write, write_json
from hdus_edge.learning.distill import DistillConfig, distill
from hdus_edge.learning.shards import build_sharded, fit_main
from hdus_edge.learning.train import Progress, TrainConfig, torch_threads
from hdus_edge.models import build_model, count_parameters
from hdus_edge.models.sharded import ShardedMain
from hdus_edge.onnx.export import export_onnx
from hdus_edge.onnx.metadata import Provenance
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.state import StateDir

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def load_reference(state: StateDir) -> Dataset:
    """The device's copy of the fleet's reference set, checked against ``fleet.toml``."""
    return check_reference_file(state.reference_file, state.fleet().data.reference_sha256)


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 (provenance creation time)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A model rebuilt from ``models/<role>.pt``, with the provenance saved next to its weights."""

    model: nn.Module
    role: str
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    meta: dict[str, Any]
    sha256: str  # of the checkpoint file's bytes: a distilled seed names its teacher by it


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    role: str,
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    meta: dict[str, Any],
) -> str:
    """Write ``model`` atomically with what it takes to rebuild it; return the file's sha256."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "role": role,
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write(Path(path), data)
    return sha256_hex(data)


def load_checkpoint(path: Path, role: str) -> Checkpoint:
    """Rebuild the model saved at ``path``; ``CheckpointError`` when missing, corrupt or of another role."""
    path = Path(path)
    step = {"main": "train", "seed": "distill"}[role]
    if not path.exists():
        raise CheckpointError(f"{path} is missing", hint=f"run 'hdus-edge {step}' for this device first")
    data = path.read_bytes()
    digest = sha256_hex(data)
    cached = _LOADED.get((role, digest))
    if cached is not None:
        return cached
    try:
        # weights_only: a checkpoint file must never be able to run code.
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not an hdus-edge checkpoint of format {CHECKPOINT_FORMAT}")
        if payload["role"] != role:
            raise ValueError(f"it holds a {payload['role']} model, not a {role} model")
        shape = tuple(int(d) for d in payload["input_shape"])
        classes = int(payload["num_classes"])
        shard_meta = (payload.get("meta") or {}).get("shards")
        if shard_meta:
            model = build_sharded(payload["arch"], shape, classes, shard_meta)  # type: ignore[arg-type]
        else:
            model = build_model(payload["arch"], shape, classes)  # type: ignore[arg-type]
        model.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  # unpickling and load_state_dict raise many types
        raise CheckpointError(f"{path} is not a usable {role} checkpoint: {exc}",
                              hint=f"run 'hdus-edge {step}' again to rewrite it") from None
    model.eval()
    ckpt = Checkpoint(model, role, payload["arch"], shape, classes, dict(payload.get("meta") or {}), digest)  # type: ignore[arg-type]
    # forget-samples and train --add read main.pt three times in one run (retrain, distill, export);
    # a sharded one rebuilds K models each time. Keyed by the file's hash, so a changed file is
    # always read again; callers only read the model (eval, export), never train it in place.
    if len(_LOADED) >= 2:
        _LOADED.clear()
    _LOADED[(role, digest)] = ckpt
    return ckpt


_LOADED: dict[tuple[str, str], Checkpoint] = {}


# --- steps -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainStepReport:
    """What ``train_step`` did."""

    device_id: str
    arch: str
    params: int
    samples: int
    classes_seen: list[int]
    epochs: int
    steps: int
    final_loss: float
    train_accuracy: float
    seconds: float
    data_sha256: str
    checkpoint: str
    manifest_sha256: str = ""
    shards: int = 1
    retrained_shards: list[int] = field(default_factory=list)
    reused_shards: list[int] = field(default_factory=list)
    forgotten_dropped: int = 0  # samples of the data left out because they were forgotten before

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_device_data(path: Path) -> Dataset:
    """A device's own training data: a folder of ``.npz`` / IDX files, or one ``.npz`` file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if not path.exists():
        raise DataError(f"data folder {path} does not exist", hint="pass the folder holding this device's .npz or IDX files")
    return load_data_folder(path)


def check_fits_fleet(data: Dataset, state: StateDir) -> None:
    """``DataShapeError`` unless ``data`` has the fleet's input shape and labels within its classes."""
    fleet = state.fleet()
    shape = tuple(fleet.data.input_shape)
    if data.input_shape != shape:
        raise DataShapeError(
            f"data '{data.name}' has samples of shape {list(data.input_shape)}, but fleet "
            f"'{fleet.fleet.name}' (profile {state.device().device.profile}) takes {list(shape)}",
            hint="resample the images to the fleet's input shape",
        )
    if len(data) and int(data.y.max()) >= fleet.data.num_classes:
        raise DataShapeError(
            f"data '{data.name}' has label {int(data.y.max())}, but the fleet has {fleet.data.num_classes} classes"
        )


def train_step(
    state: StateDir,
    data_path: Path,
    *,
    epochs: int | None = None,
    seed: int = 0,
    threads: int = 1,
    progress: Progress | None = None,
    shards: int | None = None,
) -> TrainStepReport:
    """Train the device's main model (its profile's architecture) on its own data; save ``models/main.pt``.

    The data becomes the device's training set of record (``data/train.npz``, with its manifest of
    sample ids in ``models/manifest.json``), which ``forget-samples`` and ``train --add`` edit later.
    Samples forgotten before (``data/forgotten.json``) are left out. ``shards`` overrides the
    profile's ``train.shards``.
    """
    from hdus_edge.learning.samples import drop_forgotten

    data = load_device_data(data_path)
    check_fits_fleet(data, state)
    if state.reference_file.exists():
        # Own data inside the public reference set would reach every neighbour through the seeds.
        check_reference_disjoint(load_reference(state), [data])
    data, dropped = drop_forgotten(state, data)
    return fit_and_save_main(state, data, epochs=epochs, seed=seed, threads=threads, progress=progress,
                             shards=shards, forgotten_dropped=dropped)


def fit_and_save_main(
    state: StateDir,
    data: Dataset,
    *,
    epochs: int | None,
    seed: int,
    threads: int,
    progress: Progress | None = None,
    shards: int | None = None,
    previous: Checkpoint | None = None,
    forgotten_dropped: int = 0,
) -> TrainStepReport:
    """Fit the main model on ``data`` and commit it with its data of record and manifest.

    ``previous`` (a sharded main checkpoint) lends the weights of shards whose data did not change.
    Commit order: data of record, then ``main.pt``, then the manifest; a crash in between leaves a
    main model whose manifest differs from the data, which ``forget-samples`` and ``status`` see.
    """
    from hdus_edge.learning.samples import write_data_of_record

    device = state.device()
    fleet = state.fleet()
    profile = state.profile()
    if len(data) == 0:
        raise DataShapeError("no training data would be left", hint="a device needs at least one sample")
    shape, classes = tuple(fleet.data.input_shape), fleet.data.num_classes
    k = shards or profile.train.shards
    cfg = TrainConfig(epochs=epochs or profile.train.epochs, batch_size=profile.train.batch_size, seed=seed)
    arch = profile.model.main_arch
    manifest = manifest_of(data)
    prior = None
    if previous is not None and previous.meta.get("shards"):
        prior = (previous.model, list(previous.meta["shards"]))
    fit = fit_main(data, manifest, arch=arch, input_shape=shape, num_classes=classes, cfg=cfg, shards=k,  # type: ignore[arg-type]
                   threads=threads, progress=progress, previous=prior)
    data_sha = dataset_sha256(data)
    meta = {"device_id": device.device.id, "data_sha256": data_sha, "samples": len(data), "seed": seed,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "threads": threads,
            "train_accuracy": fit.train_accuracy, "created_at": utc_now_iso(),
            "manifest_sha256": manifest.sha256, "manifest_size": manifest.size, "shards": fit.shards,
            "shard_count": k}
    write_data_of_record(state, data)
    save_checkpoint(state.main_checkpoint, fit.model, role="main", arch=arch, input_shape=shape,  # type: ignore[arg-type]
                    num_classes=classes, meta=meta)
    write_json(manifest_path(state), manifest.to_json())
    seen = sorted(int(c) for c in set(data.y.tolist()) if c >= 0)
    logger.info("trained %s (%s, %d shards) on %d samples", device.device.id, arch, k, len(data))
    return TrainStepReport(device.device.id, arch, count_parameters(fit.model), len(data), seen, cfg.epochs, fit.steps,
                           fit.final_loss, fit.train_accuracy, fit.seconds, data_sha, str(state.main_checkpoint),
                           manifest.sha256, k, fit.retrained, fit.reused, forgotten_dropped)


def manifest_path(state: StateDir) -> Path:
    """``models/manifest.json``: the sample ids the main model in ``main.pt`` was trained on."""
    return state.manifest_file


@dataclass(frozen=True)
class DistillStepReport:
    """What ``distill_step`` did."""

    device_id: str
    arch: str
    params: int
    teacher_arch: str
    reference_samples: int
    reference_sha256: str
    epochs: int
    final_loss: float
    agreement: float  # seed vs main top-1 agreement on the reference set
    seconds: float
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def distill_step(
    state: StateDir,
    *,
    epochs: int | None = None,
    seed: int = 0,
    threads: int = 1,
    progress: Progress | None = None,
) -> DistillStepReport:
    """Distil the seed (the profile's seed architecture) from ``models/main.pt`` on the reference set only."""
    device = state.device()
    fleet = state.fleet()
    profile = state.profile()
    reference = load_reference(state)  # before the costly checkpoint: a bad copy fails at once
    teacher = load_checkpoint(state.main_checkpoint, "main")
    _check_contract(teacher, state)
    cfg = DistillConfig(epochs=epochs or profile.train.distill_epochs, seed=seed)
    arch = profile.model.seed_arch
    student = build_model(arch, teacher.input_shape, teacher.num_classes, seed=seed + 1)
    with torch_threads(threads):
        report = distill(teacher.model, student, reference, cfg, eval_data=reference, progress=progress)
    ref_sha = fleet.data.reference_sha256 or dataset_sha256(reference)
    meta = {"device_id": device.device.id, "teacher_sha256": teacher.sha256, "teacher_arch": teacher.arch,
            "reference_sha256": ref_sha, "epochs": cfg.epochs, "agreement": report.agreement, "seed": seed,
            "threads": threads, "created_at": utc_now_iso()}
    save_checkpoint(state.seed_checkpoint, student, role="seed", arch=arch, input_shape=teacher.input_shape,
                    num_classes=teacher.num_classes, meta=meta)
    return DistillStepReport(device.device.id, arch, count_parameters(student), teacher.arch, len(reference), ref_sha,
                             cfg.epochs, report.final_loss, report.agreement, report.seconds, str(state.seed_checkpoint))


@dataclass(frozen=True)
class ExportStepReport:
    """What ``export_step`` wrote."""

    device_id: str
    seed_version: int
    main_arch: str
    seed_arch: str
    main_bytes: int
    seed_bytes: int
    seed_sha256: str
    reference_sha256: str
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_step(state: StateDir, *, created_at: str | None = None) -> ExportStepReport:
    """Export main and seed to ONNX and bump the seed version (``export_device_models``).

    Refuses a seed distilled from another main model than the one in ``main.pt`` (train ran again
    after distill) and one distilled on another reference set than the fleet's.
    """
    fleet = state.fleet()
    main = load_checkpoint(state.main_checkpoint, "main")
    seed = load_checkpoint(state.seed_checkpoint, "seed")
    _check_contract(main, state)
    if seed.meta.get("teacher_sha256") != main.sha256:
        raise CheckpointError(
            f"{state.seed_checkpoint} was distilled from another main model than {state.main_checkpoint}",
            hint="run 'hdus-edge distill' again after training",
        )
    ref_sha = str(seed.meta.get("reference_sha256", ""))
    if fleet.data.reference_sha256 and ref_sha != fleet.data.reference_sha256:
        raise CheckpointError(
            f"{state.seed_checkpoint} was distilled on reference set {ref_sha[:12]}..., not the fleet's "
            f"{fleet.data.reference_sha256[:12]}...",
            hint="run 'hdus-edge distill' again",
        )
    manifest_sha = main.meta.get("manifest_sha256")
    main_bytes, seed_bytes, version = export_device_models(
        state, main.model, seed.model, main_arch=main.arch, seed_arch=seed.arch, reference_sha256=ref_sha,
        created_at=created_at,
        manifest=(str(manifest_sha), int(main.meta.get("manifest_size", 0))) if manifest_sha else None,
    )
    return ExportStepReport(
        state.device().device.id, version, main.arch, seed.arch, len(main_bytes), len(seed_bytes),
        sha256_hex(seed_bytes), ref_sha,
        [str(state.models / n) for n in ("main.onnx", "seed.onnx", "seed.json")],
    )


def export_sharded(main: ShardedMain, provenance: Provenance, cache: Path) -> bytes:
    """Export a sharded main model as one graph (``ensemble.shards.compose_shards``).

    Each member's ONNX is kept in ``cache`` under the hash of its weights (and of what else its
    bytes depend on), so only retrained shards are exported again; files of members no longer
    used are removed.
    """
    import onnx

    from hdus_edge.ensemble.shards import compose_shards
    from hdus_edge.onnx.checks import parse_onnx
    from hdus_edge.onnx.metadata import set_metadata

    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    member_prov = replace(provenance, version=0, manifest_sha256=None, samples=None, created_at="-")
    members, keep = [], set()
    for member in main.members:
        name = f"{_weights_sha256(member, provenance)}.onnx"
        path = cache / name
        data = path.read_bytes() if path.exists() else b""
        if not data:
            data = export_onnx(member, member_prov)
            atomic_write(path, data)
        members.append(parse_onnx(data, max_bytes=256 << 20))
        keep.add(name)
    for stale in cache.glob("*.onnx"):
        if stale.name not in keep:
            stale.unlink()
    proto = compose_shards(members)
    proto.model_version = int(provenance.version)
    set_metadata(proto, provenance.to_props())
    onnx.checker.check_model(proto)
    return proto.SerializeToString(deterministic=True)


def _weights_sha256(model: nn.Module, provenance: Provenance) -> str:
    h = hashlib.sha256(f"hdus-member-v1|{provenance.arch}|{provenance.input_shape}|{provenance.num_classes}|"
                       f"{torch.__version__}|".encode())
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _check_contract(ckpt: Checkpoint, state: StateDir) -> None:
    fleet = state.fleet()
    if ckpt.input_shape != tuple(fleet.data.input_shape) or ckpt.num_classes != fleet.data.num_classes:
        raise CheckpointError(
            f"the {ckpt.role} checkpoint takes {list(ckpt.input_shape)} -> {ckpt.num_classes} classes, but the fleet "
            f"takes {list(fleet.data.input_shape)} -> {fleet.data.num_classes}",
            hint="run 'hdus-edge train' again",
        )


def _quantize_main(state: StateDir, main_bytes: bytes) -> bytes:
    """int8 (static, calibrated on the device's copy of the reference set) for the profile's main model.

    Only the device's own main model: measured on digits, int8 cost main models 0-1.7 points but
    seeds up to 11 (``hdus-edge bench accuracy``), and seeds run on every neighbour, so they stay fp32.
    """
    from hdus_edge.data import load_npz
    from hdus_edge.onnx.quantize import quantize_int8

    calibration = load_npz(state.reference_file).x[:256] if state.reference_file.exists() else None
    quantized = quantize_int8(main_bytes, calibration=calibration)
    logger.info("main model quantized to int8 (%s): %.2fx the fp32 size", quantized.report.mode, quantized.report.size_ratio)
    return quantized.data


def export_device_models(
    state: StateDir,
    main: nn.Module,
    seed: nn.Module,
    *,
    main_arch: str,
    seed_arch: str,
    reference_sha256: str,
    created_at: str | None = None,
    manifest: tuple[str, int] | None = None,
) -> tuple[bytes, bytes, int]:
    """Export main and seed to ``models/main.onnx`` and ``models/seed.onnx``; bump the seed version.

    Returns (main bytes, seed bytes, seed version). Provenance names the device, the architecture,
    the version and the reference set the seed was distilled on; ``manifest`` = (sha256, size) of the
    main model's sample-id manifest.
    """
    device = state.device()
    fleet = state.fleet()
    created_at = created_at or utc_now_iso()
    version = state.seed_version() + 1
    shape = fleet.data.input_shape
    classes = fleet.data.num_classes
    manifest_sha, samples = manifest if manifest is not None else (None, None)
    main_prov = Provenance(device.device.id, "main", main_arch, version, shape, classes, created_at,
                           manifest_sha256=manifest_sha, samples=samples)
    if isinstance(main, ShardedMain):
        main_bytes = export_sharded(main, main_prov, state.models / "shards")
    else:
        main_bytes = export_onnx(main, main_prov)
    if state.profile().runtime.int8:
        main_bytes = _quantize_main(state, main_bytes)
    seed_bytes = export_onnx(
        seed, Provenance(device.device.id, "seed", seed_arch, version, shape, classes, created_at, reference_sha256)
    )
    atomic_write(state.models / "main.onnx", main_bytes)
    atomic_write(state.models / "seed.onnx", seed_bytes)
    write_json(state.seed_info_file, {"version": version, "sha256": sha256_hex(seed_bytes),
                                      "reference_sha256": reference_sha256, "arch": seed_arch, "created_at": created_at})
    logger.info("exported %s: main %d bytes, seed v%d %d bytes", device.device.id, len(main_bytes), version, len(seed_bytes))
    return main_bytes, seed_bytes, version
