"""Probe runs in this process and in a limited child process."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from onnx_testkit import CONTRACT_8, export_zoo, tiny_model, to_bytes

from hdus_edge.errors import ProbeRunError
from hdus_edge.onnx.checks import ModelContract
from hdus_edge.onnx.probe import probe_in_subprocess, probe_inputs, probe_run
from hdus_edge.onnx.session import CPU, make_session, resolve_providers


def _nan_model() -> bytes:
    model = tiny_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[3, 2] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    return to_bytes(model)


def test_probe_passes_a_real_seed() -> None:
    probe_run(export_zoo("seed-mlp"), CONTRACT_8)


def test_probe_inputs_are_seeded_and_start_with_zeros() -> None:
    a, b = probe_inputs(CONTRACT_8, 4, seed=1), probe_inputs(CONTRACT_8, 4, seed=1)
    assert np.array_equal(a, b) and a.shape == (4, 1, 8, 8) and not a[0].any() and a[1].any()


def test_probe_rejects_non_finite_output() -> None:
    with pytest.raises(ProbeRunError, match="non-finite"):
        probe_run(_nan_model(), CONTRACT_8)


def test_probe_rejects_wrong_output_shape() -> None:
    with pytest.raises(ProbeRunError, match=r"expected float32 \[4, 12\]"):
        probe_run(to_bytes(tiny_model()), ModelContract(8, 8, 12))


def test_probe_rejects_bytes_onnxruntime_cannot_load() -> None:
    with pytest.raises(ProbeRunError, match="could not load"):
        probe_run(b"\x08\x08garbage", CONTRACT_8)


def test_subprocess_probe_passes_and_reports_failures() -> None:
    probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT_8, timeout_s=60)
    with pytest.raises(ProbeRunError, match="non-finite"):
        probe_in_subprocess(_nan_model(), CONTRACT_8, timeout_s=60)


def test_subprocess_probe_enforces_memory_limit() -> None:
    # 40 MiB of address space is too little to even start onnxruntime: the child dies, we don't.
    with pytest.raises(ProbeRunError, match="memory limit 40 MiB|crashed"):
        probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT_8, timeout_s=60, mem_mb=40)


def test_subprocess_probe_enforces_timeout() -> None:
    with pytest.raises(ProbeRunError, match="did not finish within 0.05 s"):
        probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT_8, timeout_s=0.05)


def test_providers_are_filtered_to_what_is_available() -> None:
    import onnxruntime as ort

    chosen = resolve_providers(["NoSuchExecutionProvider", "CUDAExecutionProvider", CPU])
    assert chosen[-1] == CPU and "NoSuchExecutionProvider" not in chosen
    assert set(chosen) <= set(ort.get_available_providers())
    assert resolve_providers(None) == [CPU]
    session = make_session(export_zoo("seed-mlp"), providers=["NoSuchExecutionProvider"], intra_op_threads=1)
    assert session.get_providers() == [CPU]
    with pytest.raises(ValueError):
        make_session(export_zoo("seed-mlp"), intra_op_threads=0)


def test_a_probe_run_over_its_time_budget_is_refused():
    """The probe's run budget (profile ``limits.probe_run_ms``): a heavy seed of allowed operators
    runs fine but slowly; over the budget it is refused (issue 14, attack 5)."""
    from hdus_edge.reliability.onnx_mutants import heavy_seed_model

    with pytest.raises(ProbeRunError, match="over the budget of 1 ms"):
        probe_in_subprocess(heavy_seed_model(), CONTRACT_8, timeout_s=60, run_budget_ms=1.0)
    probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT_8, timeout_s=60, run_budget_ms=60_000.0)
