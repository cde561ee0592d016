"""What every baseline shares: the budget it trains under, the results it returns, the fleet it runs on.

A baseline is one run: ``fit`` trains it on a ``FleetSetup`` (the same ``FleetData``, device ids,
architectures and neighbour graph as the HDUS fleet), ``forget`` removes one device and says what
that cost, ``evaluate`` measures every remaining device, ``recovery_curve`` tells how accuracy came
back after forgetting. After ``forget`` the baseline's ``setup`` is the fleet without the device, so
``setup`` is also exactly what a never-joined rerun must be fitted on (see ``exact.py``).

Every random choice derives from ``BaselineBudget.seed`` and, per device, from its id
(:func:`device_seed`), never from its position in a list: removing a device leaves every other
device's randomness as it was, which is what makes "retrain without j" comparable bit for bit.
"""

from __future__ import annotations

import logging
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from hdus_edge.data import ClientData, FleetData
from hdus_edge.errors import ConfigError
from hdus_edge.learning.train import accuracy, deterministic_torch
from hdus_edge.models import resolve_arch
from hdus_edge.sim.baselines.sgd import torch_threads
from hdus_edge.topology import Graph, without

logger = logging.getLogger(__name__)

# progress(phase, done, total): phase is "train", "forget" or "repair".
BaselineProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BaselineBudget:
    """How much training a baseline gets.

    Local-only methods (ISGD, SISA-A) train ``epochs`` passes over each device's data; collaborative
    ones (DSGD, FedUnl) run ``rounds`` rounds of ``local_epochs`` passes each. Keep
    ``rounds * local_epochs`` near ``epochs`` so every method sees its data about as often.
    """

    epochs: int = 30  # as the HDUS main models (TrainConfig): small local sets need many passes
    rounds: int = 30
    local_epochs: int = 1  # one pass between exchanges: more drifts apart on non-iid data
    batch_size: int = 32
    lr: float = 3e-3  # Adam, as the HDUS main models
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.epochs, self.rounds, self.local_epochs, self.batch_size) < 1 or not self.lr > 0:
            raise ValueError(f"invalid BaselineBudget: {self}")

    @classmethod
    def reduced(cls, seed: int = 0) -> BaselineBudget:
        """The demo's budget: 8 passes per device, every method on digits in well under a minute."""
        return cls(epochs=8, rounds=4, local_epochs=2, batch_size=16, lr=1e-2, seed=seed)

    @classmethod
    def full(cls, seed: int = 0) -> BaselineBudget:
        """The benchmark's budget (MNIST, 6 x 800 samples): 20 passes per device."""
        return cls(epochs=20, rounds=10, local_epochs=2, batch_size=32, lr=5e-3, seed=seed)


@dataclass(frozen=True)
class ForgetCost:
    """What forgetting one device cost.

    ``epochs_redone`` counts passes over local data summed over devices (3 devices x 2 epochs = 6);
    ``bytes_sent`` counts model payloads at 4 bytes per float; ``exact`` says whether the remaining
    models are now those of a fleet the device never joined.
    """

    seconds: float
    epochs_redone: float
    bytes_sent: int
    exact: bool
    notes: str
    device_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return {
            "device_id": self.device_id, "seconds": self.seconds, "epochs_redone": self.epochs_redone,
            "bytes_sent": self.bytes_sent, "exact": self.exact, "notes": self.notes,
        }


@dataclass(frozen=True)
class MethodResult:
    """Accuracy of every remaining device, and what training cost (wall seconds, bytes on the network)."""

    name: str
    acc_local: dict[str, float]
    acc_global: dict[str, float]
    train_seconds: float
    train_bytes_sent: int

    @property
    def mean_local(self) -> float:
        """Mean over devices of the accuracy on each device's own test split."""
        return _mean(self.acc_local.values())

    @property
    def mean_global(self) -> float:
        """Mean over devices of the accuracy on the global test set."""
        return _mean(self.acc_global.values())

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return {
            "name": self.name, "acc_local": dict(self.acc_local), "acc_global": dict(self.acc_global),
            "mean_local": self.mean_local, "mean_global": self.mean_global,
            "train_seconds": self.train_seconds, "train_bytes_sent": self.train_bytes_sent,
        }


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def device_seed(seed: int, device_id: str) -> int:
    """The seed of every random choice ``device_id`` makes under run seed ``seed``.

    Depends on the id, not on the device's position, so it survives removing other devices;
    CRC-32 rather than ``hash()``, which Python salts per process.
    """
    return (int(seed) * 1_000_003 + zlib.crc32(device_id.encode())) % (2**31 - 1)


