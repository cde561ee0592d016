"""One ONNX graph holding the main model, every seed and the HDUS combination rule (pure, onnx only).

Each member's graph is copied with every node, value and initializer name prefixed (``main/``,
``s000/``, ``s001/`` ... in sorted device-id order) and its input wired to the shared ``input``.
The combination reproduces ``hdus_edge.ensemble.combine.combine`` operation for operation: per
member Softmax in ``"probs"`` space, seeds summed left to right in device-id order (numpy reduces
the stacked seeds the same way), divided by K, then ``(1 - w) * main + w * mean``. So the fused
graph and the per-member sessions agree to float rounding of Softmax only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hdus_edge.ensemble.combine import COMBINE_SPACES, CombineSpace, effective_lam
from hdus_edge.ensemble.pack import NotPackable, pack_models, signature
from hdus_edge.errors import EnsembleError
from hdus_edge.onnx.checks import STANDARD_DOMAINS, default_opset

logger = logging.getLogger(__name__)

INPUT = "input"
OUTPUT = "ensemble"
MAIN_PREFIX = "main/"
MEMBERS_KEY = "hdus.ensemble.members"


def seed_prefix(index: int) -> str:
    """Name prefix of the seed at ``index`` in sorted device-id order."""
    return f"s{index:03d}/"


def member_output(prefix: str) -> str:
    """Name of a member's logits output in the fused graph."""
    return f"{prefix}logits"


def fuse_ensemble(
    main: onnx.ModelProto,
    seeds: Mapping[str, onnx.ModelProto],
    lam: float,
    space: CombineSpace = "probs",
    *,
    member_outputs: bool = False,
    pack: bool = True,
) -> onnx.ModelProto:
    """Build the fused ensemble model from parsed member models.

    ``seeds`` maps device id -> model; members are placed in sorted device-id order. Outputs:
    ``ensemble`` [N, classes] (logits or probabilities, per ``space``), and with
    ``member_outputs`` each member's logits (``main/logits``, ``s000/logits``, ...; for tests and
    diagnostics: a tensor that is both consumed and a graph output stops onnxruntime fusing the
    Q/DQ groups of int8 members, so their numbers change slightly). With ``pack``,
    seeds of the same architecture run as one packed chain (``hdus_edge.ensemble.pack``). Raises
    ``EnsembleError`` when members disagree on input or output shape.
    """
    if space not in COMBINE_SPACES:
        raise EnsembleError(f"unknown combine space {space!r}", hint=f"use one of {COMBINE_SPACES}")
    order = sorted(seeds)
    weight = effective_lam(lam, len(order))
    members = [(MAIN_PREFIX, "main", main)] + [(seed_prefix(i), d, seeds[d]) for i, d in enumerate(order)]
    # Operator semantics change between opsets, so every member is brought to the newest one.
    opset = max(default_opset(m) for _, _, m in members)
    in_type, out_type = _io_types(main)

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    sparse: list[onnx.SparseTensorProto] = []
    infos: list[onnx.ValueInfoProto] = []
    members = [(prefix, device, _at_opset(model, opset, device)) for prefix, device, model in members]
    for _, device, model in members:
        m_in, m_out = _io_types(model)
        if _shape(m_in)[1:] != _shape(in_type)[1:] or _shape(m_out)[1:] != _shape(out_type)[1:]:
            raise EnsembleError(
                f"member {device!r} maps {_shape(m_in)} -> {_shape(m_out)}, but the main model maps "
                f"{_shape(in_type)} -> {_shape(out_type)}",
                hint="every seed must take the fleet's input shape and predict the fleet's classes",
            )
    packed = _pack_seeds(members[1:], nodes, inits) if pack else set()
    for prefix, device, model in members:
        if prefix != MAIN_PREFIX and device in packed:
            continue
        out = _copy_member(model, prefix, nodes, inits, sparse, infos)
        if out != member_output(prefix):  # a fixed name per member, whatever the exporter called it
            nodes.append(helper.make_node("Identity", [out], [member_output(prefix)], name=f"{prefix}out"))
    logits = [member_output(prefix) for prefix, _, _ in members]

    def const(name: str, value: float) -> str:
        inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name

    in_space = logits
    if space == "probs":
        in_space = [f"{name}:probs" for name in logits]
        nodes += [helper.make_node("Softmax", [a], [b], name=f"ens/softmax{i}", axis=-1)
                  for i, (a, b) in enumerate(zip(logits, in_space))]
    if weight == 0.0:
        nodes.append(helper.make_node("Identity", [in_space[0]], [OUTPUT], name="ens/out"))
    else:
        # ((s0 + s1) + s2) ... then / K: the same order and rounding as numpy's mean over axis 0.
        total = in_space[1]
        for i, name in enumerate(in_space[2:], start=2):
            nodes.append(helper.make_node("Add", [total, name], [f"ens/sum{i}"], name=f"ens/add{i}"))
            total = f"ens/sum{i}"
        k = const("ens/k", float(len(order)))
        nodes += [
            helper.make_node("Div", [total, k], ["ens/mean"], name="ens/div"),
            helper.make_node("Mul", [in_space[0], const("ens/1-w", 1.0 - weight)], ["ens/main_w"], name="ens/mul_main"),
            helper.make_node("Mul", ["ens/mean", const("ens/w", weight)], ["ens/seeds_w"], name="ens/mul_seeds"),
            helper.make_node("Add", ["ens/main_w", "ens/seeds_w"], [OUTPUT], name="ens/out"),
        ]

    batch_classes = _shape(out_type)
    outputs = [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", batch_classes[1]])]
    if member_outputs:
        outputs += [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", batch_classes[1]])
                    for name in logits]
    graph = helper.make_graph(
        nodes, "hdus_ensemble",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", *_shape(in_type)[1:]])],
        outputs, initializer=inits, value_info=infos, sparse_initializer=sparse,
    )
    fused = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=max(m.ir_version for _, _, m in members),
        producer_name="hdus-edge",
    )
    meta = fused.metadata_props.add()
    meta.key, meta.value = MEMBERS_KEY, json.dumps({"seeds": order, "lam": lam, "space": space,
                                                  "packed": sorted(packed)})
    logger.debug("fused main + %d seeds (%s space, lam %.3f): %d nodes", len(order), space, weight, len(nodes))
    return fused


