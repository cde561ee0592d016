"""FedUnl: federated averaging with a coordinator, and two ways to unlearn a client.

What it is: FedAvg (McMahan et al.). A coordinator holds one global model of one architecture
(``arch``, default the first device's); each round every client (= device) starts from the global
state, makes ``local_epochs`` passes over its own data (a fresh Adam, learning rate decaying over
rounds), and uploads its update; the coordinator adds the mean of the updates weighted by client
sample counts. Every device predicts with the global model. The coordinator replaces the neighbour
graph (a star), which FedUnl ignores.

How it forgets, two methods:

- ``fedunl`` (approximate, ``exact=False``): the coordinator stores every client's update of every
  round. To forget client j it rebuilds the global state as the initial state plus, per round, the
  sample-weighted mean of the *other* clients' stored updates (j's updates subtracted, the weights
  renormalised), deletes j's stored updates, then repairs with ``repair_rounds`` rounds of FedAvg
  over the remaining clients (a few rounds of calibration, as FedEraser does). The repair uses
  remaining clients' data only: nothing of j is read again. It is approximate because every update
  after the first was computed from a global model that had already seen j; the subtraction
  removes j's own contributions, not their echo in everyone else's.
  Why FedAvg repair and not distillation from an ensemble of the remaining clients: it needs nothing
  the coordinator does not already run, no per-client models, and no reference set.
- ``fedunl-retrain`` (exact): retrain from scratch without the client, ``rounds`` rounds. With the
  same seeds this is bit for bit the never-joined run (``exact_check`` proves it).

What it costs: each round sends the global state to every client and one update back (2 x state
floats x clients x 4 bytes); ``fedunl`` also keeps rounds x clients updates on the coordinator.
Forgetting costs ``repair_rounds`` rounds (``fedunl``) or all ``rounds`` again (``fedunl-retrain``)
over the remaining clients.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hdus_edge.ensemble.combine import softmax
from hdus_edge.learning.inprocess import default_workers
from hdus_edge.learning.train import accuracy, predict_logits
from hdus_edge.models import build_model, resolve_arch
from hdus_edge.sim.baselines.base import (
    Baseline,
    BaselineBudget,
    BaselineProgress,
    FleetSetup,
    ForgetCost,
    device_seed,
)
from hdus_edge.sim.baselines.sgd import (
    cosine_lr,
    load_state_vector,
    local_pass,
    message_bytes,
    parallel_map,
    round_seed,
    state_vector,
)

logger = logging.getLogger(__name__)


@dataclass
class StoredRound:
    """What the coordinator keeps of one round: each client's sample count and update (float32 [P])."""

    index: int
    samples: dict[str, int]
    updates: dict[str, torch.Tensor]


