"""One main-model graph from K shard models' graphs: the mean of their logits (pure, onnx only).

A SISA-style main model (``train.shards = K``) is K models of one architecture; the device and the
ONNX checks expect one main model, so the members' exported graphs are copied side by side (names
prefixed ``shard0/``, ``shard1/`` ...; the input shared), their logits summed left to right and
multiplied by 1/K, as ``models.sharded.ShardedMain`` computes. Each member's graph is exported
once and reused while its weights stay the same, so forgetting a sample re-exports only the
shards it retrained. The result depends only on the members' bytes, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hdus_edge.ensemble.fuse import _copy_member, _io_types, _shape
from hdus_edge.errors import EnsembleError
from hdus_edge.onnx.checks import default_opset

INPUT = "input"
OUTPUT = "logits"


def compose_shards(members: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """The mean-of-logits model of ``members`` (in order); ``EnsembleError`` for mismatched members."""
    if len(members) < 2:
        raise EnsembleError("a sharded main model needs at least two members")
    opsets = {default_opset(m) for m in members}
    if len(opsets) != 1:
        raise EnsembleError(f"shard members use different opsets {sorted(opsets)}")
    in_type, out_type = _io_types(members[0])
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    sparse: list[onnx.SparseTensorProto] = []
    infos: list[onnx.ValueInfoProto] = []
    outs = []
    for k, member in enumerate(members):
        if _shape(_io_types(member)[1])[1:] != _shape(out_type)[1:]:
            raise EnsembleError(f"shard {k} has another output shape than shard 0")
        outs.append(_copy_member(member, f"shard{k}/", nodes, inits, sparse, infos))
    total = outs[0]
    for k, name in enumerate(outs[1:], start=1):
        nodes.append(helper.make_node("Add", [total, name], [f"shards/sum{k}"], name=f"shards/add{k}"))
        total = f"shards/sum{k}"
    inits.append(numpy_helper.from_array(np.array(1.0 / len(members), dtype=np.float32), "shards/1/k"))
    nodes.append(helper.make_node("Mul", [total, "shards/1/k"], [OUTPUT], name="shards/mean"))
    graph = helper.make_graph(
        nodes, "hdus_sharded_main",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", *_shape(in_type)[1:]])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", _shape(out_type)[1]])],
        initializer=inits, value_info=infos, sparse_initializer=sparse,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opsets.pop())],
                             ir_version=max(m.ir_version for m in members), producer_name="hdus-edge")
