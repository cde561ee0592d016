"""Pack same-architecture seeds into one wider graph (pure, onnx only): a speed-up at batch 1.

K seeds with the same structure become one chain whose activations hold the K members' channels
side by side ([N, K*C, H, W], member k in block k): the first Conv on the shared input
concatenates output channels, later Convs become grouped convolutions (group K*g), a Gemm on
packed features becomes a grouped 1x1 convolution (one batched block-diagonal matmul), and
per-channel operators (Relu, Clip, pooling, Flatten(axis=1), Add) keep the layout. Computation
on the shared input before any weight (e.g. seed-mlp's AveragePool) runs once. The packed logits
[N, K*O] are split back into one [N, O] output per member, so the combination after them is the
same as without packing. Anything outside this pattern raises ``NotPackable`` and the caller
fuses those seeds one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

_PER_CHANNEL = {"Relu", "Clip", "Identity", "GlobalAveragePool", "AveragePool", "MaxPool"}
_PACKABLE = _PER_CHANNEL | {"Conv", "Gemm", "Flatten", "Add", "Constant"}


class NotPackable(Exception):
    """The models do not share one packable structure (an internal signal, not a user error)."""


@dataclass(frozen=True)
class PackedGroup:
    """The packed graph pieces: nodes and initializers to append, and the per-member outputs."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    outputs: list[str]  # one [N, O] logits tensor per member, in the given order


