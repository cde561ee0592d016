"""The fused graph built in a child process (what the agent does) is the in-process one, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_testkit import batch, export_zoo

from hdus_edge.ensemble.fuse import fuse_ensemble
from hdus_edge.ensemble.fuse_child import fuse_in_subprocess
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.errors import EnsembleError
from hdus_edge.onnx.checks import parse_onnx


def test_child_fuse_equals_in_process_fuse_and_serves_the_same_predictions():
    # Prepare
    main = export_zoo("mobilenet-s")
    seeds = {f"d{k}": export_zoo("seed-cnn", seed=k) for k in range(3)}
    # Execute
    in_child = fuse_in_subprocess(main, seeds, 0.5, "probs")
    in_process = fuse_ensemble(parse_onnx(main), {d: parse_onnx(b) for d, b in seeds.items()}, 0.5,
                               "probs").SerializeToString()
    # Assert
    assert in_child == in_process
    x = batch(8)
    lean = EnsembleRuntime(main, 0.5, "probs", "fused", background_fuse=True, fuse_in_subprocess=True, seeds=seeds)
    plain = EnsembleRuntime(main, 0.5, "probs", "sessions", seeds=seeds)
    try:
        assert lean.wait_fused(120) and lean.fused_model_bytes == in_child
        assert np.abs(lean.predict(x) - plain.predict(x)).max() <= 1e-6
    finally:
        lean.close()


def test_a_failing_child_is_an_ensemble_error():
    with pytest.raises(EnsembleError, match="fuse child exited"):
        fuse_in_subprocess(b"not onnx", {}, 0.5, "probs")
