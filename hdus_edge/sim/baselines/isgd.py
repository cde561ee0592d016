"""ISGD: isolated SGD, every device trains on its own data and nothing else.

What it is: each device's main model, trained exactly as an HDUS main model (same ``train``, same
hyper-parameters, same per-device seed), with no collaboration at all. It is HDUS with lam = 0:
the floor that tells how much the neighbours' seeds add.

How it forgets: the device is dropped. No other model ever saw anything of it, so the remaining
fleet is the never-joined fleet (exact).

What it costs: training is local only (no bytes on the network); forgetting costs nothing.
"""

from __future__ import annotations

import logging

import numpy as np

from hdus_edge.ensemble.combine import softmax
from hdus_edge.learning.train import predict_logits
from hdus_edge.sim.baselines.base import ForgetCost
from hdus_edge.sim.baselines.local import LocallyTrained

logger = logging.getLogger(__name__)


class ISGD(LocallyTrained):
    """Local training only; ``local_models`` lets it share a training run with ``SisaA``."""

    name = "isgd"
    exact_forgetting = True

    def _forget(self, device_id: str) -> ForgetCost:
        self._drop(device_id)
        del self._models[device_id]
        return ForgetCost(0.0, 0.0, 0, True, "local-only: no other model ever saw the device; its model is deleted")

    def outputs(self, device_id: str, x: np.ndarray) -> np.ndarray:
        self.setup.client(device_id)  # validates the id
        return softmax(predict_logits(self._models[device_id], x))
