"""SISA-A: every device holds its neighbours' full main models and averages their outputs with its own.

What it is: SISA (Bourtoule et al.: shard, isolate, slice, aggregate) with one shard per device.
Each device trains its main model on its own data only (exactly as ISGD and the HDUS main models),
then sends the whole model to every neighbour; a device predicts with the mean of the class
probabilities of its own model and every model it holds (models may differ in architecture).
It is HDUS without distillation: full models travel instead of ~5k-parameter seeds.

How it forgets: every holder deletes the forgotten device's model. Nothing a device trained ever
depended on a neighbour, so the result is the never-joined fleet (exact).

What it costs: training sends each main model to each neighbour once (full model size x degree x
4 bytes, the price HDUS's seeds cut); predicting runs 1 + degree full models; forgetting sends
nothing and redoes no training.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from hdus_edge.ensemble.combine import softmax
from hdus_edge.learning.train import predict_logits
from hdus_edge.sim.baselines.base import FleetSetup, ForgetCost
from hdus_edge.sim.baselines.local import LocallyTrained, LocalModels
from hdus_edge.sim.baselines.sgd import message_bytes

logger = logging.getLogger(__name__)


class SisaA(LocallyTrained):
    """Own model + neighbours' full models, uniform mean of probabilities."""

    name = "sisa-a"
    exact_forgetting = True

    def __init__(
        self, *, local_models: LocalModels | None = None, workers: int | None = None, augment: bool = True
    ) -> None:
        super().__init__(local_models=local_models, workers=workers, augment=augment)
        self._holdings: dict[str, tuple[str, ...]] = {}  # holder -> owners of the models it holds, sorted
        # Models never change after fit, so logits are cached per (owner, input bytes).
        self._logits: dict[tuple[str, bytes], np.ndarray] = {}

    def _exchange(self, setup: FleetSetup) -> int:
        self._holdings = {i: tuple(sorted(setup.graph[i])) for i in setup.device_ids}
        # Device j sends its whole model to each neighbour, once.
        return sum(message_bytes(self._models[j]) for i in setup.device_ids for j in self._holdings[i])

    def holdings(self, device_id: str) -> tuple[str, ...]:
        """Owners of the full models ``device_id`` holds (its neighbours, sorted)."""
        return self._holdings[device_id]

    def _forget(self, device_id: str) -> ForgetCost:
        self._drop(device_id)
        held_by = [i for i, owners in self._holdings.items() if device_id in owners]
        self._holdings = {i: tuple(o for o in owners if o != device_id)
                          for i, owners in self._holdings.items() if i != device_id}
        del self._models[device_id]
        self._logits = {k: v for k, v in self._logits.items() if k[0] != device_id}
        return ForgetCost(0.0, 0.0, 0, True, f"{len(held_by)} holders deleted the device's full model; no retraining")

    def outputs(self, device_id: str, x: np.ndarray) -> np.ndarray:
        self.setup.client(device_id)  # validates the id
        members = (device_id, *self._holdings[device_id])  # own model first, then by owner id: a fixed sum order
        return np.mean([softmax(self._member_logits(m, x)) for m in members], axis=0).astype(np.float32)

    def _member_logits(self, owner: str, x: np.ndarray) -> np.ndarray:
        digest = hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).digest()
        key = (owner, digest + f"{x.shape}{x.dtype}".encode())
        if key not in self._logits:
            self._logits[key] = predict_logits(self._models[owner], x)
        return self._logits[key]
