"""A sharded main model as one ONNX graph: same outputs as the torch model, cached members reused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from hdus_edge.learning.steps import export_sharded
from hdus_edge.models import build_model
from hdus_edge.models.sharded import ShardedMain
from hdus_edge.onnx.checks import LoadPolicy, ModelContract, check_onnx
from hdus_edge.onnx.metadata import Provenance, read_provenance

PROV = Provenance("d1", "main", "resnet-8", 3, (1, 8, 8), 10, "2026-01-01T00:00:00Z", manifest_sha256="a" * 64, samples=9)


def test_composed_graph_matches_the_torch_model_and_reuses_unchanged_members(tmp_path):
    # Prepare
    main = ShardedMain([build_model("resnet-8", (1, 8, 8), 10, seed=k) for k in range(3)]).eval()
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    # Execute
    data = export_sharded(main, PROV, tmp_path / "shards")
    # Assert: one checked graph, the torch model's outputs, the provenance set.
    proto = check_onnx(data, ModelContract.from_shape((1, 8, 8), 10), LoadPolicy(max_bytes=64 << 20)).model
    assert read_provenance(proto) == PROV
    with torch.no_grad():
        want = main(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.onnx")}
    assert len(cached) == 3
    # A new member 1: only its graph is exported; the old one's file goes; same bytes for the same weights.
    main.members[1] = build_model("resnet-8", (1, 8, 8), 10, seed=99)
    again = export_sharded(main, PROV, tmp_path / "shards")
    now = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.onnx")}
    assert len(now) == 3 and len(set(now) & set(cached)) == 2
    assert all(now[n] == cached[n] for n in set(now) & set(cached))
    assert again != data
    fresh = export_sharded(main, PROV, tmp_path / "fresh")
    assert fresh == again
