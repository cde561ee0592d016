"""The paper's baselines, run on the same fleet (data, device ids, architectures, graph) as HDUS.

Methods (each module's docstring says what it is, how it forgets, what it costs):

- ``isgd``: local training only; forgetting drops the device (exact, free).
- ``dsgd``: decentralized SGD with neighbour averaging; forgetting retrains everyone (exact, costly).
- ``fedunl``: FedAvg; forgetting subtracts stored updates and repairs (approximate).
- ``fedunl-retrain``: FedAvg; forgetting retrains from scratch (exact, costly).
- ``sisa-a``: every device holds its neighbours' full models; forgetting deletes one (exact, free,
  but full models travel and run).

Usage::

    method = make_baseline("dsgd", arch="resnet-8")
    before = method.fit(data, device_ids, archs, graph, BaselineBudget.reduced())
    cost = method.forget("dev-5")
    after = method.evaluate()
    check = exact_check(method)  # a never-joined rerun, compared
"""

from __future__ import annotations

from typing import Any

from hdus_edge.errors import ConfigError
from hdus_edge.sim.baselines.base import (
    Baseline,
    BaselineBudget,
    BaselineProgress,
    FleetSetup,
    ForgetCost,
    MethodResult,
    device_seed,
)
from hdus_edge.sim.baselines.dsgd import DSGD, mixing_weights
from hdus_edge.sim.baselines.exact import (
    ExactCheck,
    compare_runs,
    exact_check,
    never_joined,
    retrained_check,
)
from hdus_edge.sim.baselines.fedunl import FedUnl, FedUnlRetrain
from hdus_edge.sim.baselines.isgd import ISGD
from hdus_edge.sim.baselines.local import LocalModel, LocalModels, train_local_models
from hdus_edge.sim.baselines.sgd import message_bytes
from hdus_edge.sim.baselines.sisa import SisaA

METHODS: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (ISGD, DSGD, FedUnl, FedUnlRetrain, SisaA)
}


def make_baseline(name: str, **options: Any) -> Baseline:
    """A fresh, unfitted run of method ``name`` (``METHODS``), with its constructor ``options``."""
    cls = METHODS.get(name.strip().lower())
    if cls is None:
        raise ConfigError(f"unknown baseline {name!r}", hint=f"use one of {', '.join(METHODS)}")
    return cls(**options)


__all__ = [
    "DSGD",
    "ISGD",
    "METHODS",
    "Baseline",
    "BaselineBudget",
    "BaselineProgress",
    "ExactCheck",
    "FedUnl",
    "FedUnlRetrain",
    "FleetSetup",
    "ForgetCost",
    "LocalModel",
    "LocalModels",
    "MethodResult",
    "SisaA",
    "compare_runs",
    "device_seed",
    "exact_check",
    "make_baseline",
    "message_bytes",
    "mixing_weights",
    "never_joined",
    "retrained_check",
    "train_local_models",
]