@dataclass(frozen=True, eq=False)
class FleetSetup:
    """The fleet a baseline runs on: ``data.clients[k]`` is the private data of ``device_ids[k]``."""

    data: FleetData
    device_ids: tuple[str, ...]
    archs: tuple[str, ...]
    graph: Graph = field(repr=False)

    @classmethod
    def build(
        cls, data: FleetData, device_ids: Sequence[str], archs: Sequence[str] | str, graph: Graph
    ) -> FleetSetup:
        """Validate and normalise ``fit``'s arguments (``archs``: one per device, or one for all)."""
        ids = tuple(device_ids)
        if len(ids) != data.n_clients:
            raise ConfigError(f"{len(ids)} device ids for {data.n_clients} clients", hint="give one id per client")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"device ids are not unique: {list(ids)}")
        names = [archs] * len(ids) if isinstance(archs, str) else list(archs)
        if len(names) != len(ids):
            raise ConfigError(f"{len(names)} architectures for {len(ids)} devices", hint="give one per device")
        known = set(ids)
        unknown = sorted((set(graph) | {n for nbrs in graph.values() for n in nbrs}) - known)
        if unknown:
            raise ConfigError(f"neighbour graph names unknown devices: {unknown}")
        # Undirected, as hdus_edge.topology builds them; a device missing from the graph has no neighbours.
        full = {i: frozenset(graph.get(i, frozenset())) - {i} for i in ids}
        for i, nbrs in full.items():
            for j in nbrs:
                if i not in full[j]:
                    raise ConfigError(f"neighbour graph is not symmetric: {i} -> {j} but not back")
        return cls(data, ids, tuple(resolve_arch(a) for a in names), full)

    def client(self, device_id: str) -> ClientData:
        """The private data of ``device_id``."""
        return self.data.clients[self._index(device_id)]

    def arch(self, device_id: str) -> str:
        """The main architecture of ``device_id``."""
        return self.archs[self._index(device_id)]

    def without(self, device_id: str) -> FleetSetup:
        """The same fleet in which ``device_id`` never existed (its data, arch and links gone)."""
        k = self._index(device_id)
        data = FleetData(
            clients=[c for i, c in enumerate(self.data.clients) if i != k], reference=self.data.reference,
            test=self.data.test, reference_kind=self.data.reference_kind, seed=self.data.seed,
            scheme=self.data.scheme,
        )
        keep = [i for i in range(len(self.device_ids)) if i != k]
        return FleetSetup(
            data, tuple(self.device_ids[i] for i in keep), tuple(self.archs[i] for i in keep),
            without(self.graph, device_id),
        )

    def _index(self, device_id: str) -> int:
        try:
            return self.device_ids.index(device_id)
        except ValueError:
            raise ConfigError(
                f"unknown device {device_id!r}", hint=f"devices: {', '.join(self.device_ids) or 'none'}"
            ) from None


