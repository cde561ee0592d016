"""Every architecture exports with the legacy ONNX exporter into a small set of standard operators."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

from hdus_edge.models import build_model, list_architectures

NAMES = [spec.name for spec in list_architectures()]
STANDARD_OPS = {
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "GlobalAveragePool", "ReduceMean",
    "Flatten", "Reshape", "Gemm", "MatMul", "MaxPool", "AveragePool",
}  # fmt: skip


def _as_if_trained(model: nn.Module, seed: int) -> nn.Module:
    """Give BN layers distinct statistics, as training would.

    A fresh model's BN-folded conv biases are all zero; the exporter deduplicates equal initializers
    into ``Identity`` nodes, which no trained model shows.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def _export(model: nn.Module, shape: tuple[int, int, int]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated, by choice
        torch.onnx.export(
            model,
            (torch.zeros(2, *shape),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
@pytest.mark.parametrize("name", NAMES)
def test_legacy_export_uses_only_standard_ops(name: str, shape: tuple[int, int, int]) -> None:
    # Prepare
    model = _as_if_trained(build_model(name, shape, num_classes=10, seed=0), seed=1)
    # Execute
    proto = _export(model, shape)
    # Assert
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    assert {"Gemm", "Flatten"} <= ops
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    assert [i.name for i in proto.graph.input] == ["input"]  # weights are initializers, not inputs
    assert _dims(proto.graph.input[0]) == ["n", *shape]
    assert _dims(proto.graph.output[0]) == ["n", 10]
    assert not model.training
