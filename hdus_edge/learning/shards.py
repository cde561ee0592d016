"""Fit a device's main model, whole or as K SISA shards, reusing shards whose data did not change (torch).

With ``shards == 1`` the main model is the profile's architecture trained on all the data, exactly
as before sharding existed. With ``shards = K > 1`` each sample goes to shard ``shard_of(id, K)``
(a function of its content hash only) and shard k's model is the architecture trained on shard k's
samples, in training order, with its own seed; the main model is their ``ShardedMain``. A shard's
weights therefore depend only on (arch, its samples in order, its seed, epochs, batch size): when
those are the same as in the previous main model, the previous weights are exactly what retraining
would give, and are reused. That is what makes forgetting a sample cost one shard's training while
staying bit-identical to training from scratch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hdus_edge.data import Dataset
from hdus_edge.data.manifest import Manifest, ids_sha256, shard_indices
from hdus_edge.learning.train import (
    Progress,
    TrainConfig,
    accuracy,
    predict_logits,
    torch_threads,
    train,
)
from hdus_edge.models import build_model
from hdus_edge.models.sharded import ShardedMain

logger = logging.getLogger(__name__)

SHARD_SEED_STRIDE = 7919  # shard k trains with seed + k * stride: distinct streams, same for K = 1
MIN_SHARD_BATCH = 8


def shard_batch_size(batch_size: int, shards: int) -> int:
    """A shard's batch: ``batch_size / K``, at least 8.

    A shard holds 1/K of the samples; at the whole model's batch it would take 1/K of the optimiser
    steps, and on small local sets that undertrains it (MNIST, 800 samples, mobilenet-m, 20 epochs:
    one shard of K = 8 at batch 32 reached 53%, the K = 8 ensemble 84.5%, against 98.5% unsharded).
    At batch 32/K a shard takes as many steps as the whole model on 1/K of the samples: the K = 4
    ensemble reached 98.0%, K = 8 (batch 8) 95.5%, at about 1/3.5 and 1/13 of the unsharded
    model's training time per retrained shard.
    """
    return max(MIN_SHARD_BATCH, batch_size // shards) if shards > 1 else batch_size


@dataclass(frozen=True)
class MainFit:
    """A fitted main model and what it took."""

    model: nn.Module
    shards: list[dict[str, Any]] | None  # per non-empty shard: index, ids_sha256, samples, seed, ... (None: K = 1)
    retrained: list[int]  # shard indices trained now (K = 1: [0])
    reused: list[int]
    steps: int
    final_loss: float
    train_accuracy: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def shard_key(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What a shard's weights depend on; equal keys mean equal weights (training is deterministic)."""
    return (meta["arch"], meta["ids_sha256"], meta["seed"], meta["epochs"], meta["batch_size"], meta["threads"])


def reusable(previous: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """True when a previous shard's weights are exactly what training ``wanted`` would give."""
    return previous is not None and shard_key(previous) == shard_key(wanted)


def fit_main(
    data: Dataset,
    manifest: Manifest,
    *,
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    cfg: TrainConfig,
    shards: int,
    threads: int = 1,
    progress: Progress | None = None,
    previous: tuple[nn.Module, list[dict[str, Any]]] | None = None,
) -> MainFit:
    """Train the main model on ``data`` (whose ids are ``manifest``), whole or in ``shards`` shards.

    ``previous`` = (the previous ``ShardedMain``, its shard meta): shards whose key is unchanged
    keep their weights. ``cfg.seed`` is the device's seed; shard k uses ``seed + k * 7919``.
    """
    if len(manifest.ids) != len(data):
        raise ValueError(f"manifest has {len(manifest.ids)} ids for {len(data)} samples")
    start = time.perf_counter()
    if shards == 1:
        model = build_model(arch, input_shape, num_classes, seed=cfg.seed)  # type: ignore[arg-type]
        with torch_threads(threads):
            report = train(model, data, cfg, progress)
        return MainFit(model, None, [0], [], report.steps, report.final_loss, report.train_accuracy,
                       time.perf_counter() - start)
    old: dict[int, tuple[nn.Module, dict[str, Any]]] = {}
    if previous is not None:
        prev_model, prev_meta = previous
        members = list(prev_model.members) if isinstance(prev_model, ShardedMain) else []
        if len(members) == len(prev_meta):
            old = {int(m["index"]): (member, m) for member, m in zip(members, prev_meta)}
    members_out: list[nn.Module] = []
    meta_out: list[dict[str, Any]] = []
    retrained, reused, steps, loss = [], [], 0, float("nan")
    for k, idx in enumerate(shard_indices(manifest.ids, shards)):
        if len(idx) == 0:
            continue  # an empty shard has no model (it would only add an untrained voice)
        seed_k = cfg.seed + k * SHARD_SEED_STRIDE
        batch_k = shard_batch_size(cfg.batch_size, shards)
        wanted = {"index": k, "arch": arch, "ids_sha256": ids_sha256(manifest.ids[i] for i in idx),
                  "samples": len(idx), "seed": seed_k, "epochs": cfg.epochs, "batch_size": batch_k,
                  "threads": threads}
        prior = old.get(k)
        if prior is not None and reusable(prior[1], wanted):
            member = build_model(arch, input_shape, num_classes, seed=seed_k)  # type: ignore[arg-type]
            member.load_state_dict(prior[0].state_dict())
            reused.append(k)
            wanted = dict(prior[1])  # a reused shard keeps the record of what it was trained on
        else:
            member = build_model(arch, input_shape, num_classes, seed=seed_k)  # type: ignore[arg-type]
            shard_cfg = TrainConfig(epochs=cfg.epochs, batch_size=batch_k, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, seed=seed_k, augment=cfg.augment)
            with torch_threads(threads):
                report = train(member, data.subset(idx), shard_cfg, progress)
            steps += report.steps
            loss = report.final_loss
            retrained.append(k)
        member.eval()
        members_out.append(member)
        meta_out.append(wanted)
    model = ShardedMain(members_out).eval()
    with torch_threads(threads), torch.no_grad():
        acc = accuracy(predict_logits(model, data.x), data.y)
    logger.info("fitted %d shards (%d retrained, %d reused)", len(members_out), len(retrained), len(reused))
    return MainFit(model, meta_out, retrained, reused, steps, loss, acc, time.perf_counter() - start)


def build_sharded(arch: str, input_shape: tuple[int, int, int], num_classes: int, meta: list[dict[str, Any]]) -> ShardedMain:
    """An empty ``ShardedMain`` with the members ``meta`` describes (for loading a checkpoint)."""
    return ShardedMain([build_model(arch, input_shape, num_classes, seed=int(m["seed"])) for m in meta])  # type: ignore[arg-type]


