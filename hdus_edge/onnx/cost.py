"""Static compute cost of an ONNX graph: multiply-accumulates and parameters per sample (no torch, no run).

A seed from a certified neighbour can still be expensive: a few hundred KB of allowed operators can
make every prediction seconds slower. The agent bounds that before it runs anything: shape inference
with the batch fixed at 1 gives every tensor's shape, and each node's cost follows from its shapes.

Counting (per sample). ``macs`` agree with ``hdus_edge.models.flops.count_macs`` (tests check it on
every zoo architecture); ``ops`` bound everything else, since a pooling window or an elementwise
node on a large activation costs time too:
- Conv / ConvInteger / QLinearConv: output elements x (input channels / group) x kernel size (macs);
- Gemm / MatMul and their int8 forms: output elements x the reduced dimension (macs);
- pooling: output elements x window (global pooling, ReduceMean: input elements) (ops);
- every other node: its output elements, one operation per element (ops).
Parameters: elements of every initializer and Constant tensor. Strict (the agent's budget): a node
whose shapes inference cannot pin down makes the cost unknown, ``ComputeBudgetError``, since an
unbounded cost is refused. Lenient (``inspect``): such a node counts nothing.
"""

from __future__ import annotations

import math

import onnx

from hdus_edge.errors import ComputeBudgetError
from hdus_edge.onnx.contract import ComputeBudget, GraphCost

_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of its weight input
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul"}


def graph_cost(model: onnx.ModelProto, *, strict: bool = True) -> GraphCost:
    """The per-sample cost of ``model`` (main graph, no subgraphs: the allowlist has none).

    ``strict``: ``ComputeBudgetError`` when a node's cost cannot be bounded; otherwise it counts 0.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_value = 1  # one sample: the cost is per sample
    del graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001  # the C++ inference raises assorted types
        if strict:
            raise ComputeBudgetError(f"cannot infer the model's shapes to bound its cost: {exc}") from None
        try:
            inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        except Exception:  # noqa: BLE001  # a model that fails inference still gets the rest of its report
            inferred = fixed
    shapes: dict[str, list[int] | None] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[value.name] = _static_dims(value)
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    params = sum(math.prod(t.dims) for t in inferred.graph.initializer)
    macs = ops = 0
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    params += math.prod(attr.t.dims)
            continue
        try:
            out = [shapes.get(name) for name in node.output if name]
            if not out or any(s is None for s in out):
                raise ComputeBudgetError(
                    f"cannot bound the cost of node {node.name or node.op_type!r}: its output shape is not static")
            out_elems = sum(math.prod(s) for s in out if s is not None)
            node_macs, node_ops = _node_cost(node, out_elems, shapes)
        except ComputeBudgetError:
            if strict:
                raise
            continue
        macs += node_macs
        ops += node_ops
    return GraphCost(macs=int(macs), params=int(params), ops=int(ops))


def check_budget(model: onnx.ModelProto, budget: ComputeBudget) -> GraphCost:
    """Raise ``ComputeBudgetError`` when ``model`` costs more than ``budget``; return its cost."""
    cost = graph_cost(model)
    ref = budget.reference
    if cost.work > budget.max_work:
        raise ComputeBudgetError(
            f"model needs {cost.macs:,} MACs and {cost.ops:,} other operations per sample, over the budget of "
            f"{budget.max_work:,} ({budget.multiple:g} x the fleet's seed, {ref.work:,})",
            hint="seeds are tiny; the profile's limits.seed_compute_multiple sets the budget",
        )
    if cost.params > budget.max_params:
        raise ComputeBudgetError(
            f"model has {cost.params:,} parameters, over the budget of {budget.max_params:,} "
            f"({budget.multiple:g} x the fleet's seed, {ref.params:,})",
            hint="seeds are tiny; the profile's limits.seed_compute_multiple sets the budget",
        )
    return cost


def _static_dims(value: onnx.ValueInfoProto) -> list[int] | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return dims


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return []


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _node_cost(node: onnx.NodeProto, out_elems: int, shapes: dict[str, list[int] | None]) -> tuple[int, int]:
    """(macs, ops) of one node with ``out_elems`` output elements per sample."""

    def shape_of(index: int) -> list[int] | None:
        return shapes.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    op = node.op_type
    if op in _CONV_WEIGHT:
        weight = shape_of(_CONV_WEIGHT[op])
        if weight is None or len(weight) < 3:
            raise ComputeBudgetError(f"cannot bound the cost of {op} node {node.name!r}: weight shape unknown")
        return out_elems * weight[1] * math.prod(weight[2:]), 0
    if op == "Gemm":
        a = shape_of(0)
        if a is None or len(a) != 2:
            raise ComputeBudgetError(f"cannot bound the cost of Gemm node {node.name!r}: input shape unknown")
        reduced = a[0] if _attr_int(node, "transA", 0) else a[1]
        return out_elems * reduced, 0
    if op in _MATMUL:
        a = shape_of(0)
        if a is None or len(a) < 1:
            raise ComputeBudgetError(f"cannot bound the cost of {op} node {node.name!r}: input shape unknown")
        return out_elems * a[-1], 0
    if op in ("AveragePool", "MaxPool"):
        return 0, out_elems * max(1, math.prod(_attr_ints(node, "kernel_shape") or [1]))
    if op in ("GlobalAveragePool", "ReduceMean"):
        x = shape_of(0)
        return 0, max(out_elems, math.prod(x) if x is not None else out_elems)
    return 0, out_elems
