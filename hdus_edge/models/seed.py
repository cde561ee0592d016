"""Seed architectures: the tiny models a device distils and shares with its neighbours.

A seed must be cheap to ship over MQTT and to run once per neighbour at every prediction, so each
stays at or below a fifth of the smallest main model (the paper's seeds hold 4k-6k parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from hdus_edge.models.layers import (
    ConvBNAct,
    check_input_shape,
    check_num_classes,
    init_weights,
    stride_plan,
)

logger = logging.getLogger(__name__)

# The MLP seed average-pools its input down to about this side, so its size barely depends on H, W.
MLP_GRID = 8


class SeedCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers (8/16/24 channels), global pooling, linear: ~5k parameters."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, widths: tuple[int, int, int] = (8, 16, 24)
    ) -> None:
        super().__init__()
        in_ch, _, _ = check_input_shape(input_shape)
        check_num_classes(num_classes)
        # Positions 0..2 are the three convs. Small inputs (8x8) halve late, keeping resolution
        # through two layers; 16x16 and up halve early (28x28: 28 -> 14 -> 7), which halves the
        # seed's MACs (452k -> 240k at 28x28), since every prediction runs every neighbour's seed.
        _, height, width = input_shape
        strides = stride_plan(input_shape, 3, priority=(0, 1) if min(height, width) >= 16 else (2, 1))
        self.features = nn.Sequential(
            ConvBNAct(in_ch, widths[0], stride=strides[0]),
            ConvBNAct(widths[0], widths[1], stride=strides[1]),
            ConvBNAct(widths[1], widths[2], stride=strides[2]),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [N, widths[2], h, w]
        return self.classifier(self.pool(x).flatten(1))  # [N, num_classes]


class SeedMLP(nn.Module):
    """Average-pool to about 8x8, then one hidden layer of 64 ReLU units: ~4-5k parameters."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        in_ch, height, width = check_input_shape(input_shape)
        check_num_classes(num_classes)
        # Kernel ceil(side / 8): a fixed kernel (not adaptive pooling) exports to a plain AveragePool.
        kernel = (-(-height // MLP_GRID), -(-width // MLP_GRID))
        self.pool: nn.Module = nn.AvgPool2d(kernel) if kernel != (1, 1) else nn.Identity()
        features = in_ch * (height // kernel[0]) * (width // kernel[1])
        self.hidden = nn.Linear(features, hidden)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).flatten(1)  # [N, features]
        return self.classifier(self.relu(self.hidden(x)))  # [N, num_classes]


def seed_cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Tiny CNN seed."""
    return SeedCNN(input_shape, num_classes)


def seed_cnn_wide(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The tiny CNN at widths 12/24/40 (~13k parameters, ~52 KiB fp32): the most seed that fits a
    64 KiB budget; more capacity lets a seed copy its main model more faithfully (issue 15)."""
    return SeedCNN(input_shape, num_classes, widths=(12, 24, 40))


def seed_mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Tiny MLP seed (pooled input)."""
    return SeedMLP(input_shape, num_classes)
