"""What retraining-based unlearning costs: the seconds to train a whole fleet again (torch).

DSGD and FedUnl (retrained from scratch, its exact variant) forget anything, a device or a single
sample, by training the fleet again; their fit time on the same data is that price. Measured with
the same per-device epochs as the HDUS main models, one thread, so benches can set it side by side.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from hdus_edge.data import FleetData
from hdus_edge.sim.baselines import BaselineBudget, make_baseline
from hdus_edge.topology import complete

DEFAULT_METHODS = ("dsgd", "fedunl-retrain")


def fleet_retrain_seconds(
    data: FleetData,
    device_ids: Sequence[str],
    *,
    arch: str,
    epochs: int,
    seed: int = 0,
    methods: Sequence[str] = DEFAULT_METHODS,
) -> dict[str, float]:
    """Seconds each method takes to train the fleet (``epochs`` rounds of one local epoch)."""
    budget = BaselineBudget(epochs=epochs, rounds=epochs, local_epochs=1, batch_size=32, lr=3e-3, seed=seed)
    out = {}
    for name in methods:
        method = make_baseline(name, arch=arch, workers=1)
        began = time.perf_counter()
        method.fit(data, list(device_ids), arch, complete(list(device_ids)), budget)
        out[name] = time.perf_counter() - began
    return out
