"""Safe loading of untrusted ONNX bytes (every seed that is not our own). Pure: no torch, no files.

``check_onnx(data, contract)`` either returns a ``CheckedModel`` or raises one specific
``OnnxRejectedError`` subclass; it touches nothing of the caller's, so on rejection the store and
the running ensemble stay exactly as they were. Order of the checks, cheapest and most dangerous
first: size cap (before parsing), parse, is-a-model, external data, IR/opset range, operator
domains, operator allowlist, ``onnx.checker`` full check with strict shape inference, the fleet's
input/output contract (name-independent), and the provenance metadata's consistency.
``find_problems`` runs the same checks but collects every failure, for ``hdus-edge inspect``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import onnx
from google.protobuf.message import DecodeError

from hdus_edge.errors import (
    ContractMismatchError,
    CustomDomainError,
    DisallowedOperatorError,
    ExternalDataError,
    NotOnnxError,
    OnnxCheckError,
    OnnxRejectedError,
    OpsetError,
    PayloadTooLargeError,
)

# The contract, the policy and the operator sets live in an onnx-free module (the agent process
# imports them without loading onnx); they are re-exported here, where callers have always found them.
from hdus_edge.onnx.contract import (
    ALLOWED_OPS,
    DEFAULT_MAX_BYTES,
    DEFAULT_POLICY,
    EQUIVALENT_OPS,
    INT8_OPS,
    STANDARD_DOMAINS,
    ZOO_OPS,
    LoadPolicy,
    ModelContract,
)
from hdus_edge.onnx.cost import check_budget
from hdus_edge.onnx.metadata import Provenance, metadata_dict, read_provenance

logger = logging.getLogger(__name__)

__all__ = ["ALLOWED_OPS", "DEFAULT_MAX_BYTES", "DEFAULT_POLICY", "EQUIVALENT_OPS", "INT8_OPS", "STANDARD_DOMAINS",
           "ZOO_OPS", "CheckedModel", "LoadPolicy", "ModelContract", "check_onnx", "parse_onnx"]


@dataclass(frozen=True)
class CheckedModel:
    """A model that passed every check: its bytes, parsed proto and what it says about itself.

    ``model`` is the parsed proto (not the shape-inferred copy); treat it as read-only.
    """

    data: bytes
    model: onnx.ModelProto
    sha256: str
    opset: int
    provenance: Provenance | None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# --- parsing -------------------------------------------------------------------------------


def check_size(size: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise ``PayloadTooLargeError`` when ``size`` bytes exceed the cap (call before reading/parsing)."""
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"ONNX payload is {size} bytes, over the cap of {max_bytes} bytes",
            hint="seeds are a few KiB; raise the cap (max_bytes) only for trusted main models",
        )


def parse_onnx(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> onnx.ModelProto:
    """Size-check then parse ``data`` as a ModelProto that has a graph; nothing else is checked.

    Raises ``PayloadTooLargeError`` or ``NotOnnxError``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    check_size(len(data), max_bytes)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise NotOnnxError(
            f"bytes do not parse as an ONNX model ({len(data)} bytes; truncated or not ONNX): {exc}"
        ) from None
    # Protobuf parses many byte strings "successfully" into an empty or odd message; a model
    # has at least an IR version, an operator set and a graph with nodes.
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise NotOnnxError(
            f"bytes parse as protobuf but not as an ONNX model (ir_version={model.ir_version}, "
            f"graph={'present' if model.HasField('graph') else 'missing'}, nodes={len(model.graph.node)})"
        )
    return model


# --- walking every place a model can hide things ------------------------------------------


def _subgraphs(where: str, node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    found = []
    for attr in node.attribute:
        if attr.HasField("g"):
            found.append((f"{where}/{node.op_type}:{attr.name}", attr.g))
        found += [(f"{where}/{node.op_type}:{attr.name}[{j}]", g) for j, g in enumerate(attr.graphs)]
    return found


def _iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    # Breadth first: the main graph, training graphs, then every subgraph in node attributes,
    # including those inside model-local functions.
    queue: deque[tuple[str, onnx.GraphProto]] = deque([("graph", model.graph)])
    for i, info in enumerate(model.training_info):
        queue.append((f"training_info[{i}].initialization", info.initialization))
        queue.append((f"training_info[{i}].algorithm", info.algorithm))
    for function in model.functions:
        for node in function.node:
            queue.extend(_subgraphs(f"function {function.name}", node))
    while queue:
        where, graph = queue.popleft()
        yield where, graph
        for node in graph.node:
            queue.extend(_subgraphs(where, node))


def _iter_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    for where, graph in _iter_graphs(model):
        for node in graph.node:
            yield where, node
    for function in model.functions:
        for node in function.node:
            yield f"function {function.domain}:{function.name}", node


def _iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    def attr_tensors(where: str, attr: onnx.AttributeProto) -> Iterator[tuple[str, onnx.TensorProto]]:
        if attr.HasField("t"):
            yield where, attr.t
        yield from ((where, t) for t in attr.tensors)
        sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
        for s in sparse:
            yield where, s.values
            yield where, s.indices

    for where, graph in _iter_graphs(model):
        yield from ((f"{where} initializer", t) for t in graph.initializer)
        for s in graph.sparse_initializer:
            yield f"{where} sparse initializer", s.values
            yield f"{where} sparse initializer", s.indices
        for node in graph.node:
            for attr in node.attribute:
                yield from attr_tensors(f"{where} node {node.op_type}", attr)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                yield from attr_tensors(f"function {function.name} node {node.op_type}", attr)


# --- the checks, each raising one specific error ------------------------------------------


def check_external_data(model: onnx.ModelProto) -> None:
    """Reject any tensor, anywhere, whose data lives outside the model bytes."""
    for where, tensor in _iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ExternalDataError(
                f"tensor {tensor.name!r} ({where}) refers to external data at {location!r}; "
                "seeds must carry all their weights inside the ONNX bytes",
                hint="export with external data disabled (the default for models under 2 GB)",
            )


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version, 0 when it imports none."""
    return max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=0)


