"""Hostile ONNX payloads: what a neighbour (or anyone on its topic) could send instead of a seed.

Every generator is deterministic given its ``seed``. ``OnnxCase.expect`` says what a device must do:
``"reject"`` (malformed, over a cap, or not a fleet model) or ``"either"`` (a random mutation that
may still be a valid, runnable model: accepting it is correct, crashing is not).

Kinds: ``empty``, ``truncated`` (at many offsets), ``random`` (bytes), ``not-a-model`` (valid
protobuf of another message type, or a model without a graph), ``huge-constant`` (over the size
cap), ``nested-graph`` (subgraphs nested far deeper than protobuf parsers allow), ``deep-chain``
(thousands of allowed nodes in a row: a valid model that makes every inference slow),
``memory-bomb`` (a tiny model whose activations need tens of GiB: must be stopped by the probe
child's limits, never run in the agent), and ``mutation`` (random structural and byte-level edits).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONTRACT_SHAPE = (1, 8, 8)  # the fleets the reliability suite builds: [N, 1, 8, 8] -> [N, 10]
NUM_CLASSES = 10


@dataclass(frozen=True)
class OnnxCase:
    """One hostile payload: a stable name, its kind, the bytes, and what the receiver must do."""

    name: str
    kind: str
    data: bytes
    expect: str = "reject"  # "reject" | "either"

    def __repr__(self) -> str:
        return f"OnnxCase({self.name!r}, {len(self.data)} bytes, expect={self.expect})"


# --- protobuf wire helpers (to build messages the onnx helpers refuse to build) ------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def nested_graph_model(depth: int) -> bytes:
    """A ModelProto whose graph nests ``If`` subgraphs ``depth`` levels deep (built on the wire:
    protobuf libraries refuse to build what they refuse to parse)."""
    graph = _field(1, _field(4, b"Identity") + _field(1, b"x") + _field(2, b"y"))  # GraphProto.node
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _int_field(20, 5) + _field(6, graph)  # AttributeProto, type GRAPH
        node = _field(1, b"c") + _field(2, b"o") + _field(4, b"If") + _field(5, attr)
        graph = _field(1, node)
    opset = _field(1, b"") + _int_field(2, 17)
    return _int_field(1, 8) + _field(8, opset) + _field(7, graph)  # ir_version, opset_import, graph


# --- crafted models ----------------------------------------------------------------------------


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *CONTRACT_SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", NUM_CLASSES])
    return x, y


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> bytes:
    x, y = _io()
    graph = helper.make_graph(nodes, "hostile", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _head(src: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """GlobalAveragePool -> Flatten -> Gemm to the classes: any [N, C, H, W] to [N, 10]."""
    w = numpy_helper.from_array(np.full((NUM_CLASSES, 1), 0.01, np.float32), "head_w")
    b = numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "head_b")
    nodes = [
        helper.make_node("GlobalAveragePool", [src], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["y"], transB=1),
    ]
    return nodes, [w, b]


def huge_constant_model(n_bytes: int) -> bytes:
    """A valid model carrying an ``n_bytes`` float constant it adds to nothing useful."""
    count = max(1, n_bytes // 4)
    big = numpy_helper.from_array(np.ones(count, np.float32), "big")
    const = helper.make_node("Constant", [], ["big_out"], value=big)
    head, inits = _head("x")
    return _model([const, *head], inits)


def deep_chain_model(depth: int, op: str = "Relu") -> bytes:
    """A valid model: ``depth`` ``op`` nodes in a row, then the head (slow to load and to run)."""
    nodes = []
    prev = "x"
    for k in range(depth):
        nodes.append(helper.make_node(op, [prev], [f"c{k}"]))
        prev = f"c{k}"
    head, inits = _head(prev)
    return _model(nodes + head, inits)


def heavy_seed_model(channels: int = 64, pad: int = 60, layers: int = 2, seed: int = 0) -> bytes:
    """A valid, well-formed seed of allowed operators only that is expensive to run (attack 5 of
    issue 14): the first Conv pads the 8x8 input to ~(8 + 2 pad)^2 and widens it to ``channels``,
    then ``layers`` 3x3 Convs at that size; about 0.6 G multiply-accumulates per sample by default,
    thousands of times a zoo seed, in ~150 KB."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((0.1 * rng.standard_normal((channels, 1, 3, 3))).astype(np.float32), "w0")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], pads=[pad] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["h0"], ["r0"])]
    prev = "r0"
    for k in range(1, layers + 1):
        w = (rng.standard_normal((channels, channels, 3, 3)) / (3.0 * channels)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}"], [f"h{k}"], pads=[1] * 4, kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"h{k}"], [f"r{k}"])]
        prev = f"r{k}"
    inits.append(numpy_helper.from_array(np.full((1, channels, 1, 1), 1.0 / channels, np.float32), "w_out"))
    nodes.append(helper.make_node("Conv", [prev, "w_out"], ["one"], kernel_shape=[1, 1]))
    head, head_inits = _head("one")
    return _model(nodes + head, inits + head_inits)


