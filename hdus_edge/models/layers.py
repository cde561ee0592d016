"""Building blocks shared by the zoo: conv-BN-activation, the stride schedule, weight init.

Every model here takes a single-channel image of any side from 8 to 32 pixels. Instead of a fixed
stride schedule, each architecture lists the places where it *may* halve the feature map, in order of
preference, and ``stride_plan`` grants as many of them as the input allows; so 8x8 digits get one
downsampling and 28x28 MNIST three, and no feature map ever drops below ``MIN_FEATURE_SIDE``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

logger = logging.getLogger(__name__)

# Smallest feature-map side a halving may produce: 4x4 still leaves the last stage some spatial
# context before global pooling, and keeps 3x3 convs from being mostly padding.
MIN_FEATURE_SIDE = 4


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``input_shape`` as a ``(C, H, W)`` tuple of positive ints, or raise ``ValueError``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` if it is an int >= 2, else raise ``ValueError``."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


def halvings_allowed(side: int, floor: int = MIN_FEATURE_SIDE) -> int:
    """How many stride-2 steps (3x3 pad 1, or 1x1 pad 0) keep a map of ``side`` at least ``floor`` wide."""
    if floor < 2:
        raise ValueError(f"floor must be >= 2 (a side-1 map halves to itself), got {floor}")
    count = 0
    while (side + 1) // 2 >= floor:  # a stride-2 step maps side -> ceil(side / 2)
        side = (side + 1) // 2
        count += 1
    return count


def stride_plan(input_shape: Sequence[int], n_positions: int, priority: Sequence[int]) -> list[int]:
    """Strides (1 or 2) for ``n_positions`` downsampling places, granting ``priority`` in order.

    The smaller of height and width decides how many halvings fit; the first that many entries of
    ``priority`` (indices into the positions) get stride 2, the rest stride 1.
    """
    _, height, width = check_input_shape(input_shape)
    if sorted(set(priority)) != sorted(priority) or not all(0 <= p < n_positions for p in priority):
        raise ValueError(f"priority {priority!r} must list distinct positions in [0, {n_positions})")
    granted = set(priority[: halvings_allowed(min(height, width))])
    return [2 if p in granted else 1 for p in range(n_positions)]


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias: BN follows) + BatchNorm2d + optional activation; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act())  # never inplace: keeps autograd and ONNX export simple
        super().__init__(*layers)


def init_weights(model: nn.Module) -> None:
    """He init (fan-out) for convs and unit-scale BN; linear layers keep torch's default init.

    Models call this at the end of ``__init__``. It draws from torch's global RNG, which
    ``build_model`` seeds inside ``fork_rng``, so a seed fixes every weight. Linear layers keep the
    default (uniform, +-1/sqrt(fan_in)): the MLP seed's hidden layer would start nearly dead under
    the small-normal init torchvision gives classifiers.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