class _FedAvg(Baseline):
    """FedAvg training shared by both unlearning methods."""

    _stores_updates = False

    def __init__(self, *, arch: str | None = None, augment: bool = True, workers: int | None = None) -> None:
        super().__init__()
        self._arch = None if arch is None else resolve_arch(arch)
        self._augment = augment
        self._workers = workers
        self._global: nn.Module | None = None
        self._init_state: torch.Tensor | None = None
        self._history: list[StoredRound] = []
        self._next_round = 0

    @property
    def arch(self) -> str | None:
        """The global model's architecture (``None`` until fitted when not given)."""
        return self._arch

    @property
    def history(self) -> list[StoredRound]:
        """The updates the coordinator stores (empty for ``fedunl-retrain``, which needs none)."""
        return self._history

    def _fit(self, setup: FleetSetup, budget: BaselineBudget, progress: BaselineProgress | None) -> tuple[float, int]:
        if self._arch is None:
            self._arch = setup.archs[0]  # pinned: a rerun without device 0 must keep it
        start = time.perf_counter()
        sent = self._train_from_scratch(setup, budget, progress, "train")
        return time.perf_counter() - start, sent

    def _train_from_scratch(
        self,
        setup: FleetSetup,
        budget: BaselineBudget,
        progress: BaselineProgress | None,
        phase: str,
        on_round: Callable[[int], None] | None = None,
    ) -> int:
        assert self._arch is not None
        self._global = build_model(self._arch, setup.data.input_shape, setup.data.num_classes, seed=budget.seed)
        self._init_state = state_vector(self._global)
        self._history, self._next_round = [], 0
        if on_round is not None:
            on_round(0)
        sent = 0
        for r in range(budget.rounds):
            sent += self._round(setup, budget, cosine_lr(budget.lr, r, budget.rounds))
            if on_round is not None:
                on_round(r + 1)
            if progress is not None:
                progress(phase, r + 1, budget.rounds)
        return sent

    def _round(self, setup: FleetSetup, budget: BaselineBudget, lr: float) -> int:
        """One FedAvg round over every device of ``setup``; returns bytes sent."""
        assert self._global is not None
        if not setup.device_ids:  # every client forgotten: nothing to train, nothing sent
            return 0
        index, self._next_round = self._next_round, self._next_round + 1
        start_state = state_vector(self._global)
        samples = {c: len(setup.client(c).train) for c in setup.device_ids}
        # Copies made here, serially; clients then train on parallel threads.
        locals_ = {c: copy.deepcopy(self._global) for c in setup.device_ids}

        def client(c: str) -> torch.Tensor:
            optimiser = torch.optim.Adam(locals_[c].parameters(), lr=lr)  # clients keep no state between rounds
            generator = torch.Generator().manual_seed(round_seed(device_seed(budget.seed, c), index))
            local_pass(locals_[c], optimiser, setup.client(c).train, budget.local_epochs, budget.batch_size,
                       generator, self._augment)
            return state_vector(locals_[c]) - start_state

        workers = default_workers() if self._workers is None else self._workers
        updates = dict(zip(setup.device_ids, parallel_map(client, list(setup.device_ids), workers)))
        load_state_vector(self._global, start_state + _weighted_mean(updates, samples))
        if self._stores_updates:
            self._history.append(StoredRound(index, samples, updates))
        # Download of the global state and upload of an update, per client.
        return 2 * len(setup.device_ids) * message_bytes(self._global)

    def outputs(self, device_id: str, x: np.ndarray) -> np.ndarray:
        self.setup.client(device_id)
        assert self._global is not None
        return softmax(predict_logits(self._global, x))

    def model_states(self) -> dict[str, dict[str, torch.Tensor]]:
        assert self._global is not None
        return {"global": {k: v.clone() for k, v in self._global.state_dict().items()}}

    def fresh(self) -> Baseline:
        return type(self)(arch=self._arch, augment=self._augment, workers=self._workers)

    def _mean_local_acc(self) -> float:
        setup = self.setup
        accs = [accuracy(self.outputs(d, setup.client(d).test.x), setup.client(d).test.y) for d in setup.device_ids]
        return float(np.mean(accs)) if accs else float("nan")


def _weighted_mean(updates: dict[str, torch.Tensor], samples: dict[str, int]) -> torch.Tensor:
    """Sample-weighted mean of ``updates``, summed in the dict's order (fixed float order)."""
    total = sum(samples[c] for c in updates)
    out = torch.zeros_like(next(iter(updates.values())))
    for c, u in updates.items():
        out += (samples[c] / total) * u
    return out


class FedUnlRetrain(_FedAvg):
    """FedAvg; forgetting retrains from scratch without the client (exact)."""

    name = "fedunl-retrain"
    exact_forgetting = True

    def _forget(self, device_id: str) -> ForgetCost:
        """Retrain the global model from scratch over the remaining clients."""
        setup = self._drop(device_id)
        budget = self.budget
        sent = self._train_from_scratch(setup, budget, None, "forget",
                                        lambda done: self._curve.append((float(done), self._mean_local_acc())))
        n = len(setup.device_ids)
        return ForgetCost(0.0, float(budget.rounds * budget.local_epochs * n), sent, True,
                          f"retrained from scratch: {budget.rounds} rounds over {n} clients")


