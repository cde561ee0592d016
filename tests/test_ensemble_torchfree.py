"""The inference path never imports torch: checked in a fresh interpreter, running real models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from onnx_testkit import export_zoo

CHILD = r"""
import sys
from pathlib import Path
import numpy as np
import hdus_edge.ensemble
import hdus_edge.ensemble.runtime
import hdus_edge.onnx
import hdus_edge.onnx.checks
import hdus_edge.ensemble.fuse
import hdus_edge.onnx.inspection
import hdus_edge.onnx.metadata
import hdus_edge.onnx.probe
import hdus_edge.onnx.quantize
import hdus_edge.onnx.session
import hdus_edge.cli.inspect_cmd
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.onnx.checks import ModelContract, check_onnx
from hdus_edge.onnx.inspection import inspect_onnx
from hdus_edge.onnx.quantize import quantize_int8

folder = Path(sys.argv[1])
main, seed = (folder / "main.onnx").read_bytes(), (folder / "seed.onnx").read_bytes()
check_onnx(seed, ModelContract(8, 8, 10))
assert inspect_onnx(seed).safe
quantize_int8(seed)
for strategy in ("fused", "sessions"):
    rt = EnsembleRuntime(main, 0.5, "probs", strategy=strategy)
    rt.add_seed("pi-a", seed)
    y = rt.predict(np.zeros((3, 1, 8, 8), np.float32))
    assert y.shape == (3, 10)
    rt.remove("pi-a")
bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
assert not bad, bad
print("torch-free")
"""


def test_inference_path_never_imports_torch(tmp_path: Path) -> None:
    (tmp_path / "main.onnx").write_bytes(export_zoo("mobilenet-s", owner="me"))
    (tmp_path / "seed.onnx").write_bytes(export_zoo("seed-cnn", owner="pi-a"))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "torch-free"
