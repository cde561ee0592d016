"""Forget samples, or add new ones, on one device: retrain its main model, re-distil, export (torch).

HDUS makes a person's "forget my data" cheap: a seed depends only on its own device's data and the
public reference set, so forgetting samples on device j needs only j to retrain and re-distil; its
neighbours swap j's seed for the new version (``device/agent.py``). The device keeps its training set
of record in ``data/train.npz`` (its manifest of sample ids in ``models/manifest.json``); the ids of
forgotten samples in ``data/forgotten.json`` (ids only), so a later ``train`` or ``train --add`` never
brings them back. ``models/retire.json`` tells the agent that the next seed version retires the old
ones: it publishes a signed ``SeedRetire`` and the neighbours tombstone the old versions.

Exactness: the retrained main model is what ``train`` gives on the reduced data from scratch (same
seed, epochs, batch size, threads; with shards only the shards that held the samples are retrained,
``learning/shards.py``), and the seed is distilled from it exactly as ``distill`` would.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.data import (
    Dataset,
    check_reference_disjoint,
    concatenate,
    load_npz,
    save_npz,
)
from hdus_edge.data.manifest import Manifest, check_sample_ids, ids_sha256, manifest_of
from hdus_edge.errors import CheckpointError, DataError, DataFormatError
from hdus_edge.files import write_json
from hdus_edge.learning.train import Progress
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.state import StateDir, read_json

logger = logging.getLogger(__name__)

MAX_IDS = 1_000_000


def data_of_record_path(state: StateDir) -> Path:
    """``data/train.npz``: the device's training set of record (what ``main.pt`` was trained on)."""
    return state.train_data_file


def forgotten_path(state: StateDir) -> Path:
    """``data/forgotten.json``: ids of samples forgotten on this device (ids only, never data)."""
    return state.forgotten_samples_file


def retire_path(state: StateDir) -> Path:
    """``models/retire.json``: the seed version that retires every older one (read by the agent)."""
    return state.retire_file


def write_data_of_record(state: StateDir, data: Dataset) -> Path:
    """Replace the training set of record (atomic)."""
    path = data_of_record_path(state)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return save_npz(Dataset(data.x, data.y, data.num_classes, name="train"), path)


def load_data_of_record(state: StateDir) -> Dataset:
    """The training set of record; ``CheckpointError`` when the device was never trained."""
    path = data_of_record_path(state)
    if not path.exists():
        raise CheckpointError(f"{path} is missing: this device has no training set of record",
                              hint="run 'hdus-edge train --data DIR' first")
    return load_npz(path)


def read_manifest(state: StateDir) -> Manifest:
    """The manifest of the main model in ``main.pt``; ``CheckpointError`` when missing or corrupt."""
    from hdus_edge.learning.steps import manifest_path

    path = manifest_path(state)
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the main model has no manifest of sample ids",
                              hint="run 'hdus-edge train' again to record one")
    try:
        return Manifest.from_json(read_json(path, "sample manifest"))
    except ValueError as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}", hint="run 'hdus-edge train' again") from None


def forgotten_ids(state: StateDir) -> set[str]:
    """Ids of every sample forgotten on this device."""
    path = forgotten_path(state)
    if not path.exists():
        return set()
    data = read_json(path, "forgotten sample ids")
    return set(check_sample_ids(data.get("ids", []) if isinstance(data, dict) else []))


def drop_forgotten(state: StateDir, data: Dataset) -> tuple[Dataset, int]:
    """``data`` without the samples forgotten on this device, and how many were left out."""
    gone = forgotten_ids(state)
    if not gone or len(data) == 0:
        return data, 0
    keep = np.array([i not in gone for i in manifest_of(data).ids], dtype=bool)
    dropped = int((~keep).sum())
    if dropped:
        logger.warning("left out %d samples that were forgotten on this device", dropped)
    return (data.subset(keep) if dropped else data), dropped


def _record_forgotten(state: StateDir, ids: Sequence[str], request_id: str) -> None:
    path = forgotten_path(state)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    held = sorted(forgotten_ids(state) | set(ids))
    requests = []
    if path.exists():
        old = read_json(path, "forgotten sample ids")
        requests = list(old.get("requests", [])) if isinstance(old, dict) else []
    requests.append({"request_id": request_id, "count": len(set(ids)), "ids_sha256": ids_sha256(sorted(set(ids))),
                     "at": time.time()})
    write_json(path, {"format": 1, "ids": held, "requests": requests})