def check_versions(model: onnx.ModelProto, policy: LoadPolicy = DEFAULT_POLICY) -> None:
    """Reject an IR version or default-domain opset outside the policy's range."""
    if not policy.min_ir_version <= model.ir_version <= policy.max_ir_version:
        raise OpsetError(
            f"IR version {model.ir_version} is outside the supported range "
            f"{policy.min_ir_version}..{policy.max_ir_version}",
            hint="export with hdus-edge (opset 17, IR 8) or a compatible exporter",
        )
    opset = default_opset(model)
    if not policy.min_opset <= opset <= policy.max_opset:
        raise OpsetError(
            f"opset {opset or 'missing'} is outside the supported range {policy.min_opset}..{policy.max_opset}",
            hint="export with opset 17",
        )


def check_domains(model: onnx.ModelProto) -> None:
    """Reject custom operator domains: in opset imports, in nodes anywhere, and model-local functions."""
    custom = sorted({o.domain for o in model.opset_import if o.domain not in STANDARD_DOMAINS})
    custom += sorted({f"{n.domain} ({n.op_type}, {w})" for w, n in _iter_nodes(model) if n.domain not in STANDARD_DOMAINS})
    if model.functions:
        custom.append(f"model-local functions {[f'{f.domain}:{f.name}' for f in model.functions]}")
    if custom:
        raise CustomDomainError(
            f"model uses operator domains outside the standard ONNX one: {', '.join(custom)}",
            hint="seeds may use standard ONNX operators only (no com.microsoft or custom ops)",
        )


def check_node_count(model: onnx.ModelProto, policy: LoadPolicy = DEFAULT_POLICY) -> None:
    """Raise ``OnnxCheckError`` when the model (subgraphs included) has more nodes than allowed."""
    count = sum(1 for _ in _iter_nodes(model))
    if count > policy.max_nodes:
        raise OnnxCheckError(
            f"model has {count} nodes, more than the limit of {policy.max_nodes}",
            hint="seeds are tiny models of a few dozen nodes; raise LoadPolicy.max_nodes only for trusted models",
        )


def check_operators(model: onnx.ModelProto, policy: LoadPolicy = DEFAULT_POLICY) -> None:
    """Reject operators outside the allowlist (derived from what the zoo exports)."""
    bad = sorted({n.op_type for _, n in _iter_nodes(model) if n.op_type not in policy.allowed_ops})
    if bad:
        raise DisallowedOperatorError(
            f"model uses operators outside the allowlist: {', '.join(bad)}",
            hint=f"allowed: {', '.join(sorted(policy.allowed_ops))}",
        )


