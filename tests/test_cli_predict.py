"""predict, status and members: the ensemble of the state dir, read without the store's lock, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import cli_lifecycle_kit as kit
import numpy as np
import pytest
from PIL import Image

from hdus_edge.device.inputs import read_input, read_pgm
from hdus_edge.device.store import SeedStore
from hdus_edge.ensemble.combine import DEFAULT_LAM
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.protocol.messages import sha256_hex

# --- input readers ---------------------------------------------------------------------------------


def test_pgm_p2_and_p5_8_and_16_bit(tmp_path):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4) * 20
    (tmp_path / "a.pgm").write_text("P2\n# a comment\n4 3\n255\n" + " ".join(map(str, img.ravel())) + "\n")
    (tmp_path / "b.pgm").write_bytes(b"P5\n4 3\n# late comment\n255\n" + img.astype(np.uint8).tobytes())
    (tmp_path / "c.pgm").write_bytes(b"P5 4 3 1000\n" + (img * 4).astype(">u2").tobytes())
    for name, scale in (("a.pgm", 255), ("b.pgm", 255), ("c.pgm", 250)):
        got = read_pgm(tmp_path / name)
        assert got.shape == (3, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, img / scale, rtol=1e-6)
    (tmp_path / "t.pgm").write_bytes(b"P5 4 3 255\n" + bytes(5))
    with pytest.raises(Exception, match="truncated"):
        read_pgm(tmp_path / "t.pgm")


def test_png_resize_and_npy_layouts(tmp_path):
    x = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    Image.fromarray(x).save(tmp_path / "d.png")
    got = read_input(tmp_path / "d.png", (1, 8, 8))
    assert got.shape == (1, 1, 8, 8) and np.allclose(got[0, 0], x / 255.0)
    Image.fromarray(np.kron(x, np.ones((2, 2), np.uint8))).save(tmp_path / "big.png")
    resized = read_input(tmp_path / "big.png", (1, 8, 8), resize=True)
    assert np.allclose(resized, got, atol=1e-6)  # 2x2 box average of a 2x upscale is the original
    batch = np.random.default_rng(0).random((5, 8, 8), dtype=np.float32)
    for arr in (batch, batch[:, None], batch[0]):
        np.save(tmp_path / "b.npy", arr)
        out = read_input(tmp_path / "b.npy", (1, 8, 8))
        assert out.shape == (len(arr) if arr.ndim > 2 else 1, 1, 8, 8)
    np.save(tmp_path / "u.npy", np.full((2, 8, 8), 255, np.uint8))
    assert read_input(tmp_path / "u.npy", (1, 8, 8)).max() == 1.0


# --- predict / status on a state dir ---------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path):
    return kit.installed_fleet(tmp_path)


def test_predict_is_the_ensemble_of_main_and_stored_seeds(capsys, fleet, tmp_path):
    # Prepare
    _, states, seeds = fleet
    st = states["d1"]
    x = np.random.default_rng(1).random((6, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    Image.fromarray((x[0, 0] * 255).round().astype(np.uint8)).save(tmp_path / "one.png")
    # Execute
    code, out, _ = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "x.npy", tmp_path / "one.png", "--json")
    # Assert: the same numbers as an EnsembleRuntime built by hand from the same files.
    assert code == 0
    report = json.loads(out)
    assert report["members"] == ["d2", "d3"] and report["lam"] == DEFAULT_LAM
    rt = EnsembleRuntime((st.models / "main.onnx").read_bytes(), DEFAULT_LAM, "probs", "sessions")
    rt.add_seed("d2", seeds["d2"])
    rt.add_seed("d3", seeds["d3"])
    want = rt.predict(x)
    got = np.array([p["probabilities"] for p in report["predictions"][:6]])
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert [p["class"] for p in report["predictions"][:6]] == want.argmax(1).tolist()
    assert report["predictions"][6]["source"].endswith("one.png") and len(report["predictions"]) == 7
    code, out, _ = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "x.npy")
    assert code == 0 and "main + 2 seeds (d2, d3)" in out


def test_predict_follows_device_toml_and_changes_when_a_seed_goes(capsys, fleet, tmp_path):
    _, states, _ = fleet
    st = states["d1"]
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((4, 1, 8, 8), dtype=np.float32))
    _, before, _ = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "x.npy", "--json")
    # Without an agent, a removed neighbour's seed leaves the store and the ensemble at once.
    assert kit.cli(capsys, "neighbors", "remove", "d2", "--state-dir", st.root)[0] == 0
    _, after, _ = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "x.npy", "--json")
    assert json.loads(before)["members"] == ["d2", "d3"] and json.loads(after)["members"] == ["d3"]
    assert json.loads(before)["predictions"] != json.loads(after)["predictions"]


def test_status_and_members_next_to_a_running_agent(capsys, fleet):
    # Prepare: the test holds the store open, as a running agent does (flock).
    _, states, seeds = fleet
    st = states["d2"]
    with SeedStore(st.store_dir) as store:
        store.apply_unlearn("d3", 0, "a" * 32, receipt=b"signed receipt bytes")
        # Execute
        code, out, _ = kit.cli(capsys, "status", "--state-dir", st.root, "--json")
        assert code == 0
        status = json.loads(out)
        # Assert
        assert status["agent"]["running"] is True and status["agent"]["connected"] is False
        assert status["members"] == ["d1"] and status["ensemble"]["members"] == ["main", "d1"]
        assert status["seeds"][0]["sha256"] == sha256_hex(seeds["d1"]) and status["seeds"][0]["version"] == 1
        assert status["unlearns"]["completed"][0]["target"] == "d3"
        assert status["unlearns"]["pending_receipts"] == ["a" * 32]
        assert status["own"]["seed_version"] == 1 and status["own"]["main.onnx"]["bytes"] > 0
        code, out, _ = kit.cli(capsys, "members", "--state-dir", st.root, "--json")
        assert code == 0 and json.loads(out)["members"] == ["d1"]
        code, out, _ = kit.cli(capsys, "status", "--state-dir", st.root)
        flat = " ".join(out.split())
        assert code == 0 and "agent running, not connected" in flat and "forgot d3 (epoch 0)" in flat
    code, out, _ = kit.cli(capsys, "status", "--state-dir", st.root, "--json")
    assert json.loads(out)["agent"]["running"] is False


CHILD = r"""
import sys
from hdus_edge.cli.app import run
codes = [run(["predict", "--state-dir", sys.argv[1], sys.argv[2], "--json"]),
         run(["status", "--state-dir", sys.argv[1], "--json"]),
         run(["members", "--state-dir", sys.argv[1]]),
         run(["neighbors", "list", "--state-dir", sys.argv[1]])]
assert codes == [0, 0, 0, 0], codes
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not bad, bad[:5]
print("torch-free")
"""


def test_predict_and_status_never_import_torch(fleet, tmp_path):
    _, states, _ = fleet
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    done = subprocess.run([sys.executable, "-c", CHILD, str(states["d1"].root), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("torch-free")