class Baseline(ABC):
    """One run of one method (a fresh instance per run).

    Subclasses implement ``_fit``, ``_forget``, ``outputs``, ``model_states`` and ``fresh``; this class
    keeps the setup, times forgetting, evaluates, and holds the recovery curve. Training and
    forgetting run with torch on one thread per device and deterministic kernels.
    """

    name: ClassVar[str]
    exact_forgetting: ClassVar[bool]  # whether ``forget`` leaves a never-joined fleet

    def __init__(self) -> None:
        self._setup: FleetSetup | None = None
        self._budget: BaselineBudget | None = None
        self._train_seconds = 0.0
        self._train_bytes = 0
        self._forgotten: list[str] = []
        # (x, mean local accuracy) after the latest forget; x counts rounds of work done since.
        self._curve: list[tuple[float, float]] = []

    # --- the interface -------------------------------------------------------------------

    def fit(
        self,
        data: FleetData,
        device_ids: Sequence[str],
        archs: Sequence[str] | str,
        graph: Graph,
        budget: BaselineBudget,
        progress: BaselineProgress | None = None,
    ) -> MethodResult:
        """Train on the fleet (``data.clients[k]`` belongs to ``device_ids[k]``); return its accuracy."""
        if self._setup is not None:
            raise ValueError(f"{self.name}: this instance was fitted already; use fresh() for another run")
        setup = FleetSetup.build(data, device_ids, archs, graph)
        with torch_threads(1), deterministic_torch():
            self._train_seconds, self._train_bytes = self._fit(setup, budget, progress)
        self._setup, self._budget = setup, budget
        logger.info("%s: fitted %d devices in %.1fs, %d bytes sent", self.name, len(setup.device_ids),
                    self._train_seconds, self._train_bytes)
        return self.evaluate()

    def forget(self, device_id: str) -> ForgetCost:
        """Remove ``device_id``; afterwards no remaining model depends on it (unless ``exact=False``)."""
        self.setup.client(device_id)  # validates the id before anything changes
        self._curve = []
        start = time.perf_counter()
        with torch_threads(1), deterministic_torch():
            cost = self._forget(device_id)
        cost = replace(cost, seconds=time.perf_counter() - start, device_id=device_id)
        self._forgotten.append(device_id)
        if not self._curve:  # nothing was redone: accuracy is back at once
            self._curve = [(0.0, self.evaluate().mean_local)]
        logger.info("%s: forgot %s in %.2fs: %s", self.name, device_id, cost.seconds, cost.notes)
        return cost

    def evaluate(self) -> MethodResult:
        """Accuracy of every remaining device on its own test split and on the global test set."""
        setup = self.setup
        local, global_ = {}, {}
        with torch_threads(1):
            for d in setup.device_ids:
                test = setup.client(d).test
                local[d] = accuracy(self.outputs(d, test.x), test.y)
                global_[d] = accuracy(self.outputs(d, setup.data.test.x), setup.data.test.y)
        return MethodResult(self.name, local, global_, self._train_seconds, self._train_bytes)

    def recovery_curve(self) -> list[tuple[float, float]]:
        """``(rounds of work after the latest forget, mean local accuracy)``; empty before any forget.

        A method that does no work to forget has one point at x = 0; retraining methods have one per
        round, from the model they restart with.
        """
        return list(self._curve)

    @abstractmethod
    def outputs(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] that ``device_id`` predicts for ``x``."""

    @abstractmethod
    def model_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every model the run holds now, by a stable name (for bit-for-bit comparisons)."""

    @abstractmethod
    def fresh(self) -> Baseline:
        """An unfitted instance with the same settings (architecture pinned once fitted)."""

    @abstractmethod
    def _fit(self, setup: FleetSetup, budget: BaselineBudget, progress: BaselineProgress | None) -> tuple[float, int]:
        """Train; return (wall seconds, bytes sent)."""

    @abstractmethod
    def _forget(self, device_id: str) -> ForgetCost:
        """Forget (``_drop`` first); ``seconds`` and ``device_id`` are filled in by ``forget``.

        Methods that redo work record ``self._curve`` per round as they go.
        """

    # --- helpers for subclasses ----------------------------------------------------------

    @property
    def setup(self) -> FleetSetup:
        """The fleet as it is now (without every forgotten device)."""
        if self._setup is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self._setup

    @property
    def budget(self) -> BaselineBudget:
        """The budget ``fit`` was given."""
        if self._budget is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self._budget

    @property
    def devices(self) -> tuple[str, ...]:
        """The remaining devices."""
        return self.setup.device_ids

    @property
    def forgotten(self) -> tuple[str, ...]:
        """The devices forgotten so far, in order."""
        return tuple(self._forgotten)

    def _drop(self, device_id: str) -> FleetSetup:
        """Remove ``device_id`` from the setup (validating it) and return the new setup."""
        self._setup = self.setup.without(device_id)
        return self._setup
