"""train, distill and export on a state dir: checkpoints that rebuild their models, own data only."""

from __future__ import annotations

import json

import cli_lifecycle_kit as kit
import numpy as np
import onnxruntime as ort
import torch

from hdus_edge.learning.steps import load_checkpoint
from hdus_edge.onnx.checks import parse_onnx
from hdus_edge.onnx.metadata import read_provenance
from hdus_edge.protocol.messages import sha256_hex


def test_train_distill_export_on_a_state_dir(capsys, tmp_path):
    # Prepare
    _, states = kit.make_fleet(tmp_path, ids=("d1",))
    st = states["d1"]
    data = kit.digits_folder(tmp_path / "mine", n=96)
    # Execute
    code, out, _ = kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1", "--json")
    assert code == 0
    trained = json.loads(out)
    code, out, _ = kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1", "--json")
    assert code == 0
    distilled = json.loads(out)
    code, out, _ = kit.cli(capsys, "export", "--state-dir", st.root, "--json")
    assert code == 0
    exported = json.loads(out)
    # Assert: the profile's architectures; the checkpoints rebuild models equal to the exports.
    assert trained["arch"] == "mobilenet-s" and trained["samples"] == 96 and distilled["arch"] == "seed-cnn"
    assert distilled["reference_sha256"] == st.fleet().data.reference_sha256 == exported["reference_sha256"]
    main, seed = load_checkpoint(st.main_checkpoint, "main"), load_checkpoint(st.seed_checkpoint, "seed")
    assert (main.arch, main.input_shape, main.num_classes) == ("mobilenet-s", (1, 8, 8), 10)
    assert seed.meta["teacher_sha256"] == sha256_hex(st.main_checkpoint.read_bytes())
    assert main.meta["data_sha256"] == trained["data_sha256"] and main.meta["device_id"] == "d1"
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    # This profile quantizes its own main model to int8 (if it sets runtime.int8); seeds always stay fp32.
    int8 = st.profile().runtime.int8
    ops = {n: {node.op_type for node in parse_onnx((st.models / n).read_bytes()).graph.node} for n in ("main.onnx", "seed.onnx")}
    assert ("QuantizeLinear" in ops["main.onnx"]) == int8 and "QuantizeLinear" not in ops["seed.onnx"]
    for ckpt, name, tol in ((main, "main.onnx", 0.05 if int8 else 1e-4), (seed, "seed.onnx", 1e-4)):
        sess = ort.InferenceSession((st.models / name).read_bytes(), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = ckpt.model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=tol)
    prov = read_provenance(parse_onnx((st.models / "seed.onnx").read_bytes()))
    assert prov.owner == "d1" and prov.version == exported["seed_version"] == 1
    assert json.loads(st.seed_info_file.read_text())["sha256"] == exported["seed_sha256"]
    # A second export bumps the version.
    code, out, _ = kit.cli(capsys, "export", "--state-dir", st.root, "--json")
    assert code == 0 and json.loads(out)["seed_version"] == 2


def test_same_data_and_seed_give_the_same_weights(capsys, tmp_path):
    _, states = kit.make_fleet(tmp_path, ids=("d1",))
    st = states["d1"]
    data = kit.digits_folder(tmp_path / "mine", n=64)

    def train(*extra: str) -> dict:
        assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1", *extra)[0] == 0
        return load_checkpoint(st.main_checkpoint, "main").model.state_dict()

    a, b, c = train(), train(), train("--seed", "7")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_export_refuses_a_seed_distilled_from_an_older_main_model(capsys, tmp_path):
    _, states = kit.make_fleet(tmp_path, ids=("d1",))
    st = states["d1"]
    data = kit.digits_folder(tmp_path / "mine", n=64)
    assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1", "--seed", "1")[0] == 0
    code, _, err = kit.cli(capsys, "export", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "distilled from another main model", "hdus-edge distill")
    assert not (st.models / "seed.onnx").exists()
