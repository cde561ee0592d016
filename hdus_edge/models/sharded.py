"""A SISA-style main model: K shard models, each trained on its own shard of the data (no I/O).

Bourtoule et al. (SISA) make forgetting cheap by splitting the training set into disjoint shards,
one constituent model per shard: forgetting a sample retrains only the shard that held it. The
constituents are combined by the mean of their logits, so the whole exports to ONNX as one graph
of standard operators (Add, Mul) and the ensemble runtime and ONNX checks still see one main model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ShardedMain(nn.Module):
    """Mean of the logits of ``members`` (each maps [N, C, H, W] -> [N, classes])."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a sharded main model needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, classes]
        total = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total * (1.0 / len(self.members))