def _pack_seeds(
    seeds: list[tuple[str, str, onnx.ModelProto]], nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]
) -> set[str]:
    """Append packed chains for groups of same-structure seeds; return the device ids packed."""
    groups: dict[bytes, list[tuple[str, str, onnx.ModelProto]]] = {}
    for member in seeds:  # sorted device-id order, so groups and their layout are deterministic
        key = signature(member[2])
        if key is not None:
            groups.setdefault(key, []).append(member)
    packed: set[str] = set()
    for index, group in enumerate(g for g in groups.values() if len(g) >= 2):
        try:
            result = pack_models([m for _, _, m in group], f"p{index:03d}/", INPUT,
                                 [member_output(prefix) for prefix, _, _ in group])
        except NotPackable as exc:
            logger.debug("seeds %s not packed: %s", [d for _, d, _ in group], exc)
            continue
        nodes += result.nodes
        inits += result.initializers
        packed.update(d for _, d, _ in group)
    return packed


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _io_types(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise EnsembleError("every ensemble member must have exactly one input and one output")
    return model.graph.input[0], model.graph.output[0]


def _at_opset(model: onnx.ModelProto, opset: int, device: str) -> onnx.ModelProto:
    if default_opset(model) == opset:
        return model
    # Operator semantics change between opsets (e.g. ReduceMean's axes), so a member exported at
    # an older opset is converted rather than relabelled.
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001  # the converter raises assorted C++ errors
        raise EnsembleError(
            f"member {device!r} uses opset {default_opset(model)} and cannot be converted to opset {opset}: {exc}"
        ) from None


def _copy_member(
    model: onnx.ModelProto,
    prefix: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    sparse: list[onnx.SparseTensorProto],
    infos: list[onnx.ValueInfoProto],
) -> str:
    """Append ``model``'s graph with names prefixed; return the member's output name."""
    graph = model.graph
    source = graph.input[0].name

    def rename(name: str) -> str:
        # "" marks an omitted optional input and must stay empty.
        return name if not name else INPUT if name == source else prefix + name

    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        inits.append(copy)
    for tensor in graph.sparse_initializer:
        copy_s = onnx.SparseTensorProto()
        copy_s.CopyFrom(tensor)
        copy_s.values.name = rename(tensor.values.name)
        copy_s.indices.name = rename(tensor.indices.name) if tensor.indices.name else ""
        sparse.append(copy_s)
    for i, node in enumerate(graph.node):
        if node.domain not in STANDARD_DOMAINS or any(
            a.HasField("g") or len(a.graphs) for a in node.attribute
        ):
            raise EnsembleError(f"cannot fuse node {node.op_type!r} ({node.domain or 'ai.onnx'}): "
                                "subgraphs and custom domains are not supported")
        copy_n = onnx.NodeProto()
        copy_n.CopyFrom(node)
        copy_n.name = prefix + (node.name or f"node{i}")
        copy_n.input[:] = [rename(n) for n in node.input]
        copy_n.output[:] = [rename(n) for n in node.output]
        copy_n.doc_string = ""
        nodes.append(copy_n)
    for value in graph.value_info:
        copy_v = onnx.ValueInfoProto()
        copy_v.CopyFrom(value)
        copy_v.name = rename(value.name)
        infos.append(copy_v)
    out = rename(graph.output[0].name)
    if out == INPUT:
        raise EnsembleError("a member whose output is its input cannot be fused")
    return out
