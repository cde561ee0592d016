"""Helpers shared by the tests/test_onnx_* and tests/test_ensemble_* files (not a test module).

Zoo exports (torch) and hand-crafted ONNX models (onnx.helper) with one thing wrong each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hdus_edge.onnx.checks import ModelContract
from hdus_edge.onnx.metadata import Provenance

CREATED = "2024-05-01T12:00:00Z"
REF_SHA = "ab" * 32
CONTRACT_8 = ModelContract(height=8, width=8, num_classes=10)


def provenance(
    arch: str = "seed-cnn",
    role: str = "seed",
    owner: str = "dev-a",
    shape: tuple[int, int, int] = (1, 8, 8),
    classes: int = 10,
    version: int = 1,
    created_at: str = CREATED,
) -> Provenance:
    """A provenance with sane defaults for tests."""
    return Provenance(
        owner=owner, role=role, arch=arch, version=version, input_shape=shape, num_classes=classes,  # type: ignore[arg-type]
        created_at=created_at, reference_sha256=REF_SHA if role == "seed" else None,
    )


def as_if_trained(model: object, seed: int) -> object:
    """Give BatchNorm layers distinct statistics, as training would, so BN folding is exercised
    (a fresh model's folded biases are all zero) while logits stay O(1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():  # type: ignore[attr-defined]
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def export_zoo(
    arch: str,
    *,
    owner: str = "dev-a",
    shape: tuple[int, int, int] = (1, 8, 8),
    classes: int = 10,
    seed: int = 0,
    opset: int = 17,
) -> bytes:
    """Build ``arch`` from the zoo (BN statistics randomised by ``seed``) and export it."""
    from hdus_edge.models import build_model, get_spec
    from hdus_edge.onnx.export import export_onnx

    model = as_if_trained(build_model(arch, shape, classes, seed=seed), seed)
    prov = provenance(arch=arch, role=get_spec(arch).role, owner=owner, shape=shape, classes=classes)
    return export_onnx(model, prov, opset=opset)  # type: ignore[arg-type]


def tiny_model(
    *,
    in_shape: Sequence[int | str] = ("N", 1, 8, 8),
    in_dtype: int = TensorProto.FLOAT,
    classes: int = 10,
    out_shape: Sequence[int | str] | None = None,
    opset: int = 17,
    ir_version: int = 8,
    extra_nodes: Sequence[onnx.NodeProto] = (),
    output_name: str = "y",
    seed: int = 0,
) -> onnx.ModelProto:
    """x [N, 1, 8, 8] -> Flatten -> Gemm -> y [N, classes], optionally followed by ``extra_nodes``
    (which read ``y`` and must end in ``output_name``)."""
    features = int(np.prod([d for d in in_shape[1:] if isinstance(d, int)]))
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32) * 0.1, "W")
    b = numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "B")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["y"]),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", in_dtype, list(in_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(out_shape or ["N", classes]))],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def to_bytes(model: onnx.ModelProto) -> bytes:
    """Serialize without any check (the tests craft invalid models on purpose)."""
    return model.SerializeToString()


def batch(n: int = 16, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0) -> np.ndarray:
    """A float32 [n, *shape] batch of standard normal inputs."""
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
