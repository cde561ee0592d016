"""ONNX export: onnxruntime/torch parity for every zoo architecture, deterministic bytes, provenance."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx_testkit import CREATED, REF_SHA, as_if_trained, batch, export_zoo, provenance

from hdus_edge.errors import ModelError
from hdus_edge.models import build_model, list_architectures
from hdus_edge.onnx.checks import ZOO_OPS, ModelContract, check_onnx
from hdus_edge.onnx.export import export_onnx
from hdus_edge.onnx.metadata import Provenance, read_provenance
from hdus_edge.onnx.session import make_session

ARCHS = [spec.name for spec in list_architectures()]


@pytest.mark.parametrize("side", [28, 8])
@pytest.mark.parametrize("arch", ARCHS)
def test_parity_with_torch_on_256_inputs(arch: str, side: int) -> None:
    # Prepare
    shape = (1, side, side)
    model = as_if_trained(build_model(arch, shape, 10, seed=1), seed=1)
    x = batch(256, shape, seed=side)
    data = export_onnx(model, provenance(arch=arch, shape=shape))  # type: ignore[arg-type]
    # Execute
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()  # type: ignore[operator]
    got = make_session(data).run(None, {"input": x})[0]
    # Assert
    assert got.shape == (256, 10) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(expected).max() > 0.01  # logits that say something, so the bound means something
    proto = onnx.load_from_string(data)
    assert {n.op_type for n in proto.graph.node} <= ZOO_OPS  # the allowlist is derived from these
    assert check_onnx(data, ModelContract(side, side, 10)).opset == 17


def test_graph_contract_dynamic_batch_one_input_one_output() -> None:
    proto = onnx.load_from_string(export_zoo("seed-cnn"))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims_in = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    dims_out = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert isinstance(dims_in[0], str) and dims_in[1:] == [1, 8, 8]
    assert isinstance(dims_out[0], str) and dims_out[1:] == [10]
    assert proto.opset_import[0].version >= 17
    # batch sizes other than the export's 1 run
    session = make_session(export_zoo("seed-cnn"))
    assert session.run(None, {"input": batch(7)})[0].shape == (7, 10)


def test_same_weights_same_bytes_in_this_and_another_process() -> None:
    # Prepare
    first = export_zoo("seed-cnn", seed=3)
    # Execute
    second = export_zoo("seed-cnn", seed=3)
    code = (
        "import hashlib, sys; sys.path.insert(0, 'tests'); from onnx_testkit import export_zoo; "
        "print(hashlib.sha256(export_zoo('seed-cnn', seed=3)).hexdigest())"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    # Assert
    assert first == second
    assert child.stdout.strip() == hashlib.sha256(first).hexdigest()
    assert export_zoo("seed-cnn", seed=4) != first  # different weights, different bytes


def test_creation_time_lives_only_in_metadata() -> None:
    model = build_model("seed-mlp", (1, 8, 8), 10)
    a = onnx.load_from_string(export_onnx(model, provenance(arch="seed-mlp", created_at="2024-01-01T00:00:00Z")))
    b = onnx.load_from_string(export_onnx(model, provenance(arch="seed-mlp", created_at="2031-12-31T23:59:59Z")))
    assert a.graph.SerializeToString(deterministic=True) == b.graph.SerializeToString(deterministic=True)
    assert a.metadata_props != b.metadata_props
    assert all(not n.doc_string for n in a.graph.node)  # no source locations of whoever exported


def test_metadata_round_trip_and_visible_to_onnxruntime() -> None:
    # Prepare
    prov = Provenance(owner="pi-kitchen", role="seed", arch="seed-cnn", version=7, input_shape=(1, 8, 8),
                      num_classes=10, created_at=CREATED, reference_sha256=REF_SHA)
    # Execute
    data = export_onnx(build_model("seed-cnn", (1, 8, 8), 10), prov)
    # Assert
    assert read_provenance(onnx.load_from_string(data)) == prov
    meta = make_session(data).get_modelmeta().custom_metadata_map
    assert meta["hdus.owner"] == "pi-kitchen" and meta["hdus.role"] == "seed"
    assert meta["hdus.version"] == "7" and meta["hdus.input_shape"] == "1x8x8"
    assert meta["hdus.reference_sha256"] == REF_SHA and meta["hdus.created_at"] == CREATED
    assert meta["hdus.num_classes"] == "10" and meta["hdus.arch"] == "seed-cnn"
    assert meta["hdus.hdus_edge_version"] and meta["hdus.precision"] == "fp32"


def test_export_leaves_the_model_as_it_was() -> None:
    model = build_model("seed-cnn", (1, 8, 8), 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, provenance())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_refuses_a_class_count_the_model_does_not_have() -> None:
    with pytest.raises(ModelError, match=r"expected \[N, 12\]"):
        export_onnx(build_model("seed-mlp", (1, 8, 8), 10), provenance(arch="seed-mlp", classes=12))


@pytest.mark.parametrize(
    "change",
    [{"owner": ""}, {"role": "boss"}, {"version": -1}, {"input_shape": (1, 8)}, {"num_classes": 1},
     {"reference_sha256": "xyz"}, {"created_at": ""}],
)
def test_provenance_rejects_bad_fields(change: dict[str, object]) -> None:
    fields = dict(owner="a", role="seed", arch="seed-cnn", version=1, input_shape=(1, 8, 8), num_classes=10,
                  created_at=CREATED)
    with pytest.raises(ValueError):
        Provenance(**{**fields, **change})  # type: ignore[arg-type]
