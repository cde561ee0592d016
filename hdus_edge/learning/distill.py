"""Seed distillation: a tiny student mimics its own device's main model on the reference set.

The student sees only the teacher's temperature-softened outputs on reference inputs, which hold no
client data (public split or noise), and never a label or a neighbour. That is what makes a seed a
safe, exactly removable carrier of one device's knowledge.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hdus_edge.data import Dataset
from hdus_edge.learning.train import Progress, deterministic_torch, predict_logits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters for distillation."""

    temperature: float = 4.0  # Hinton et al.'s range; softens targets so dark knowledge transfers
    epochs: int = 40  # the reference set is small and the student tiny: many cheap passes
    batch_size: int = 64
    lr: float = 5e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"invalid DistillConfig: {self}")


@dataclass(frozen=True)
class DistillReport:
    """What one distillation did and how faithful the seed is."""

    epochs: int
    reference_samples: int
    seconds: float
    final_loss: float
    agreement: float  # seed/main top-1 agreement on the evaluation set (NaN when none was given)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    log_p_student = nn.functional.log_softmax(student_logits / t, dim=1)
    p_teacher = nn.functional.softmax(teacher_logits / t, dim=1)
    return nn.functional.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    reference: Dataset,
    cfg: DistillConfig = DistillConfig(),
    eval_data: Dataset | None = None,
    progress: Progress | None = None,
) -> DistillReport:
    """Train ``student`` in place to match ``teacher`` on ``reference`` inputs; eval mode after.

    The teacher's logits are computed once, up front: it is frozen, and it is the expensive model.
    """
    if len(reference) == 0:
        raise ValueError("reference set is empty")
    x_ref = torch.from_numpy(np.ascontiguousarray(reference.x))
    teacher_logits = torch.from_numpy(predict_logits(teacher, reference.x))  # [R, classes]
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    steps_per_epoch = (len(reference) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=total)
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    with deterministic_torch():
        student.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(reference), generator=generator)
            for first in range(0, len(reference), cfg.batch_size):
                idx = order[first : first + cfg.batch_size]
                if len(idx) == 1:  # BatchNorm cannot train on a batch of one
                    continue
                optimiser.zero_grad(set_to_none=True)
                loss = kd_loss(student(x_ref[idx]), teacher_logits[idx], cfg.temperature)
                loss.backward()
                optimiser.step()
                schedule.step()
                step += 1
                loss_value = float(loss.detach())
                if progress is not None:
                    progress(step, total)
        student.eval()
    agreement = float("nan")
    if eval_data is not None and len(eval_data):
        agreement = top1_agreement(student, teacher, eval_data.x)
    seconds = time.perf_counter() - start
    logger.info("distilled on %d reference samples in %.1fs, agreement %.3f", len(reference), seconds, agreement)
    return DistillReport(cfg.epochs, len(reference), seconds, loss_value, agreement)


def top1_agreement(a: nn.Module, b: nn.Module, x: np.ndarray) -> float:
    """Fraction of inputs on which two models predict the same class."""
    return float((predict_logits(a, x).argmax(1) == predict_logits(b, x).argmax(1)).mean())
