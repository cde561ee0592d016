"""Local-only training of every device's main model: the shared first step of ISGD and SISA-A.

Each device trains its own architecture on its own data with ``hdus_edge.train.train`` and the
HDUS defaults (Adam, one-cycle, +-1 pixel shifts), so with the same per-device seed an ISGD model
is bit for bit the HDUS main model. Devices are independent, so they train in worker processes;
the result does not depend on how devices are spread over workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from hdus_edge.data import Dataset, dataset_sha256
from hdus_edge.errors import ConfigError
from hdus_edge.fleet import default_workers
from hdus_edge.models import build_model
from hdus_edge.sim.baselines.base import Baseline, BaselineBudget, BaselineProgress, FleetSetup, device_seed
from hdus_edge.sim.baselines.sgd import torch_threads
from hdus_edge.train import TrainConfig, TrainReport, train

logger = logging.getLogger(__name__)


@dataclass
class LocalModel:
    """One device's main model, trained on its own data only, and what it was trained from."""

    device_id: str
    arch: str
    model: nn.Module
    report: TrainReport
    budget: BaselineBudget
    data_sha256: str  # of the training split: reuse must be on the very same data


@dataclass
class LocalModels:
    """Every device's local model, and the wall seconds training them took here."""

    models: dict[str, LocalModel]
    seconds: float


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
    """Train every device's main model on its own data; ``workers`` > 1 uses worker processes.

    Pass the result to ``ISGD`` and ``SisaA`` (``local_models=``) to train once for both.
    """
    start = time.perf_counter()
    jobs = [
        (d, setup.arch(d), setup.client(d).train, local_train_config(budget, d, augment), budget)
        for d in setup.device_ids
    ]
    workers = default_workers() if workers is None else workers
    out: dict[str, LocalModel] = {}
    if workers <= 1 or len(jobs) <= 1:
        with torch_threads(1):  # the same thread count as a worker: identical floats either way
            for n, job in enumerate(jobs):
                out[job[0]] = _train_one(*job)
                if progress is not None:
                    progress("train", n + 1, len(jobs))
        return LocalModels(out, time.perf_counter() - start)
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools started can hang
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(_train_one, *job) for job in jobs]
        for n, fut in enumerate(futures):
            model = fut.result()
            out[model.device_id] = model
            if progress is not None:
                progress("train", n + 1, len(jobs))
    return LocalModels(out, time.perf_counter() - start)


def check_reusable(local: LocalModels, setup: FleetSetup, budget: BaselineBudget) -> None:
    """Raise ``ConfigError`` unless ``models`` were trained for exactly this setup and budget."""
    for d in setup.device_ids:
        m = local.models.get(d)
        if m is None:
            raise ConfigError(f"no pre-trained local model for device {d!r}")
        if m.arch != setup.arch(d) or m.budget != budget or m.data_sha256 != dataset_sha256(setup.client(d).train):
            raise ConfigError(
                f"pre-trained local model of {d!r} was trained for another arch, budget or data",
                hint="train local models with the same setup and budget, or let fit() train them",
            )


def _train_one(device_id: str, arch: str, data: Dataset, cfg: TrainConfig, budget: BaselineBudget) -> LocalModel:
    model = build_model(arch, data.input_shape, data.num_classes, seed=cfg.seed)
    report = train(model, data, cfg)
    return LocalModel(device_id, arch, model, report, budget, dataset_sha256(data))


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


class LocallyTrained(Baseline):
    """A baseline whose every model is one device's main model, trained on its own data only.

    ``local_models`` (from :func:`train_local_models` on the same setup and budget) skips training, so
    ISGD and SISA-A can share one training run; ``fit`` then reports the seconds that run took.
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
