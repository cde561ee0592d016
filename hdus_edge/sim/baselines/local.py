"""Local-only training of every device's main model: the shared first step of ISGD and SISA-A.

Each device trains its own architecture on its own data with ``hdus_edge.learning.train.train`` and the HDUS
defaults (Adam, one-cycle, +-1 pixel shifts), seeded by :func:`device_seed`, so an ISGD model is bit
for bit the HDUS main model of a device with that seed. Devices are independent, so they train on
parallel threads; the result does not depend on how many.

:class:`LocallyTrained` is the base of ISGD and SISA-A: both hold exactly these models, and can
share one training run (``local_models=``), or take an HDUS fleet's main models
(:meth:`LocalModels.from_fleet`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hdus_edge.data import dataset_sha256
from hdus_edge.errors import ConfigError
from hdus_edge.learning.inprocess import TrainedDevice, default_workers
from hdus_edge.learning.train import (
    TrainConfig,
    TrainReport,
    deterministic_torch,
    train,
)
from hdus_edge.models import build_model
from hdus_edge.sim.baselines.base import (
    Baseline,
    BaselineBudget,
    BaselineProgress,
    FleetSetup,
    device_seed,
)
from hdus_edge.sim.baselines.sgd import parallel_map, torch_threads

logger = logging.getLogger(__name__)


@dataclass
class LocalModel:
    """One device's main model, trained on its own data only, and what it was trained from."""

    device_id: str
    arch: str
    model: nn.Module
    report: TrainReport
    data_sha256: str  # of the training split: reuse must be on the very same data
    budget: BaselineBudget | None  # None: trained elsewhere (an HDUS fleet's main model)


@dataclass
class LocalModels:
    """Every device's local model, and the wall seconds training them took."""

    models: dict[str, LocalModel]
    seconds: float

    @classmethod
    def from_fleet(cls, devices: Sequence[TrainedDevice], seconds: float) -> LocalModels:
        """The main models of an HDUS fleet (``hdus_edge.learning.inprocess``), which are ISGD's models by definition.

        ``seconds`` is what training them took; ``fit`` reports it as its training time.
        """
        return cls(
            {
                d.spec.device_id: LocalModel(d.spec.device_id, d.spec.main_arch, d.main, d.train_report, "", None)
                for d in devices
            },
            seconds,
        )


def local_train_config(budget: BaselineBudget, device_id: str, augment: bool = True) -> TrainConfig:
    """The ``TrainConfig`` of ``device_id``'s main model under ``budget``."""
    return TrainConfig(
        epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
        seed=device_seed(budget.seed, device_id), augment=augment,
    )


def train_local_models(
    setup: FleetSetup,
    budget: BaselineBudget,
    *,
    augment: bool = True,
    workers: int | None = None,
    progress: BaselineProgress | None = None,
) -> LocalModels:
    """Train every device's main model on its own data, on ``workers`` threads (default: per core).

    Pass the result to ``ISGD`` and ``SisaA`` (``local_models=``) to train once for both.
    """
    start = time.perf_counter()
    ids = setup.device_ids
    configs = {d: local_train_config(budget, d, augment) for d in ids}
    # Built here, serially: build_model seeds torch's global RNG, which threads must not share.
    models = {d: build_model(setup.arch(d), setup.data.input_shape, setup.data.num_classes, seed=configs[d].seed)
              for d in ids}

    def one(d: str) -> LocalModel:
        report = train(models[d], setup.client(d).train, configs[d])
        return LocalModel(d, setup.arch(d), models[d], report, dataset_sha256(setup.client(d).train), budget)

    def done(n: int) -> None:
        if progress is not None:
            progress("train", n, len(ids))

    # The outer deterministic context keeps the flag on while train()'s own contexts nest and unwind.
    with torch_threads(1), deterministic_torch():
        trained = parallel_map(one, list(ids), default_workers() if workers is None else workers, done)
    return LocalModels({m.device_id: m for m in trained}, time.perf_counter() - start)


def check_reusable(local: LocalModels, setup: FleetSetup, budget: BaselineBudget) -> None:
    """Raise ``ConfigError`` unless ``local`` holds a model of the right arch, data and budget per device."""
    for d in setup.device_ids:
        m = local.models.get(d)
        if m is None:
            raise ConfigError(f"no pre-trained local model for device {d!r}")
        wrong = []
        if m.arch != setup.arch(d):
            wrong.append(f"arch {m.arch} (setup: {setup.arch(d)})")
        if m.budget is not None and m.budget != budget:
            wrong.append("budget")
        if m.data_sha256 and m.data_sha256 != dataset_sha256(setup.client(d).train):
            wrong.append("training data")
        if wrong:
            raise ConfigError(
                f"pre-trained local model of {d!r} does not match this run: {', '.join(wrong)}",
                hint="train local models with the same setup and budget, or let fit() train them",
            )


class LocallyTrained(Baseline):
    """A baseline whose every model is one device's main model, trained on its own data only.

    ``local_models`` skips training (see :class:`LocalModels`); ``fit`` then reports their seconds.
    """

    def __init__(
        self, *, local_models: LocalModels | None = None, workers: int | None = None, augment: bool = True
    ) -> None:
        super().__init__()
        self._local = local_models
        self._workers = workers
        self._augment = augment
        self._models: dict[str, nn.Module] = {}

    def _fit(self, setup: FleetSetup, budget: BaselineBudget, progress: BaselineProgress | None) -> tuple[float, int]:
        local = self._local
        if local is None:
            local = train_local_models(setup, budget, augment=self._augment, workers=self._workers, progress=progress)
        else:
            check_reusable(local, setup, budget)
        self._models = {d: local.models[d].model for d in setup.device_ids}
        return local.seconds, self._exchange(setup)

    def _exchange(self, setup: FleetSetup) -> int:
        """Hand models to neighbours after training; return bytes sent (none for local-only)."""
        return 0

    def model_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {d: {k: v.clone() for k, v in m.state_dict().items()} for d, m in sorted(self._models.items())}

    def fresh(self) -> Baseline:
        # Never the pre-trained models: a never-joined rerun must train from scratch to prove anything.
        return type(self)(workers=self._workers, augment=self._augment)
