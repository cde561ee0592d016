"""int8 quantization: static (calibrated on the reference set) and dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_testkit import CONTRACT_8, batch, export_zoo

from hdus_edge.onnx.checks import check_onnx
from hdus_edge.onnx.metadata import read_provenance
from hdus_edge.onnx.quantize import quantize_int8
from hdus_edge.onnx.session import make_session


@pytest.fixture(scope="module")
def fp32() -> bytes:
    return export_zoo("seed-cnn", seed=2)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantized_seed_is_smaller_close_and_loadable(fp32: bytes, mode: str) -> None:
    # Prepare
    calibration = batch(128, seed=5) if mode == "static" else None
    x = batch(64, seed=9)
    # Execute
    result = quantize_int8(fp32, calibration=calibration)
    # Assert
    report = result.report
    assert report.mode == mode and report.fp32_bytes == len(fp32) and report.int8_bytes == len(result.data)
    assert 0.3 < report.size_ratio < 0.9
    assert report.calibration_samples == (128 if mode == "static" else 0)
    ref = make_session(fp32).run(None, {"input": x})[0]
    got = make_session(result.data).run(None, {"input": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    # int8 error on an untrained seed's narrow logits: a few percent of the range, same decisions
    assert np.abs(got - ref).max() < 0.2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75
    assert not np.array_equal(got, ref)  # it really is another model
    checked = check_onnx(result.data, CONTRACT_8)  # standard operators only
    assert checked.provenance is not None and checked.provenance.precision == f"int8-{mode}"
    assert {o.domain for o in onnx.load_from_string(result.data).opset_import} <= {"", "ai.onnx"}


def test_quantization_is_deterministic(fp32: bytes) -> None:
    calibration = batch(64, seed=5)
    assert quantize_int8(fp32, calibration=calibration).data == quantize_int8(fp32, calibration=calibration).data
    assert quantize_int8(fp32).data == quantize_int8(fp32).data


def test_provenance_other_than_precision_is_kept(fp32: bytes) -> None:
    before = read_provenance(onnx.load_from_string(fp32))
    after = read_provenance(onnx.load_from_string(quantize_int8(fp32).data))
    assert before is not None and after is not None
    assert (after.owner, after.arch, after.version, after.reference_sha256) == (
        before.owner, before.arch, before.version, before.reference_sha256)


def test_bad_arguments(fp32: bytes) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(fp32, mode="static")
    with pytest.raises(ValueError, match="mode"):
        quantize_int8(fp32, mode="int4")  # type: ignore[arg-type]
