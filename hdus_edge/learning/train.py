"""Local training of a main model on its own device's data only (torch).

Exactness starts here: ``train`` sees one ``Dataset`` and nothing from any neighbour. Every random
choice (initialisation is the zoo's, batch order is ours) takes a seed, and torch runs with
deterministic algorithms, so the same data and seed give the same weights bit for bit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hdus_edge.data import Dataset
from hdus_edge.errors import DataShapeError

logger = logging.getLogger(__name__)

# progress(done_steps, total_steps): a plain callable so the CLI can drive a rich bar and tests none.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters for local training; defaults tuned on digits and the MNIST pool."""

    epochs: int = 30  # small local sets (~150-800 samples) need many passes
    batch_size: int = 32  # small batches: more steps per epoch on tiny local data
    lr: float = 3e-3  # Adam; robust across the zoo without per-arch tuning
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True  # +-1 pixel shifts: cheap, and local data is scarce

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"invalid TrainConfig: {self}")


@dataclass(frozen=True)
class TrainReport:
    """What one training run did."""

    epochs: int
    samples: int
    steps: int
    seconds: float
    final_loss: float
    train_accuracy: float


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """Run torch with deterministic kernels, restoring the caller's setting afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with torch on ``n`` threads (at most the machine's cores), restoring the caller's
    setting afterwards: a fixed count keeps float results identical run to run, and the zoo's small
    models gain little from more threads and lose a lot when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_input_shape(model_input_shape: tuple[int, ...], data: Dataset) -> None:
    """Raise ``DataShapeError`` when ``data`` does not have the shape a model was built for."""
    if tuple(data.input_shape) != tuple(model_input_shape):
        raise DataShapeError(
            f"data '{data.name}' has samples of shape {tuple(data.input_shape)}, "
            f"but the model expects {tuple(model_input_shape)}",
            hint="build the model for the data's input shape, or resample the data",
        )


def shift_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction (zero padded). x: [B, 1, H, W]."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (b, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(b):  # B is small (a mini-batch); gathers are cheap next to the forward pass
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig = TrainConfig(),
    progress: Progress | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``data`` (cross-entropy, Adam) and leave it in eval mode."""
    if len(data) == 0:
        raise DataShapeError(f"training data '{data.name}' is empty", hint="give the device some samples")
    if data.y.min() < 0:
        raise DataShapeError(f"training data '{data.name}' has unlabeled samples (label -1)")
    x_all = torch.from_numpy(np.ascontiguousarray(data.x))
    y_all = torch.from_numpy(data.y.astype(np.int64))
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(data) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=total)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    with deterministic_torch():
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(data), generator=generator)
            for first in range(0, len(data), cfg.batch_size):
                idx = order[first : first + cfg.batch_size]
                xb, yb = x_all[idx], y_all[idx]
                if cfg.augment:
                    xb = shift_augment(xb, generator)
                if len(idx) == 1:  # BatchNorm cannot train on a batch of one
                    continue
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimiser.step()
                schedule.step()
                step += 1
                loss_value = float(loss.detach())
                if progress is not None:
                    progress(step, total)
        model.eval()
    train_acc = accuracy(predict_logits(model, data.x), data.y)
    seconds = time.perf_counter() - start
    logger.info("trained on %d samples: %d steps in %.1fs, train acc %.3f", len(data), step, seconds, train_acc)
    return TrainReport(cfg.epochs, len(data), step, seconds, loss_value, train_acc)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class logits of ``model`` (eval mode) for ``x`` [N, 1, H, W] as float32 [N, classes]."""
    model.eval()
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outs).numpy().astype(np.float32)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits or probabilities ``outputs`` against ``labels``."""
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(outputs).argmax(axis=1) == np.asarray(labels)).mean())
