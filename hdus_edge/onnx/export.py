"""Export a torch model to ONNX bytes with provenance metadata (the one torch module here).

Uses the legacy TorchScript exporter (``dynamo=False``): it needs no onnxscript at run time and
gives small, plain graphs (BatchNorm folded into Conv in eval mode). One float32 input
``input`` [N, C, H, W] with a dynamic batch, one output ``logits`` [N, classes]. The bytes are a
pure function of the weights, the provenance and the torch version: the graph holds no timestamps
or source locations, and the creation time travels only in the metadata the caller supplies.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from hdus_edge.errors import ModelError
from hdus_edge.onnx.metadata import Provenance, set_metadata

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, provenance: Provenance, *, opset: int = DEFAULT_OPSET) -> bytes:
    """Export ``model`` for the input shape in ``provenance`` and return the ONNX bytes.

    The model is exported in eval mode on CPU (a copy when it lives elsewhere); its own training
    mode and device are left as they were. Raises ``ModelError`` when the exported output does
    not have ``provenance.num_classes`` classes.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    target = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = target.training
    target.eval()
    example = torch.zeros((1, *provenance.input_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter warns that it is legacy; that is the point of using it here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                target,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                do_constant_folding=True,
                export_params=True,
            )
    finally:
        target.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    _strip_doc_strings(proto.graph)
    proto.doc_string = ""
    proto.model_version = int(provenance.version)
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[-1].dim_value if len(out_dims) == 2 else 0
    if classes != provenance.num_classes:
        raise ModelError(
            f"exported {provenance.arch} has output shape {[d.dim_value or d.dim_param for d in out_dims]}, "
            f"expected [N, {provenance.num_classes}]",
            hint="build the model with the fleet's number of classes",
        )
    set_metadata(proto, provenance.to_props())
    data = proto.SerializeToString(deterministic=True)
    logger.debug("exported %s (%s) for %s: %d bytes", provenance.arch, provenance.role, provenance.owner, len(data))
    return data


def _strip_doc_strings(graph: onnx.GraphProto) -> None:
    # doc strings may carry source locations of whoever exported; they say nothing about the model.
    graph.doc_string = ""
    for node in graph.node:
        node.doc_string = ""
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip_doc_strings(attr.g)
            for sub in attr.graphs:
                _strip_doc_strings(sub)