def signature(model: onnx.ModelProto) -> bytes | None:
    """A key equal for models that can be packed together (same structure and non-weight
    constants, any weights); ``None`` when the model uses operators packing does not handle."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1 or graph.sparse_initializer:
        return None
    inits = {t.name: t for t in graph.initializer}
    refs: dict[str, str] = {graph.input[0].name: "in"}
    parts: list[bytes] = []
    for i, node in enumerate(graph.node):
        if node.op_type not in _PACKABLE or node.domain not in ("", "ai.onnx"):
            return None
        items: list[str] = []
        for slot, name in enumerate(node.input):
            if name in refs:
                items.append(refs[name])
            elif name in inits:
                t = inits[name]
                weight = node.op_type in ("Conv", "Gemm") and slot in (1, 2)
                # Weights may differ between members; every other constant must be identical.
                items.append(f"w{list(t.dims)}:{t.data_type}" if weight else
                             "c" + t.SerializeToString(deterministic=True).hex())
            elif name == "":
                items.append("-")
            else:
                return None  # reads a value nothing defines
        attrs = sorted(a.SerializeToString(deterministic=True).hex() for a in node.attribute)
        parts.append(f"{node.op_type}|{','.join(items)}|{','.join(attrs)}|{len(node.output)}".encode())
        for j, out in enumerate(node.output):
            refs[out] = f"n{i}.{j}"
    parts.append(refs.get(graph.output[0].name, "?").encode())
    return b"\n".join(parts)


def pack_models(
    models: Sequence[onnx.ModelProto], prefix: str, shared_input: str, outputs: Sequence[str]
) -> PackedGroup:
    """Pack ``models`` (same ``signature``) into one graph reading ``shared_input``.

    Internal names are prefixed with ``prefix``; member m's logits come out as ``outputs[m]``.
    Raises ``NotPackable`` when the structure does not fit.
    """
    k = len(models)
    if len(outputs) != k:
        raise ValueError("one output name per model")
    if k < 2 or len({signature(m) for m in models}) != 1 or signature(models[0]) is None:
        raise NotPackable("need two or more models with one packable signature")
    graphs = [m.graph for m in models]
    inits = [{t.name: t for t in g.initializer} for g in graphs]
    first = graphs[0]
    source = first.input[0].name
    layout: dict[str, str] = {source: "shared"}  # value name (member 0's) -> "shared" | "packed"
    names: dict[str, str] = {source: shared_input}
    nodes: list[onnx.NodeProto] = []
    out_inits: list[onnx.TensorProto] = []

    def name_of(n: str) -> str:
        return names.get(n, prefix + n)

    def weights(index: int, slot: int) -> list[np.ndarray]:
        node_inputs = [g.node[index].input[slot] for g in graphs]
        if any(n not in inits[m] for m, n in enumerate(node_inputs)):
            raise NotPackable("weights that are not initializers")
        return [numpy_helper.to_array(inits[m][n]) for m, n in enumerate(node_inputs)]

    def add_init(name: str, array: np.ndarray) -> str:
        out_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), prefix + name))
        return prefix + name

    def constant_input(name: str) -> str:
        # A non-weight initializer, identical in every member (checked by the signature).
        if name in inits[0] and name not in {t.name[len(prefix):] for t in out_inits}:
            out_inits.append(_renamed(inits[0][name], prefix + name))
        return name_of(name)

    for index, node in enumerate(first.node):
        op = node.op_type
        ins = list(node.input)
        kinds = [layout.get(n, "const") for n in ins]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        new_out = [prefix + o for o in node.output]
        if op == "Constant":
            nodes.append(_copy_node(node, prefix + f"n{index}", [], new_out))
            for o in node.output:
                layout[o] = "const"
            continue
        if op in ("Conv", "Gemm") and kinds[0] == "shared" and all(k_ == "const" for k_ in kinds[1:]):
            # Weights applied to the shared input: stack the members' output channels.
            w = weights(index, 1)
            if op == "Conv":
                if attrs.get("group", 1) != 1:
                    raise NotPackable("grouped Conv on the shared input")
                conv_in = [name_of(ins[0]), add_init(f"n{index}.w", np.concatenate(w, axis=0))]
            else:
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise NotPackable("Gemm with transA/alpha/beta")
                w = [x if attrs.get("transB", 0) else x.T for x in w]
                conv_in = [name_of(ins[0]), add_init(f"n{index}.w", np.concatenate(w, axis=0))]
            if len(ins) > 2 and ins[2]:
                conv_in.append(add_init(f"n{index}.b", np.concatenate([b.reshape(-1) for b in weights(index, 2)])))
            extra = {"transB": 1} if op == "Gemm" else {}
            nodes.append(_copy_node(node, prefix + f"n{index}", conv_in, new_out, drop=frozenset({"transB"}), **extra))
        elif op == "Conv" and kinds[0] == "packed" and all(k_ == "const" for k_ in kinds[1:]):
            w = np.concatenate(weights(index, 1), axis=0)
            conv_in = [name_of(ins[0]), add_init(f"n{index}.w", w)]
            if len(ins) > 2 and ins[2]:
                conv_in.append(add_init(f"n{index}.b", np.concatenate(weights(index, 2))))
            nodes.append(_copy_node(node, prefix + f"n{index}", conv_in, new_out, drop=frozenset({"group"}),
                                    group=k * int(attrs.get("group", 1))))
        elif op == "Gemm" and kinds[0] == "packed" and all(k_ == "const" for k_ in kinds[1:]):
            # Block-diagonal Gemm = grouped 1x1 Conv over [N, K*F, 1, 1].
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise NotPackable("Gemm with transA/alpha/beta")
            w = [x if attrs.get("transB", 0) else x.T for x in weights(index, 1)]  # each [O, F]
            o, f = w[0].shape
            shape4 = add_init(f"n{index}.shape4", np.array([0, k * f, 1, 1], dtype=np.int64))
            conv_in = [prefix + f"n{index}.x4", add_init(f"n{index}.w", np.concatenate(w)[:, :, None, None])]
            if len(ins) > 2 and ins[2]:
                conv_in.append(add_init(f"n{index}.b", np.concatenate([b.reshape(-1) for b in weights(index, 2)])))
            nodes += [
                helper.make_node("Reshape", [name_of(ins[0]), shape4], [conv_in[0]], name=prefix + f"n{index}.r"),
                helper.make_node("Conv", conv_in, [prefix + f"n{index}.y4"], name=prefix + f"n{index}", group=k,
                                 kernel_shape=[1, 1]),
                helper.make_node("Flatten", [prefix + f"n{index}.y4"], new_out, name=prefix + f"n{index}.f", axis=1),
            ]
        elif op in _PER_CHANNEL or (op == "Flatten" and attrs.get("axis", 1) == 1):
            if kinds[0] not in ("shared", "packed") or any(k_ not in ("const",) for k_ in kinds[1:]):
                raise NotPackable(f"{op} on unexpected inputs")
            nodes.append(_copy_node(node, prefix + f"n{index}", [name_of(ins[0])] +
                                    [constant_input(n) if n else "" for n in ins[1:]], new_out))
            for o in node.output:
                layout[o] = kinds[0]
            continue
        elif op == "Add" and kinds[0] == kinds[1] and kinds[0] in ("shared", "packed"):
            nodes.append(_copy_node(node, prefix + f"n{index}", [name_of(n) for n in ins], new_out))
            for o in node.output:
                layout[o] = kinds[0]
            continue
        else:
            raise NotPackable(f"{op} with inputs {kinds}")
        for o in node.output:
            layout[o] = "packed"

    out = first.output[0].name
    if layout.get(out) != "packed":
        raise NotPackable("the output does not depend on member weights")
    classes = first.output[0].type.tensor_type.shape.dim[-1].dim_value
    if classes <= 0:
        raise NotPackable("unknown class count")
    split = add_init("split", np.full(k, classes, dtype=np.int64))
    nodes.append(helper.make_node("Split", [name_of(out), split], list(outputs), name=prefix + "split", axis=1))
    return PackedGroup(nodes, out_inits, list(outputs))


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _copy_node(
    node: onnx.NodeProto,
    name: str,
    inputs: list[str],
    outputs: list[str],
    drop: frozenset[str] = frozenset(),
    **override: object,
) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name, copy.doc_string = name, ""
    copy.input[:], copy.output[:] = inputs, outputs
    if drop or override:
        kept = [a for a in copy.attribute if a.name not in drop and a.name not in override]
        del copy.attribute[:]
        copy.attribute.extend(kept)
        copy.attribute.extend(helper.make_attribute(k, v) for k, v in override.items())
    return copy
