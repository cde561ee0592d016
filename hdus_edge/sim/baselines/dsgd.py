"""DSGD: decentralized SGD, local passes alternating with averaging over the neighbour graph.

What it is: every device holds a model of one shared architecture (``arch``, default the first
device's), all started from the same seeded initialisation. Each round, every device makes
``local_epochs`` passes over its own data (Adam, the learning rate decaying over rounds), sends its
state to every neighbour, and replaces its state by a weighted mean of its own and the neighbours'
(Metropolis-Hastings weights by default: doubly stochastic on any undirected graph, the exact mean
on a complete one). Optimiser moments stay on the device.

How it forgets: after a round every model mixes in every neighbour's, so after a few rounds every
model depends on every device. The only exact way out is to retrain every remaining device from
scratch on the graph without the device; with the same seeds this yields bit for bit the models of
a fleet the device never joined (``exact_check`` proves it).

What it costs: training sends each device's state to each neighbour every round (state floats x
degree x rounds x 4 bytes, summed over devices); forgetting redoes all of it for the remaining
devices (``rounds x local_epochs`` epochs each) and sends all of it again.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Literal

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
    set_lr,
    state_vector,
)
from hdus_edge.topology import Graph

logger = logging.getLogger(__name__)

MixingWeights = Literal["metropolis", "uniform"]
MIXING_WEIGHTS: tuple[str, ...] = ("metropolis", "uniform")


def mixing_weights(graph: Graph, kind: MixingWeights = "metropolis") -> dict[str, dict[str, float]]:
    """``w[i][j]``: the weight device i gives j's state (j = i included); every row sums to 1.

    ``metropolis``: w_ij = 1 / (1 + max(deg i, deg j)) for neighbours, the rest on i itself
    (symmetric, so the fleet's mean is preserved). ``uniform``: 1 / (deg i + 1) on i and each neighbour.
    """
    if kind not in MIXING_WEIGHTS:
        raise ValueError(f"unknown mixing weights {kind!r}; use one of {MIXING_WEIGHTS}")
    out: dict[str, dict[str, float]] = {}
    for i, nbrs in graph.items():
        if kind == "uniform":
            row = {j: 1.0 / (len(nbrs) + 1) for j in nbrs}
        else:
            row = {j: 1.0 / (1 + max(len(nbrs), len(graph[j]))) for j in nbrs}
        row[i] = 1.0 - sum(row.values())
        out[i] = row
    return out


# on_round(rounds_done, models): called after each round's averaging.
RoundHook = Callable[[int, dict[str, nn.Module]], None]


class DSGD(Baseline):
    """Decentralized SGD with neighbour averaging; forgetting retrains from scratch."""

    name = "dsgd"
    exact_forgetting = True

    def __init__(
        self,
        *,
        arch: str | None = None,
        weights: MixingWeights = "metropolis",
        augment: bool = True,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        if weights not in MIXING_WEIGHTS:
            raise ValueError(f"unknown mixing weights {weights!r}; use one of {MIXING_WEIGHTS}")
        self._arch = None if arch is None else resolve_arch(arch)
        self._weights: MixingWeights = weights
        self._augment = augment
        self._workers = workers
        self._models: dict[str, nn.Module] = {}

    @property
    def arch(self) -> str | None:
        """The shared architecture (``None`` until fitted when not given)."""
        return self._arch

    def _fit(self, setup: FleetSetup, budget: BaselineBudget, progress: BaselineProgress | None) -> tuple[float, int]:
        if self._arch is None:
            self._arch = setup.archs[0]  # pinned: a rerun without device 0 must keep it
        start = time.perf_counter()
        self._models, sent = self._train(setup, budget, progress, "train")
        return time.perf_counter() - start, sent

    def _forget(self, device_id: str) -> ForgetCost:
        """Retrain every remaining device from scratch on the graph without ``device_id``."""
        setup = self._drop(device_id)
        budget = self.budget
        self._models = {}  # every model mixed in the device's state: none can be kept

        def on_round(done: int, models: dict[str, nn.Module]) -> None:
            self._curve.append((float(done), _mean_local_acc(setup, models)))

        self._models, sent = self._train(setup, budget, None, "forget", on_round)
        n = len(setup.device_ids)
        return ForgetCost(0.0, float(budget.rounds * budget.local_epochs * n), sent, True,
                          f"retrained {n} devices from scratch for {budget.rounds} rounds")

    def outputs(self, device_id: str, x: np.ndarray) -> np.ndarray:
        self.setup.client(device_id)
        return softmax(predict_logits(self._models[device_id], x))

    def model_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {d: {k: v.clone() for k, v in m.state_dict().items()} for d, m in sorted(self._models.items())}

    def fresh(self) -> DSGD:
        return DSGD(arch=self._arch, weights=self._weights, augment=self._augment, workers=self._workers)

    def _train(
        self,
        setup: FleetSetup,
        budget: BaselineBudget,
        progress: BaselineProgress | None,
        phase: str,
        on_round: RoundHook | None = None,
    ) -> tuple[dict[str, nn.Module], int]:
        """Run DSGD on ``setup`` from scratch; return the models and bytes sent."""
        assert self._arch is not None
        ids = setup.device_ids
        init = build_model(self._arch, setup.data.input_shape, setup.data.num_classes, seed=budget.seed)
        models = {d: copy.deepcopy(init) for d in ids}  # one shared start: the usual D-SGD setting
        optimisers = {d: torch.optim.Adam(models[d].parameters(), lr=budget.lr) for d in ids}
        generators = {d: torch.Generator().manual_seed(device_seed(budget.seed, d)) for d in ids}
        weights = mixing_weights(setup.graph, self._weights)
        per_message = message_bytes(init)
        messages_per_round = sum(len(setup.graph[d]) for d in ids)
        sent = 0
        workers = default_workers() if self._workers is None else self._workers
        if on_round is not None:
            on_round(0, models)
        for r in range(budget.rounds):
            lr = cosine_lr(budget.lr, r, budget.rounds)

            def local(d: str, lr: float = lr) -> None:
                set_lr(optimisers[d], lr)
                local_pass(models[d], optimisers[d], setup.client(d).train, budget.local_epochs,
                           budget.batch_size, generators[d], self._augment)

            parallel_map(local, list(ids), workers)
            states = {d: state_vector(models[d]) for d in ids}
            for d in ids:
                # What device d computes from the messages it received, in a fixed order.
                mixed = torch.zeros_like(states[d])
                for j in sorted(weights[d]):
                    mixed += weights[d][j] * states[j]
                load_state_vector(models[d], mixed)
            sent += messages_per_round * per_message
            if on_round is not None:
                on_round(r + 1, models)
            if progress is not None:
                progress(phase, r + 1, budget.rounds)
        return models, sent


def _mean_local_acc(setup: FleetSetup, models: dict[str, nn.Module]) -> float:
    accs = [accuracy(predict_logits(models[d], setup.client(d).test.x), setup.client(d).test.y)
            for d in setup.device_ids]
    return float(np.mean(accs)) if accs else float("nan")