def pooling_bomb_model(kernel: int = 200) -> bytes:
    """No weights at all: an AveragePool whose window and padding grow the 8x8 input to
    (7 + kernel)^2 outputs of kernel^2 operations each (~1.7 G operations per sample by default)."""
    pool = helper.make_node("AveragePool", ["x"], ["big"], kernel_shape=[kernel, kernel], pads=[kernel - 1] * 4)
    head, inits = _head("big")
    return _model([pool, *head], inits)


def memory_bomb_model(pad: int = 40000) -> bytes:
    """A ~1 KiB model whose first Conv pads the 8x8 input by ``pad`` on every side: the activation
    is [N, 1, 8 + 2 pad, 8 + 2 pad] floats (about 25 GiB per sample at the default)."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["big"], pads=[pad, pad, pad, pad], kernel_shape=[1, 1])
    head, inits = _head("big")
    return _model([conv, *head], [w, *inits])


def not_a_model_payloads() -> list[tuple[str, bytes]]:
    """Valid protobuf that is not a usable model: other message types, and models without a graph."""
    tensor = numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString()
    node = helper.make_node("Relu", ["a"], ["b"]).SerializeToString()
    x, y = _io()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]).SerializeToString()
    no_graph = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])
    no_graph.ClearField("graph")
    empty_graph = helper.make_model(helper.make_graph([], "empty", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    return [
        ("tensor-proto", tensor),
        ("node-proto", node),
        ("graph-proto", graph),
        ("model-without-graph", no_graph.SerializeToString()),
        ("model-with-empty-graph", empty_graph.SerializeToString()),
        ("varint-only", _int_field(1, 8)),
    ]


# --- random mutations of a valid seed ----------------------------------------------------------

_ATTR_EXTREMES = (0, -1, 1, 2**31 - 1, -(2**31), 2**62, 7, 1000)
_OPS = ("Relu", "Conv", "Gemm", "Add", "Identity", "Reshape", "MaxPool", "If", "Loop", "Custom", "")
_DTYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.STRING, 0, 99)


def _weight_spans(data: bytes, model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Byte ranges of initializer raw_data inside ``data`` (mutating them only changes weights)."""
    spans = []
    for init in model.graph.initializer:
        raw = init.raw_data
        if len(raw) >= 16:
            start = data.find(raw)
            if start >= 0:
                spans.append((start, start + len(raw)))
    return spans


def _structure_positions(data: bytes, spans: list[tuple[int, int]]) -> list[int]:
    mask = np.ones(len(data), bool)
    for a, b in spans:
        mask[a:b] = False
    return np.flatnonzero(mask).tolist()


