"""Safe loading: every rejection with a crafted file raises its own error; good models pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_testkit import CONTRACT_8, export_zoo, tiny_model, to_bytes

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
from hdus_edge.onnx.checks import (
    ALLOWED_OPS,
    DEFAULT_MAX_BYTES,
    LoadPolicy,
    ModelContract,
    check_onnx,
    find_problems,
)
from hdus_edge.onnx.metadata import set_metadata


@pytest.fixture(scope="module")
def seed_bytes() -> bytes:
    return export_zoo("seed-cnn")


def _external(tensor: onnx.TensorProto, location: str = "../../etc/passwd") -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def test_a_real_seed_passes_and_comes_back_parsed(seed_bytes: bytes) -> None:
    checked = check_onnx(seed_bytes, CONTRACT_8)
    assert checked.data == seed_bytes and len(checked.sha256) == 64
    assert checked.opset == 17 and checked.provenance is not None
    assert checked.provenance.arch == "seed-cnn" and checked.metadata["hdus.owner"] == "dev-a"
    assert find_problems(checked.model, CONTRACT_8) == []


def test_a_crafted_model_without_metadata_passes() -> None:
    checked = check_onnx(to_bytes(tiny_model()), CONTRACT_8)
    assert checked.provenance is None


# --- not ONNX at all ---------------------------------------------------------------------


def test_truncated_file(seed_bytes: bytes) -> None:
    with pytest.raises(NotOnnxError, match="do not parse|not as an ONNX model"):
        check_onnx(seed_bytes[: len(seed_bytes) // 2], CONTRACT_8)


def test_random_bytes() -> None:
    data = np.random.default_rng(0).bytes(4096)
    with pytest.raises(NotOnnxError):
        check_onnx(data, CONTRACT_8)


@pytest.mark.parametrize("data", [
    numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString(),  # a TensorProto
    helper.make_graph([], "g", [], []).SerializeToString(),  # a GraphProto
    b"",
], ids=["tensor", "graph", "empty"])
def test_valid_protobuf_that_is_not_a_model(data: bytes) -> None:
    with pytest.raises(NotOnnxError):
        check_onnx(data, CONTRACT_8)


def test_oversized_payload_is_refused_before_parsing() -> None:
    junk = b"\xff" * (DEFAULT_MAX_BYTES + 1)  # would be NotOnnxError if it were parsed
    with pytest.raises(PayloadTooLargeError, match=str(DEFAULT_MAX_BYTES)):
        check_onnx(junk, CONTRACT_8)


def test_size_cap_is_configurable(seed_bytes: bytes) -> None:
    with pytest.raises(PayloadTooLargeError, match="over the cap of 1000 bytes"):
        check_onnx(seed_bytes, CONTRACT_8, LoadPolicy(max_bytes=1000))


# --- external data, anywhere --------------------------------------------------------------


def _in_initializer() -> onnx.ModelProto:
    model = tiny_model()
    _external(model.graph.initializer[0])
    return model


def _in_constant_node() -> onnx.ModelProto:
    tensor = _external(numpy_helper.from_array(np.zeros(10, np.float32), "c"))
    const = helper.make_node("Constant", [], ["c"], value=tensor)
    return tiny_model(extra_nodes=[const, helper.make_node("Add", ["y", "c"], ["z"])], output_name="z")


def _in_sparse_initializer() -> onnx.ModelProto:
    model = tiny_model()
    values = _external(numpy_helper.from_array(np.ones(2, np.float32), "s"))
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10]))
    return model


def _in_subgraph() -> onnx.ModelProto:
    tensor = _external(numpy_helper.from_array(np.zeros(10, np.float32), "k"))
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=tensor)], "branch", [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [10])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = tiny_model(extra_nodes=[helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)],
                       output_name="z")
    model.graph.initializer.append(cond)
    return model


def _in_function() -> onnx.ModelProto:
    tensor = _external(numpy_helper.from_array(np.zeros(10, np.float32), "k"))
    function = helper.make_function(
        "local", "AddK", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value=tensor), helper.make_node("Add", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    model = tiny_model(extra_nodes=[helper.make_node("AddK", ["y"], ["z"], domain="local")], output_name="z")
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model


@pytest.mark.parametrize(
    "make", [_in_initializer, _in_constant_node, _in_sparse_initializer, _in_subgraph, _in_function],
    ids=["initializer", "constant-node", "sparse-initializer", "subgraph", "function"],
)
def test_external_data_reference_with_parent_dir_location(make) -> None:  # noqa: ANN001
    with pytest.raises(ExternalDataError, match=r"\.\./\.\./etc/passwd"):
        check_onnx(to_bytes(make()), CONTRACT_8)


# --- domains, operators, versions ---------------------------------------------------------


def test_custom_domain_operator() -> None:
    node = helper.make_node("FusedGemm", ["y"], ["z"], domain="com.microsoft")
    model = tiny_model(extra_nodes=[node], output_name="z")
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(CustomDomainError, match="com.microsoft"):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_model_local_function_in_a_custom_domain() -> None:
    function = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    model = tiny_model(extra_nodes=[helper.make_node("Twice", ["y"], ["z"], domain="local")], output_name="z")
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    with pytest.raises(CustomDomainError, match="local"):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_disallowed_operator() -> None:
    model = tiny_model(extra_nodes=[helper.make_node("Sin", ["y"], ["z"])], output_name="z")
    with pytest.raises(DisallowedOperatorError, match="Sin"):
        check_onnx(to_bytes(model), CONTRACT_8)
    assert "Sin" not in ALLOWED_OPS and "Loop" not in ALLOWED_OPS and "If" not in ALLOWED_OPS


@pytest.mark.parametrize("opset,ir", [(11, 8), (16, 8), (99, 8), (17, 3), (17, 99)])
def test_bad_opset_or_ir_version(opset: int, ir: int) -> None:
    with pytest.raises(OpsetError, match="outside the supported range"):
        check_onnx(to_bytes(tiny_model(opset=opset, ir_version=ir)), CONTRACT_8)


def test_checker_failure_is_reported() -> None:
    model = tiny_model(extra_nodes=[helper.make_node("Add", ["y", "nowhere"], ["z"])], output_name="z")
    with pytest.raises(OnnxCheckError, match="checker"):
        check_onnx(to_bytes(model), CONTRACT_8)


# --- the contract, independent of names -----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"in_shape": ("N", 1, 9, 8)}, r"expected \['N', 1, 8, 8\]"),
        ({"in_shape": ("N", 3, 8, 8)}, "shape"),
        ({"in_shape": (1, 1, 8, 8)}, "dynamic batch"),
        ({"in_dtype": TensorProto.DOUBLE}, "dtype DOUBLE"),
        ({"classes": 11}, r"expected \['N', 10\]"),
        ({"classes": 3}, "fleet's 10 classes"),
    ],
    ids=["height", "channels", "fixed-batch", "dtype", "too-many-classes", "too-few-classes"],
)
def test_contract_mismatch(kwargs: dict[str, object], match: str) -> None:
    model = tiny_model(**kwargs)  # type: ignore[arg-type]
    if kwargs.get("in_dtype") == TensorProto.DOUBLE:  # keep the graph itself valid for the checker
        model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT))
        model.graph.node[1].input[0] = "x32"
    with pytest.raises(ContractMismatchError, match=match):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_two_inputs() -> None:
    model = tiny_model(extra_nodes=[helper.make_node("Add", ["y", "bias"], ["z"])], output_name="z")
    model.graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 10]))
    with pytest.raises(ContractMismatchError, match="2 inputs"):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_two_outputs() -> None:
    model = tiny_model()
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 64]))
    with pytest.raises(ContractMismatchError, match="2 outputs"):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_names_do_not_matter() -> None:
    model = tiny_model(output_name="class_scores")
    model.graph.node[-1].output[0] = "class_scores"
    assert check_onnx(to_bytes(model), CONTRACT_8).provenance is None


def test_metadata_must_agree_with_the_contract(seed_bytes: bytes) -> None:
    with pytest.raises(ContractMismatchError):  # graph says 8x8, fleet says 28x28
        check_onnx(seed_bytes, ModelContract(28, 28, 10))
    model = tiny_model()
    set_metadata(model, {"hdus.owner": "x", "hdus.input_shape": "1x8x8"})  # incomplete
    with pytest.raises(OnnxCheckError, match="metadata"):
        check_onnx(to_bytes(model), CONTRACT_8)
    model = onnx.load_from_string(seed_bytes)
    set_metadata(model, {**{p.key: p.value for p in model.metadata_props}, "hdus.input_shape": "1x28x28"})
    with pytest.raises(ContractMismatchError, match="metadata claims"):
        check_onnx(to_bytes(model), CONTRACT_8)


def test_every_rejection_is_an_onnx_rejected_error_with_exit_code_2() -> None:
    with pytest.raises(OnnxRejectedError) as info:
        check_onnx(b"not onnx", CONTRACT_8)
    assert info.value.exit_code == 2 and "not" in info.value.message


def test_find_problems_collects_independent_failures() -> None:
    model = tiny_model(classes=11, opset=16, extra_nodes=[helper.make_node("Sin", ["y"], ["z"])], output_name="z")
    kinds = {type(p) for p in find_problems(model, CONTRACT_8)}
    assert {OpsetError, DisallowedOperatorError, ContractMismatchError} <= kinds


def test_zoo_exports_and_int8_versions_are_inside_the_allowlist() -> None:
    from hdus_edge.models import list_architectures
    from hdus_edge.onnx.quantize import quantize_int8

    seed = export_zoo("seed-cnn")
    calib = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    for data in (quantize_int8(seed, calibration=calib).data, quantize_int8(seed).data):
        check_onnx(data, CONTRACT_8)
    ops = {n.op_type for s in list_architectures(role="seed")
           for n in onnx.load_from_string(export_zoo(s.name)).graph.node}
    assert ops <= ALLOWED_OPS