# --- which samples -------------------------------------------------------------------------------


def read_ids_file(path: Path) -> list[str]:
    """Sample ids from a file: a JSON list, a JSON object with ``ids``, or one id per line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"ids file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read ids file {path}: {exc}") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            raw = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"ids file {path} is not valid JSON: {exc}") from None
        raw = raw.get("ids") if isinstance(raw, dict) else raw
        if not isinstance(raw, list):
            raise DataFormatError(f"ids file {path} holds no list of ids", hint='write ["<id>", ...] or {"ids": [...]}')
    else:
        raw = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(raw) > MAX_IDS:
        raise DataError(f"ids file {path} holds {len(raw)} ids, more than {MAX_IDS}")
    try:
        return check_sample_ids(raw)
    except ValueError as exc:
        raise DataFormatError(f"ids file {path}: {exc}", hint="sample ids are shown by 'hdus-edge status --json'") from None


def ids_of_samples(path: Path) -> list[str]:
    """The ids of the samples in a data file or folder (``.npz`` / IDX), for ``--data``."""
    from hdus_edge.learning.steps import load_device_data

    return list(manifest_of(load_device_data(path)).ids)


# --- forget ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewVersionReport:
    """What ``forget_samples_step`` / ``add_samples_step`` did."""

    device_id: str
    action: str  # "forget" or "add"
    request_id: str
    ids: int  # distinct ids asked for (forget) or new samples given (add)
    samples_removed: int
    samples_added: int
    samples_before: int
    samples_after: int
    forgotten_dropped: int  # add: given samples left out because they were forgotten before
    shards: int
    retrained_shards: list[int]
    reused_shards: list[int]
    manifest_sha256: str
    seed_version: int
    seed_sha256: str
    retired_sha256: str | None  # the seed version this one retires (forget only)
    train_seconds: float
    distill_seconds: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def forget_samples_step(
    state: StateDir,
    ids: Sequence[str],
    *,
    reason: str = "right to be forgotten",
    created_at: str | None = None,
    progress: Progress | None = None,
) -> NewVersionReport:
    """Remove the samples ``ids`` from the device's training data, retrain, re-distil, export a new seed.

    Refuses, changing nothing (``DataError``): no ids, ids the main model never saw, or a request
    that would leave no data. Then, in this order: the ids join ``data/forgotten.json`` and leave the
    data of record (the data is gone first), the main model is retrained (sharded: only the shards
    that held them), the seed re-distilled, ``models/retire.json`` names the coming version, and
    ``export`` writes it. A running agent publishes the retirement and the new seed; neighbours
    tombstone the old versions and answer with signed receipts.
    """
    from hdus_edge.learning.steps import fit_and_save_main, load_checkpoint

    began = time.perf_counter()
    wanted = sorted(set(check_sample_ids(ids)))
    if not wanted:
        raise DataError("no sample ids to forget", hint="pass --ids FILE or --data FILE naming at least one sample")
    main = load_checkpoint(state.main_checkpoint, "main")
    manifest = read_manifest(state)
    if manifest.sha256 != main.meta.get("manifest_sha256"):
        raise CheckpointError(f"{state.main_checkpoint} was not trained on the samples its manifest names",
                              hint="run 'hdus-edge train' again")
    seen = set(manifest.ids)
    unseen = [i for i in wanted if i not in seen]
    if unseen:
        already = forgotten_ids(state)
        note = " (already forgotten)" if all(i in already for i in unseen) else ""
        raise DataError(
            f"{len(unseen)} of {len(wanted)} sample ids were never trained on by this device's main model{note}, "
            f"e.g. {unseen[0]}",
            hint="'hdus-edge status --json' shows the manifest's size and hash; nothing was changed",
        )
    data = load_data_of_record(state)
    data_ids = manifest_of(data).ids
    gone = set(wanted)
    keep = np.array([i not in gone for i in data_ids], dtype=bool)
    if not keep.any():
        raise DataError(f"forgetting these {len(wanted)} samples would leave no training data",
                        hint="forget the whole device instead: 'hdus-edge leave' or 'hdus-edge unlearn'")
    old_seed = _exported_seed(state)
    request_id = uuid.uuid4().hex
    _record_forgotten(state, wanted, request_id)  # the commit point: these ids never come back
    reduced = data.subset(keep)
    trained = fit_and_save_main(state, reduced, epochs=int(main.meta["epochs"]), seed=int(main.meta["seed"]),
                                threads=int(main.meta.get("threads", 1)), progress=progress,
                                shards=int(main.meta.get("shard_count", 1)), previous=main)
    return _distill_and_export(state, trained, action="forget", request_id=request_id, ids=len(wanted),
                               before=len(data), removed=int((~keep).sum()), added=0, dropped=0,
                               retire=old_seed, reason=reason, created_at=created_at, began=began)


def add_samples_step(
    state: StateDir,
    data_path: Path,
    *,
    created_at: str | None = None,
    progress: Progress | None = None,
) -> NewVersionReport:
    """Append new samples to the training data, retrain (sharded: only shards that get samples),
    re-distil and export a new seed version. Samples forgotten before are left out."""
    from hdus_edge.learning.steps import (
        check_fits_fleet,
        fit_and_save_main,
        load_checkpoint,
        load_device_data,
        load_reference,
    )

    began = time.perf_counter()
    main = load_checkpoint(state.main_checkpoint, "main")
    new = load_device_data(data_path)
    check_fits_fleet(new, state)
    if state.reference_file.exists():
        check_reference_disjoint(load_reference(state), [new])
    new, dropped = drop_forgotten(state, new)
    if len(new) == 0:
        raise DataError(f"{data_path} adds no sample" + (" (all were forgotten before)" if dropped else ""),
                        hint="nothing was changed")
    data = load_data_of_record(state)
    if manifest_of(data).sha256 != main.meta.get("manifest_sha256"):
        raise CheckpointError(f"{data_of_record_path(state)} is not the data {state.main_checkpoint} was trained on",
                              hint="run 'hdus-edge train' again")
    joined = concatenate([data, new], name="train")
    trained = fit_and_save_main(state, joined, epochs=int(main.meta["epochs"]), seed=int(main.meta["seed"]),
                                threads=int(main.meta.get("threads", 1)), progress=progress,
                                shards=int(main.meta.get("shard_count", 1)), previous=main)
    return _distill_and_export(state, trained, action="add", request_id=uuid.uuid4().hex, ids=len(new),
                               before=len(data), removed=0, added=len(new), dropped=dropped, retire=None,
                               reason="", created_at=created_at, began=began)


def _exported_seed(state: StateDir) -> tuple[int, str] | None:
    """(version, sha256) of the seed exported now, None before the first export."""
    if not state.seed_info_file.exists() or not (state.models / "seed.onnx").exists():
        return None
    return state.seed_version(), sha256_hex((state.models / "seed.onnx").read_bytes())


def _distill_and_export(
    state: StateDir,
    trained: Any,
    *,
    action: str,
    request_id: str,
    ids: int,
    before: int,
    removed: int,
    added: int,
    dropped: int,
    retire: tuple[int, str] | None,
    reason: str,
    created_at: str | None,
    began: float,
) -> NewVersionReport:
    from hdus_edge.learning.steps import distill_step, export_step, load_checkpoint

    old = load_checkpoint(state.seed_checkpoint, "seed") if state.seed_checkpoint.exists() else None
    seed = int(old.meta.get("seed", 0)) if old else 0
    epochs = int(old.meta["epochs"]) if old else None
    distilled = distill_step(state, epochs=epochs, seed=seed, threads=int(old.meta.get("threads", 1)) if old else 1)
    if retire is not None:
        # Before export writes seed.json: the agent reads this when it sees the new version.
        write_json(retire_path(state), {"format": 1, "request_id": request_id, "version": state.seed_version() + 1,
                                        "retired_sha256": [retire[1]], "reason": reason, "issued_at": time.time()})
    exported = export_step(state, created_at=created_at)
    return NewVersionReport(
        state.device().device.id, action, request_id, ids, removed, added, before, trained.samples, dropped,
        trained.shards, list(trained.retrained_shards), list(trained.reused_shards),
        trained.manifest_sha256, exported.seed_version, exported.seed_sha256, None if retire is None else retire[1],
        trained.seconds, distilled.seconds, time.perf_counter() - began,
    )