def _byte_mutation(data: bytes, rng: random.Random, positions: list[int]) -> tuple[str, bytes]:
    buf = bytearray(data)
    what = rng.choice(("flip", "set", "insert", "delete", "duplicate", "truncate-tail", "splice"))
    pos = rng.choice(positions) if positions else rng.randrange(len(buf))
    if what == "flip":
        for _ in range(rng.randint(1, 8)):
            p = rng.choice(positions) if positions else rng.randrange(len(buf))
            buf[p] ^= 1 << rng.randrange(8)
    elif what == "set":
        buf[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif what == "insert":
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif what == "delete":
        del buf[pos : pos + rng.randint(1, 16)]
    elif what == "duplicate":
        n = rng.randint(1, 64)
        buf[pos:pos] = buf[pos : pos + n]
    elif what == "truncate-tail":
        del buf[pos:]
    else:  # splice: a chunk of the model copied over another place
        n = rng.randint(4, 64)
        src = rng.randrange(max(1, len(buf) - n))
        buf[pos : pos + n] = buf[src : src + n]
    return f"bytes-{what}@{pos}", bytes(buf)


def _proto_mutation(model: onnx.ModelProto, rng: random.Random) -> str:
    """Edit ``model`` in place at one random place; return what was done."""
    g = model.graph
    what = rng.choice(("attr", "op", "dims", "dtype", "drop-node", "dup-node", "rewire", "io-shape",
                       "nan-weights", "opset", "init-dims", "drop-init", "domain"))
    if what == "attr":
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            node = rng.choice(nodes)
            attr = rng.choice(node.attribute)
            if attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = rng.choice(_ATTR_EXTREMES)
            else:
                attr.i = rng.choice(_ATTR_EXTREMES)
            return f"attr:{node.op_type}.{attr.name}"
    if what == "op":
        node = rng.choice(g.node)
        old, node.op_type = node.op_type, rng.choice(_OPS)
        return f"op:{old}->{node.op_type or 'empty'}"
    if what == "dims" or what == "init-dims":
        init = rng.choice(g.initializer)
        if init.dims:
            init.dims[rng.randrange(len(init.dims))] = rng.choice((0, 1, 3, 2**31, -1))
        return f"init-dims:{init.name}"
    if what == "dtype":
        init = rng.choice(g.initializer)
        init.data_type = rng.choice(_DTYPES)
        return f"dtype:{init.name}"
    if what == "drop-node":
        k = rng.randrange(len(g.node))
        del g.node[k]
        return f"drop-node:{k}"
    if what == "dup-node":
        k = rng.randrange(len(g.node))
        g.node.append(g.node[k])
        return f"dup-node:{k}"
    if what == "rewire":
        node = rng.choice(g.node)
        names = [v for n in g.node for v in n.output] + [i.name for i in g.initializer] + ["x", "nowhere"]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
        return f"rewire:{node.op_type}"
    if what == "io-shape":
        value = rng.choice((g.input[0], g.output[0]))
        dims = value.type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            d.dim_value = rng.choice((0, 1, 7, 9, 2**40))
        return f"io-shape:{value.name}"
    if what == "nan-weights":
        init = rng.choice(g.initializer)
        arr = numpy_helper.to_array(init).copy()
        if arr.dtype == np.float32 and arr.size:
            arr.flat[rng.randrange(arr.size)] = rng.choice((np.nan, np.inf, -np.inf, 3.4e38))
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return f"nan-weights:{init.name}"
    if what == "opset":
        model.opset_import[0].version = rng.choice((1, 7, 16, 24, 99))
        return f"opset:{model.opset_import[0].version}"
    if what == "drop-init":
        k = rng.randrange(len(g.initializer))
        del g.initializer[k]
        return f"drop-init:{k}"
    node = rng.choice(g.node)
    node.domain = rng.choice(("com.microsoft", "evil", "ai.onnx.ml"))
    return f"domain:{node.domain}"


def mutate(seed_onnx: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of a valid model: half structural (protobuf level), half byte level
    (two thirds of those outside the weight bytes, where a flip changes structure, not a weight)."""
    model = onnx.load_from_string(seed_onnx)
    if rng.random() < 0.5:
        what = _proto_mutation(model, rng)
        return f"proto-{what}", model.SerializeToString()
    spans = _weight_spans(seed_onnx, model)
    positions = _structure_positions(seed_onnx, spans) if rng.random() < 2 / 3 else []
    return _byte_mutation(seed_onnx, rng, positions)


def mutations(seed_onnx: bytes, n: int, seed: int = 0) -> Iterator[OnnxCase]:
    """``n`` random mutations of ``seed_onnx`` (deterministic given ``seed``); each may be valid."""
    rng = random.Random(seed)
    for k in range(n):
        what, data = mutate(seed_onnx, rng)
        yield OnnxCase(f"mutation-{k}:{what}", "mutation", data, expect="either")


# --- the fixed catalogue -------------------------------------------------------------------------


def hostile_onnx_cases(
    seed_onnx: bytes,
    *,
    seed: int = 0,
    truncations: int = 24,
    random_blobs: int = 8,
    size_cap: int = 8 * 1024 * 1024,
    chain_depth: int = 5000,
    nest_depth: int = 2000,
) -> list[OnnxCase]:
    """Every fixed hostile kind (not the random mutations), deterministic given ``seed``.

    ``size_cap`` is the receiver's ONNX size cap: the huge constant is just over it.
    """
    rng = random.Random(seed)
    cases = [OnnxCase("empty", "empty", b"")]
    n = len(seed_onnx)
    offsets = sorted({1, 2, 8, n // 2, n - 1, *(rng.randrange(1, n) for _ in range(max(0, truncations - 5)))})
    cases += [OnnxCase(f"truncated@{k}", "truncated", seed_onnx[:k]) for k in offsets]
    for k in range(random_blobs):
        size = rng.choice((1, 16, 1024, 32 * 1024, 256 * 1024))
        cases.append(OnnxCase(f"random-{k}-{size}B", "random", rng.randbytes(size)))
    cases += [OnnxCase(f"not-a-model:{name}", "not-a-model", data) for name, data in not_a_model_payloads()]
    cases.append(OnnxCase("huge-constant", "huge-constant", huge_constant_model(size_cap + 4096)))
    cases.append(OnnxCase(f"nested-graph-{nest_depth}", "nested-graph", nested_graph_model(nest_depth)))
    cases.append(OnnxCase(f"deep-chain-{chain_depth}", "deep-chain", deep_chain_model(chain_depth)))
    cases.append(OnnxCase("memory-bomb", "memory-bomb", memory_bomb_model()))
    return cases


def has_non_utf8_strings(data: bytes) -> bool:
    """True when ``data`` parses as a ModelProto with a string field that is not valid UTF-8.

    The onnx protobuf (proto2) hands such fields back as ``bytes`` instead of ``str``; code that
    formats or pattern-matches them then raises ``TypeError``.
    """
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import DecodeError, Message

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return False
    stack: list[Message] = [model]
    while stack:
        msg = stack.pop()
        for fd, value in msg.ListFields():
            values = value if fd.is_repeated else [value]
            if fd.type == FieldDescriptor.TYPE_STRING and any(isinstance(v, bytes) for v in values):
                return True
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend(values)
    return False