class FedUnl(_FedAvg):
    """FedAvg; forgetting subtracts the client's stored updates and repairs with a few rounds (approximate)."""

    name = "fedunl"
    exact_forgetting = False
    _stores_updates = True

    def __init__(
        self,
        *,
        arch: str | None = None,
        augment: bool = True,
        workers: int | None = None,
        repair_rounds: int | None = None,
        repair_lr_scale: float = 0.3,
    ) -> None:
        super().__init__(arch=arch, augment=augment, workers=workers)
        if repair_rounds is not None and repair_rounds < 0:
            raise ValueError(f"repair_rounds must be >= 0, got {repair_rounds}")
        if not repair_lr_scale > 0:
            raise ValueError(f"repair_lr_scale must be > 0, got {repair_lr_scale}")
        self._repair_rounds = repair_rounds
        self._repair_lr_scale = repair_lr_scale

    def retrain_twin(self) -> FedUnlRetrain:
        """A fitted ``fedunl-retrain`` run with a copy of this run's training.

        Both methods train the same FedAvg, bit for bit; only forgetting differs. So one fit serves
        both (the twin reports the same training seconds and bytes), and forgetting on one leaves
        the other as it was. Only before any forgetting.
        """
        if self._global is None or self.forgotten:
            raise ValueError("retrain_twin() needs a fitted run that has forgotten nothing")
        twin = FedUnlRetrain(arch=self._arch, augment=self._augment, workers=self._workers)
        twin._setup, twin._budget = self._setup, self._budget
        twin._train_seconds, twin._train_bytes = self._train_seconds, self._train_bytes
        twin._global = copy.deepcopy(self._global)
        twin._init_state = None if self._init_state is None else self._init_state.clone()
        twin._next_round = self._next_round
        return twin

    def repair_rounds(self, budget: BaselineBudget) -> int:
        """Repair rounds after a subtraction: as given, else a fifth of the training rounds (at least 1)."""
        return self._repair_rounds if self._repair_rounds is not None else max(1, budget.rounds // 5)

    def fresh(self) -> FedUnl:
        return FedUnl(arch=self._arch, augment=self._augment, workers=self._workers,
                      repair_rounds=self._repair_rounds, repair_lr_scale=self._repair_lr_scale)

    def _forget(self, device_id: str) -> ForgetCost:
        """Subtract the client's stored updates, delete them, and repair over the remaining clients."""
        assert self._global is not None and self._init_state is not None
        setup = self._drop(device_id)
        budget = self.budget
        # Initial state + per round the renormalised weighted mean of everyone else's updates.
        state = self._init_state.clone()
        kept: list[StoredRound] = []
        for rnd in self._history:
            updates = {c: u for c, u in rnd.updates.items() if c != device_id}
            samples = {c: n for c, n in rnd.samples.items() if c != device_id}
            if updates:
                state += _weighted_mean(updates, samples)
                kept.append(StoredRound(rnd.index, samples, updates))
        self._history = kept  # the coordinator keeps nothing of the forgotten client
        load_state_vector(self._global, state)
        self._curve.append((0.0, self._mean_local_acc()))
        repairs = self.repair_rounds(budget)
        sent = 0
        for r in range(repairs):
            sent += self._round(setup, budget, cosine_lr(budget.lr * self._repair_lr_scale, r, repairs))
            self._curve.append((float(r + 1), self._mean_local_acc()))
        return ForgetCost(
            0.0, float(repairs * budget.local_epochs * len(setup.device_ids)), sent, False,
            f"subtracted the client's stored updates from {len(kept)} rounds, repaired with {repairs} rounds of "
            "FedAvg over the remaining clients; later updates were computed from models that had seen the "
            "client, so its influence is reduced, not removed",
        )
