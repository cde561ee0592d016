"""CIFAR-style ResNets on single-channel images: basic blocks (ResNet-8/20) and a slim bottleneck ResNet-50.

ResNet-8 and ResNet-20 are He et al.'s CIFAR nets: a 3x3 stem and three stages of ``n`` basic blocks
(widths 16/32/64, depth 6n + 2). ResNet-50 keeps the [3, 4, 6, 3] bottleneck layout of the ImageNet
net at an eighth of its width, so it stays within ~15M MACs at 28x28. Shortcuts that change shape are
1x1 conv + BN (option B): plain graph ops that export cleanly to ONNX.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut, ReLU after the add."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.residual = nn.Sequential(
            ConvBNAct(in_ch, width, kernel=3, stride=stride),
            ConvBNAct(width, out_ch, kernel=3, act=None),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride), 1x1 expand by 4, and a shortcut, ReLU after the add."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.residual = nn.Sequential(
            ConvBNAct(in_ch, width, kernel=1),
            ConvBNAct(width, width, kernel=3, stride=stride),
            ConvBNAct(width, out_ch, kernel=1, act=None),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return ConvBNAct(in_ch, out_ch, kernel=1, stride=stride, act=None)


@dataclass(frozen=True)
class ResNetConfig:
    """Depths and widths of one ResNet.

    Downsampling positions are 0 (the stem) and i (the first block of stage i, 1-based), granted in
    ``priority`` order: later stages first, the stem once the input is large enough (28x28, 32x32).
    """

    block: Literal["basic", "bottleneck"]
    stem: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    priority: tuple[int, ...]


class ResNet(nn.Module):
    """ResNet classifier: [N, C, H, W] float32 -> [N, num_classes] logits."""

    def __init__(self, cfg: ResNetConfig, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(cfg.depths) != len(cfg.widths):
            raise ValueError(f"depths {cfg.depths} and widths {cfg.widths} must have the same length")
        in_ch, _, _ = check_input_shape(input_shape)
        check_num_classes(num_classes)
        block_cls = BasicBlock if cfg.block == "basic" else Bottleneck
        strides = stride_plan(input_shape, len(cfg.depths) + 1, cfg.priority)
        self.stem = ConvBNAct(in_ch, cfg.stem, kernel=3, stride=strides[0])
        blocks: list[nn.Module] = []
        channels = cfg.stem
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths), start=1):
            for d in range(depth):
                blocks.append(block_cls(channels, width, strides[i] if d == 0 else 1))
                channels = width * block_cls.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)
        self.zero_init_residuals()

    def zero_init_residuals(self) -> None:
        """Zero the last BN scale of every residual branch, so each block starts as (near) identity.

        Goyal et al.'s trick: it makes short CPU training runs converge faster and steadier.
        """
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.residual[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # [N, channels, h, w]
        return self.classifier(self.pool(x).flatten(1))  # [N, num_classes]


RESNET_8 = ResNetConfig(block="basic", stem=16, depths=(1, 1, 1), widths=(16, 32, 64), priority=(2, 3, 0))
RESNET_20 = ResNetConfig(block="basic", stem=16, depths=(3, 3, 3), widths=(16, 32, 64), priority=(2, 3, 0))
# Bottleneck widths 8/16/32/64 (outputs 32/64/128/256): ImageNet ResNet-50 at 1/8 width.
RESNET_50 = ResNetConfig(
    block="bottleneck", stem=16, depths=(3, 4, 6, 3), widths=(8, 16, 32, 64), priority=(3, 4, 0)
)


def resnet_8(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-8 (one basic block per stage)."""
    return ResNet(RESNET_8, input_shape, num_classes)


def resnet_20(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-20 (three basic blocks per stage)."""
    return ResNet(RESNET_20, input_shape, num_classes)


def resnet_50(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Slim bottleneck ResNet-50 ([3, 4, 6, 3] blocks, 1/8 width)."""
    return ResNet(RESNET_50, input_shape, num_classes)
