"""MobileNetV2-style main models: inverted residual blocks on single-channel images.

Each block expands with a 1x1 conv, filters with a depthwise 3x3, and projects back with a linear
(no activation) 1x1 conv; it adds its input when stride is 1 and the width is unchanged. ReLU rather
than ReLU6: the legacy ONNX exporter turns ReLU6 into ``Clip`` fed by ``Constant`` nodes, and seeds and
mains should share one small operator set. The head is a 1x1 conv, global average pooling, a linear layer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class MobileNetConfig:
    """Widths and depths of one MobileNetV2-style model.

    ``stages`` holds ``(expansion, out_channels, repeats)``; downsampling positions are 0 (the stem)
    and i (the first block of stage i, 1-based); ``priority`` orders them: mid stages first so that
    small inputs keep their resolution early, the stem last-but-not-least so that 28x28 inputs halve
    before the costly expanded blocks run.
    """

    stem: int
    stages: tuple[tuple[int, int, int], ...]
    head: int
    priority: tuple[int, ...]


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (stride) -> linear project (1x1), plus identity when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_ch, hidden, kernel=1, act=nn.ReLU))
        layers += [
            ConvBNAct(hidden, hidden, kernel=3, stride=stride, groups=hidden, act=nn.ReLU),
            ConvBNAct(hidden, out_ch, kernel=1, act=None),  # linear bottleneck
        ]
        self.block = nn.Sequential(*layers)
        # Fixed at build time, so the graph has no data-dependent branch.
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2-style classifier: [N, C, H, W] float32 -> [N, num_classes] logits."""

    def __init__(self, cfg: MobileNetConfig, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        in_ch, _, _ = check_input_shape(input_shape)
        check_num_classes(num_classes)
        strides = stride_plan(input_shape, len(cfg.stages) + 1, cfg.priority)
        self.stem = ConvBNAct(in_ch, cfg.stem, kernel=3, stride=strides[0], act=nn.ReLU)
        blocks: list[nn.Module] = []
        width = cfg.stem
        for i, (expansion, out_ch, repeats) in enumerate(cfg.stages, start=1):
            for r in range(repeats):
                blocks.append(InvertedResidual(width, out_ch, strides[i] if r == 0 else 1, expansion))
                width = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(width, cfg.head, kernel=1, act=nn.ReLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg.head, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))  # [N, head, h, w]
        return self.classifier(self.pool(x).flatten(1))  # [N, num_classes]


# Sizes chosen for CPU training on edge devices (params at 1x28x28, 10 classes; MACs per sample):
# S ~32k params / ~0.7M MACs, M ~96k / ~2.1M, L ~251k / ~4.7M. Each step roughly triples the params,
# and S stays >= 5x the seeds so a seed is always the cheap member of an ensemble.
MOBILENET_S = MobileNetConfig(
    stem=16,
    stages=((1, 8, 1), (4, 16, 2), (4, 24, 3), (4, 32, 1)),
    head=128,
    priority=(2, 3, 0),
)
MOBILENET_M = MobileNetConfig(
    stem=16,
    stages=((1, 16, 1), (4, 24, 2), (4, 32, 2), (4, 48, 2), (4, 64, 1)),
    head=160,
    priority=(2, 3, 0),
)
MOBILENET_L = MobileNetConfig(
    stem=16,
    stages=((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 48, 2), (6, 80, 2)),
    head=256,
    priority=(2, 3, 0),
)


def mobilenet_s(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Small MobileNetV2-style main model."""
    return MobileNetV2(MOBILENET_S, input_shape, num_classes)


def mobilenet_m(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Medium MobileNetV2-style main model."""
    return MobileNetV2(MOBILENET_M, input_shape, num_classes)


def mobilenet_l(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Large MobileNetV2-style main model."""
    return MobileNetV2(MOBILENET_L, input_shape, num_classes)
