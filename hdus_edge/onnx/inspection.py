"""The facts ``hdus-edge inspect`` shows about one ONNX file (pure, onnx only).

MACs per sample are estimated from shape inference for the operators that dominate our models
(Conv, Gemm, MatMul and their int8 forms); everything else is counted as free.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from hdus_edge.onnx.checks import (
    DEFAULT_POLICY,
    LoadPolicy,
    ModelContract,
    _iter_nodes,
    default_opset,
    describe_value,
    find_problems,
    parse_onnx,
)
from hdus_edge.onnx.metadata import metadata_dict, read_provenance

_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul"}


@dataclass(frozen=True)
class InspectReport:
    """Everything ``inspect`` reports; ``to_dict`` is the ``--json`` document."""

    bytes: int
    ir_version: int
    opset: int
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    operators: dict[str, int]
    params: int
    macs: int
    metadata: dict[str, str]
    contract: dict[str, int] | None
    safe: bool
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (keys as in the dataclass)."""
        return asdict(self)


def inspect_onnx(
    data: bytes, *, contract: ModelContract | None = None, policy: LoadPolicy = DEFAULT_POLICY
) -> InspectReport:
    """Describe ONNX ``data`` and run the safe-loading checks against ``contract``.

    Without a contract, the one the model's provenance claims is used, else the one its own
    input/output declare (so ``safe`` then means "safe and self-consistent"). Raises
    ``PayloadTooLargeError`` or ``NotOnnxError`` when the bytes cannot be described at all.
    """
    model = parse_onnx(data, max_bytes=policy.max_bytes)
    problems: list[str] = []
    if contract is None:
        contract, why = _own_contract(model)
        if contract is None:
            problems.append(why)
    if contract is not None:
        problems += [str(p) for p in find_problems(model, contract, policy)]
    return InspectReport(
        bytes=len(data),
        ir_version=model.ir_version,
        opset=default_opset(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[describe_value(v) for v in model.graph.input],
        outputs=[describe_value(v) for v in model.graph.output],
        operators=dict(sorted(Counter(n.op_type for _, n in _iter_nodes(model)).items())),
        params=sum(math.prod(t.dims) for t in model.graph.initializer),
        macs=estimate_macs(model),
        metadata=metadata_dict(model),
        contract=None if contract is None else asdict(contract),
        safe=not problems,
        problems=problems,
    )


def _own_contract(model: onnx.ModelProto) -> tuple[ModelContract | None, str]:
    try:
        provenance = read_provenance(model)
    except ValueError as exc:
        provenance = None
        problem = f"malformed provenance metadata: {exc}"
    else:
        problem = ""
    if provenance is not None:
        return ModelContract.from_provenance(provenance), ""
    try:
        return ModelContract.from_graph(model), ""
    except ValueError:
        return None, problem or "no contract: pass --height/--width/--classes (the model declares no usable I/O shape)"


def estimate_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates per sample of Conv, Gemm and MatMul nodes (and their int8 forms).

    Uses shape inference; the first dimension of activations is taken as the batch. Nodes whose
    shapes stay unknown contribute nothing.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  # a model that fails inference still gets the rest of its report
        inferred = model
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
    total = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out or any(d is None for d in out[1:]):
            continue
        if node.op_type in _CONV_WEIGHT and len(node.input) > _CONV_WEIGHT[node.op_type]:
            weight = shapes.get(node.input[_CONV_WEIGHT[node.op_type]])
            if weight and all(d is not None for d in weight):
                total += math.prod(out[1:]) * math.prod(weight[1:])  # type: ignore[arg-type]
        elif node.op_type == "Gemm" or node.op_type in _MATMUL:
            a = shapes.get(node.input[0])
            if not a:
                continue
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[0] if (node.op_type == "Gemm" and trans_a) else a[-1]
            if k is not None:
                total += math.prod(out[1:]) * k  # type: ignore[arg-type]
    return int(total)