def check_structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ``onnx.checker`` (full check) and strict shape inference; return the shape-inferred copy."""
    if len(model.training_info) > 0:
        raise OnnxCheckError("model carries training_info; a seed is an inference graph only")
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxCheckError(f"onnx.checker rejected the model: {first}") from None
    except Exception as exc:  # noqa: BLE001  # the C++ checker raises assorted types on odd protos
        raise OnnxCheckError(f"onnx.checker failed on the model: {type(exc).__name__}: {exc}") from None


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _dtype(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type"):
        return value.type.WhichOneof("value") or "unknown"
    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)


def describe_value(value: onnx.ValueInfoProto) -> dict[str, object]:
    """Name, dtype and shape (ints, symbolic names, or None) of a graph input or output."""
    return {"name": value.name, "dtype": _dtype(value), "shape": _dims(value)}


def check_contract(model: onnx.ModelProto, contract: ModelContract) -> None:
    """Check the name-independent I/O contract on a (preferably shape-inferred) model.

    Exactly one input, float32 [N, C, H, W] with a dynamic batch and (C, H, W) equal to the
    contract's; exactly one output, float32 [N, num_classes].
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    if len(graph.input) != 1:
        raise ContractMismatchError(
            f"model has {len(graph.input)} inputs ({', '.join(repr(i.name) for i in graph.input)}), expected exactly 1"
        )
    if len(graph.output) != 1:
        raise ContractMismatchError(
            f"model has {len(graph.output)} outputs ({', '.join(repr(o.name) for o in graph.output)}), expected exactly 1"
        )
    inp, out = graph.input[0], graph.output[0]
    if inp.name in initializers:
        raise ContractMismatchError(f"the input {inp.name!r} is also an initializer; expected a plain data input")
    want_in = ["N", *contract.input_shape]
    if _dtype(inp) != "FLOAT":
        raise ContractMismatchError(f"input {inp.name!r} has dtype {_dtype(inp)}, expected FLOAT (float32)")
    dims = _dims(inp)
    if dims is None or len(dims) != 4 or isinstance(dims[0], int) or dims[1:] != list(contract.input_shape):
        raise ContractMismatchError(
            f"input {inp.name!r} has shape {dims}, expected {want_in} with a dynamic batch N",
            hint="every model in the fleet must take the fleet's input shape",
        )
    if _dtype(out) != "FLOAT":
        raise ContractMismatchError(f"output {out.name!r} has dtype {_dtype(out)}, expected FLOAT (float32)")
    dims = _dims(out)
    if dims is None or len(dims) != 2 or isinstance(dims[0], int) or dims[1] != contract.num_classes:
        raise ContractMismatchError(
            f"output {out.name!r} has shape {dims}, expected ['N', {contract.num_classes}] "
            f"(class logits for the fleet's {contract.num_classes} classes)"
        )


def check_provenance(model: onnx.ModelProto, contract: ModelContract) -> Provenance | None:
    """Parse the provenance metadata (if any) and check it agrees with the contract."""
    try:
        provenance = read_provenance(model)
    except ValueError as exc:
        raise OnnxCheckError(f"malformed hdus provenance metadata: {exc}") from None
    if provenance is not None and (
        provenance.input_shape != contract.input_shape or provenance.num_classes != contract.num_classes
    ):
        raise ContractMismatchError(
            f"metadata claims input {provenance.input_shape} and {provenance.num_classes} classes; "
            f"the fleet expects {contract.input_shape} and {contract.num_classes}"
        )
    return provenance


# --- entry points --------------------------------------------------------------------------


def check_onnx(data: bytes, contract: ModelContract, policy: LoadPolicy = DEFAULT_POLICY) -> CheckedModel:
    """Validate untrusted ONNX ``data`` against ``contract``; return it parsed, or raise.

    Raises exactly one ``OnnxRejectedError`` subclass naming the first problem found. Pure: on
    rejection nothing of the caller's has changed. Does not run the model (see ``probe``).
    """
    model = parse_onnx(data, max_bytes=policy.max_bytes)
    try:
        check_external_data(model)
        check_versions(model, policy)
        check_domains(model)
        check_node_count(model, policy)
        check_operators(model, policy)
        inferred = check_structure(model)
        check_contract(inferred, contract)
        if policy.compute_budget is not None:
            check_budget(model, policy.compute_budget)
        provenance = check_provenance(model, contract)
    except (TypeError, UnicodeDecodeError, AttributeError) as exc:
        # The protobuf binding hands non-UTF-8 strings back as bytes: a malformed model, not a bug.
        raise NotOnnxError(f"malformed ONNX model (a field has the wrong type, e.g. a non-UTF-8 string): {exc}") from None
    return CheckedModel(
        data=bytes(data),
        model=model,
        sha256=hashlib.sha256(data).hexdigest(),
        opset=default_opset(model),
        provenance=provenance,
        metadata=MappingProxyType(metadata_dict(model)),
    )


def find_problems(
    model: onnx.ModelProto, contract: ModelContract, policy: LoadPolicy = DEFAULT_POLICY
) -> list[OnnxRejectedError]:
    """Every check ``check_onnx`` would fail on an already parsed ``model``, in order (empty: safe).

    Checks that depend on an earlier one (the checker needs self-contained, standard-domain
    models) are skipped when it failed, so one cause is not reported three times.
    """
    problems: list[OnnxRejectedError] = []

    def attempt(check: Callable[[], object]) -> bool:
        try:
            check()
        except OnnxRejectedError as exc:
            problems.append(exc)
            return False
        return True

    self_contained = attempt(lambda: check_external_data(model))
    attempt(lambda: check_versions(model, policy))
    standard = attempt(lambda: check_domains(model))
    attempt(lambda: check_node_count(model, policy))
    attempt(lambda: check_operators(model, policy))
    inferred: list[onnx.ModelProto] = []
    if self_contained and standard:
        attempt(lambda: inferred.append(check_structure(model)))
    attempt(lambda: check_contract(inferred[0] if inferred else model, contract))
    if policy.compute_budget is not None and inferred:
        budget = policy.compute_budget
        attempt(lambda: check_budget(model, budget))
    attempt(lambda: check_provenance(model, contract))
    return problems
