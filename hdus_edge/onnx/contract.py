"""The fleet's model contract and the safe-loading policy: plain values, no onnx import.

Also the plain values of the seed compute budget (``GraphCost``, ``ComputeBudget``; ``cost`` counts).
Split from ``checks`` so that code that only needs to name a contract or a policy (the agent, the
probe's parent side, the runtime) does not load onnx (~11 MiB resident, and its checker's schema
registry another ~7 MiB once used). ``checks`` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module loads neither library
    import onnx
    import onnxruntime as ort

    from hdus_edge.onnx.metadata import Provenance

# A seed is ~20 KiB and the largest zoo main model ~1.3 MB; 8 MiB leaves room without letting a
# peer make us parse hundreds of megabytes.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})

# What the zoo exports (tests/test_onnx_checks.py exports every architecture and asserts its
# operators are in here), what int8 quantization adds, and a few plain equivalents other exporters
# emit for the same layers. No control flow (If/Loop/Scan carry subgraphs), no I/O-ish operators.
ZOO_OPS = frozenset(
    {"Add", "AveragePool", "Clip", "Constant", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "Relu"}
)
INT8_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "Cast", "Mul"}
)
EQUIVALENT_OPS = frozenset({"BatchNormalization", "MatMul", "MaxPool", "ReduceMean", "Reshape"})
ALLOWED_OPS = ZOO_OPS | INT8_OPS | EQUIVALENT_OPS


@dataclass(frozen=True)
class ModelContract:
    """The fleet's input/output contract: float32 [N, channels, height, width] -> float32 [N, num_classes]."""

    height: int
    width: int
    num_classes: int
    channels: int = 1

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.channels) <= 0 or self.num_classes < 2:
            raise ValueError(f"invalid contract {self}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample."""
        return (self.channels, self.height, self.width)

    @classmethod
    def from_provenance(cls, provenance: Provenance) -> ModelContract:
        """The contract a model with ``provenance`` claims to meet."""
        c, h, w = provenance.input_shape
        return cls(height=h, width=w, num_classes=provenance.num_classes, channels=c)

    @classmethod
    def from_shape(cls, input_shape: tuple[int, int, int], num_classes: int) -> ModelContract:
        """The contract of a fleet whose samples are ``input_shape`` (C, H, W) with ``num_classes`` classes."""
        c, h, w = input_shape
        return cls(height=h, width=w, num_classes=num_classes, channels=c)

    @classmethod
    def from_dims(cls, dims_in: Sequence[object], dims_out: Sequence[object]) -> ModelContract:
        """The contract of a model whose one input has ``dims_in`` and one output ``dims_out`` (a symbolic
        or unknown dimension is anything but a positive int); ``ValueError`` unless [N, C, H, W] -> [N, K]."""
        ins = [d if isinstance(d, int) and d > 0 else 0 for d in dims_in]
        outs = [d if isinstance(d, int) and d > 0 else 0 for d in dims_out]
        if len(ins) != 4 or min(ins[1:]) <= 0 or len(outs) != 2 or outs[1] < 2:
            raise ValueError(f"the model maps {list(dims_in)} -> {list(dims_out)}; expected [N, C, H, W] -> [N, classes]")
        return cls(height=ins[2], width=ins[3], num_classes=outs[1], channels=ins[1])

    @classmethod
    def from_graph(cls, model: onnx.ModelProto) -> ModelContract:
        """The contract a graph's declared I/O defines; ``ValueError`` unless it maps [N, C, H, W] -> [N, K]."""
        if len(model.graph.input) != 1 or len(model.graph.output) != 1:
            raise ValueError("the model must have exactly one input and one output")
        return cls.from_dims([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],
                             [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim])

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> ModelContract:
        """The same contract read from an onnxruntime session (no onnx import needed)."""
        if len(session.get_inputs()) != 1 or len(session.get_outputs()) != 1:
            raise ValueError("the model must have exactly one input and one output")
        return cls.from_dims(list(session.get_inputs()[0].shape), list(session.get_outputs()[0].shape))


@dataclass(frozen=True)
class GraphCost:
    """Per sample: multiply-accumulates of convs and linear layers, every other operation, parameters."""

    macs: int
    params: int
    ops: int = 0

    @property
    def work(self) -> int:
        """MACs plus other operations: what the compute budget bounds."""
        return self.macs + self.ops


@dataclass(frozen=True)
class ComputeBudget:
    """The most a seed may cost: ``multiple`` x the fleet's own seed (``reference``)."""

    reference: GraphCost
    multiple: float

    @property
    def max_work(self) -> int:
        return int(self.reference.work * self.multiple)

    @property
    def max_params(self) -> int:
        return int(self.reference.params * self.multiple)


@dataclass(frozen=True)
class LoadPolicy:
    """Limits for safe loading; the defaults fit every model the zoo exports."""

    max_bytes: int = DEFAULT_MAX_BYTES
    min_ir_version: int = 8  # IR 8 pairs with opset 17, the lowest we export
    max_ir_version: int = 11  # IR 11 pairs with opset 23
    min_opset: int = 17
    max_opset: int = 23  # onnxruntime 1.18 (our floor) runs opset 21; newer ones more
    allowed_ops: frozenset[str] = ALLOWED_OPS
    # Every node runs at every prediction: a tiny payload of thousands of cheap nodes would slow the
    # device by orders of magnitude. The largest zoo model has 180 nodes.
    max_nodes: int = 1024
    # MACs and parameters at most a multiple of the fleet's own seed (None: not checked, e.g. for
    # the device's own trusted models). Checked statically, before any probe runs the model.
    compute_budget: ComputeBudget | None = None


DEFAULT_POLICY = LoadPolicy()
