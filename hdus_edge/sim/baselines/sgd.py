"""Torch pieces the collaborative baselines share: flat model states, local passes, message sizes.

A model's *state vector* is every float entry of its ``state_dict`` (parameters and BatchNorm
running statistics) flattened in ``state_dict`` order: what DSGD neighbours and FedAvg clients
exchange and average. Integer buffers (BatchNorm's batch counters) stay local: with a fixed BN
momentum nothing reads them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from hdus_edge.data import Dataset
from hdus_edge.learning.train import shift_augment, torch_threads  # noqa: F401  (re-exported for the baselines)

logger = logging.getLogger(__name__)

BYTES_PER_FLOAT = 4  # float32 on the wire
T = TypeVar("T")
R = TypeVar("R")


def _float_keys(model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def state_vector(model: nn.Module) -> torch.Tensor:
    """Every float entry of ``model``'s state, flattened: float32 [P] (a copy)."""
    state = model.state_dict()
    return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in _float_keys(model)]).clone()


def load_state_vector(model: nn.Module, vec: torch.Tensor) -> None:
    """Write ``vec`` (from :func:`state_vector` of the same architecture) back into ``model``."""
    state = model.state_dict()
    offset = 0
    with torch.no_grad():
        for k in _float_keys(model):
            t = state[k]
            t.copy_(vec[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    if offset != vec.numel():
        raise ValueError(f"state vector has {vec.numel()} floats, the model {offset}")


def message_bytes(model: nn.Module) -> int:
    """Bytes of one message carrying ``model``'s state (float32, every float entry)."""
    return BYTES_PER_FLOAT * sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())


def cosine_lr(lr: float, round_index: int, rounds: int) -> float:
    """Learning rate of round ``round_index`` of ``rounds``: cosine decay from ``lr`` towards 0.

    Decaying over rounds (not restarting each round) lets the averaged models settle, as the
    one-cycle schedule does for the HDUS main models.
    """
    return lr * 0.5 * (1.0 + math.cos(math.pi * round_index / max(1, rounds)))


def round_seed(device_seed: int, round_index: int) -> int:
    """A seed for one device's work in one round (independent streams per round)."""
    return int(np.random.SeedSequence([device_seed, round_index]).generate_state(1)[0] % (2**31 - 1))


def local_pass(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    data: Dataset,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
) -> int:
    """Train ``model`` in place for ``epochs`` passes over ``data`` (cross-entropy); return steps taken.

    Same batch order, augmentation and batch-of-one rule as ``hdus_edge.learning.train.train``, so a
    collaborative method's local work matches a main model's. Leaves the model in eval mode.
    """
    x_all = torch.from_numpy(np.ascontiguousarray(data.x))
    y_all = torch.from_numpy(data.y.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for first in range(0, len(data), batch_size):
            idx = order[first : first + batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if augment:
                xb = shift_augment(xb, generator)
            if len(idx) == 1:  # BatchNorm cannot train on a batch of one
                continue
            optimiser.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimiser.step()
            steps += 1
    model.eval()
    return steps


def set_lr(optimiser: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimiser.param_groups:
        group["lr"] = lr


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, on_done: Callable[[int], None] | None = None
) -> list[R]:
    """``[fn(item) for item in items]``, on up to ``workers`` threads, results in order.

    For independent per-device work: each device's tensors are touched by one thread only, and
    each thread runs torch single-threaded, so results are bit for bit those of the serial loop,
    whatever ``workers`` is. Threads, not processes: torch releases the GIL inside its kernels, and
    nothing needs pickling. ``fn`` must not draw from torch's global RNG (build models beforehand).
    ``on_done(n_finished)`` runs in the calling thread (safe for progress bars).
    """
    if workers <= 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            if on_done is not None:
                on_done(len(out))
        return out

    def run(item: T) -> R:
        torch.set_num_threads(1)  # per thread: OpenMP's thread count is a per-thread setting
        return fn(item)

    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(run, item) for item in items]
        for n, _ in enumerate(as_completed(futures), start=1):
            if on_done is not None:
                on_done(n)
        return [f.result() for f in futures]


