"""Distillation: every method is deterministic for a fixed seed, never changes the teacher, and
builds its views from the reference images alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hdus_edge.data import Dataset, load_digits
from hdus_edge.learning.distill import (
    METHODS,
    DistillConfig,
    augment_views,
    distill,
    kd_loss,
    logit_mse,
    reference_views,
)
from hdus_edge.models import build_model

REFERENCE = load_digits().subset(np.arange(96))
FAST = DistillConfig(epochs=2, batch_size=32, views=3)


def _distil(cfg: DistillConfig, teacher_seed: int = 0) -> dict[str, torch.Tensor]:
    teacher = build_model("resnet-8", (1, 8, 8), 10, seed=teacher_seed)
    student = build_model("seed-cnn", (1, 8, 8), 10, seed=1)
    distill(teacher, student, REFERENCE, cfg)
    return student.state_dict()


@pytest.mark.parametrize("method", METHODS)
def test_distilling_twice_gives_bit_identical_seeds(method):
    cfg = replace(FAST, method=method)
    a, b, c = _distil(cfg), _distil(cfg), _distil(replace(cfg, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the check can fail: another seed, another seed model


@pytest.mark.parametrize("method", METHODS)
def test_the_teacher_is_not_changed(method):
    teacher = build_model("resnet-8", (1, 8, 8), 10, seed=0)
    teacher.train()  # a caller's leftover train mode must not let BatchNorm statistics drift
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(teacher, build_model("seed-cnn", (1, 8, 8), 10, seed=1), REFERENCE, replace(FAST, method=method))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_views_are_made_of_reference_images_only():
    # Prepare: a batch where every image is one flat grey level; zero shift/rotation/zoom.
    levels = torch.linspace(0.1, 0.9, 16)
    x = levels[:, None, None, None].expand(16, 1, 8, 8).contiguous()
    cfg = DistillConfig(shift=0.0, rotate_degrees=0.0, zoom=1e-9)
    # Execute
    out = augment_views(x, torch.Generator().manual_seed(0), cfg)
    # Assert: each view is a convex mix of two images of the batch (mixup partners come from x only).
    assert out.shape == x.shape
    assert float(out.min()) >= 0.1 - 1e-6 and float(out.max()) <= 0.9 + 1e-6
    assert not torch.equal(out, x)  # mixup did happen (the check above is not vacuous)
    bank = reference_views(x, torch.Generator().manual_seed(0), replace(cfg, views=3))
    assert bank.shape == (48, 1, 8, 8) and torch.equal(bank[:16], x)


def test_augmentation_moves_and_rotates_the_image():
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    cfg = DistillConfig(mixup=False)
    out = augment_views(x, torch.Generator().manual_seed(3), cfg)
    assert not torch.allclose(out, x)
    assert float(out.sum()) == pytest.approx(float(x.sum()), rel=0.25)  # the stroke stays in the frame


def test_losses_vanish_only_when_the_student_matches():
    t = torch.randn(8, 10)
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_mse(t, t)) == 0.0
    assert float(kd_loss(t + torch.randn(8, 10), t, 4.0)) > 0 and float(logit_mse(t + 1, t)) == pytest.approx(1.0)


def test_config_rejects_unknown_methods_and_losses():
    with pytest.raises(ValueError):
        DistillConfig(method="guess")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DistillConfig(loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DistillConfig(views=0)


def test_unlabeled_reference_is_enough():
    ref = Dataset(REFERENCE.x, np.full(len(REFERENCE), -1, np.int64), 10, "unlabeled")
    teacher = build_model("resnet-8", (1, 8, 8), 10, seed=0)
    report = distill(teacher, build_model("seed-cnn", (1, 8, 8), 10, seed=1), ref, replace(FAST, method="views"))
    assert report.method == "views" and report.reference_samples == len(ref)
