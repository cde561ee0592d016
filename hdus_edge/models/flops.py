"""Rough compute cost of a model: multiply-accumulates of its convs and linear layers per sample.

BatchNorm (folded into convs at export), activations, adds and pooling are ignored; they are a few
percent of the total for these models. FLOPs are about twice the MACs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from hdus_edge.models.layers import check_input_shape

logger = logging.getLogger(__name__)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates for one ``input_shape`` sample through ``model`` (one zero-input forward pass)."""
    shape = check_input_shape(input_shape)
    total = 0

    def on_conv(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        total += output[0].numel() * per_output

    def on_linear(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
    was_training = model.training
    try:
        model.eval()  # BN in train mode would update running stats from the zero input
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
