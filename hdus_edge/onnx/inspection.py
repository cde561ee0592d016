"""The facts ``hdus-edge inspect`` shows about one ONNX file (pure, onnx only).

MACs per sample come from ``onnx.cost`` (Conv, Gemm, MatMul and their int8 forms, as the torch count
gives them), the same count the agent's compute budget uses.
"""

from __future__ import annotations

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
from hdus_edge.onnx.cost import graph_cost
from hdus_edge.onnx.metadata import metadata_dict, read_provenance


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
    cost = graph_cost(model, strict=False)  # what the agent's compute budget counts (lenient: a report)
    return InspectReport(
        bytes=len(data),
        ir_version=model.ir_version,
        opset=default_opset(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[describe_value(v) for v in model.graph.input],
        outputs=[describe_value(v) for v in model.graph.output],
        operators=dict(sorted(Counter(n.op_type for _, n in _iter_nodes(model)).items())),
        params=cost.params,
        macs=cost.macs,
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
