"""Every user error of the lifecycle commands: one 'error: ...' line, exit 2 (usage/config) or 1 (runtime)."""

from __future__ import annotations

import subprocess
import sys

import cli_lifecycle_kit as kit
import numpy as np
import pytest

from hdus_edge.data import Dataset, save_npz
from hdus_edge.transport.ports import free_port


@pytest.fixture
def fleet(tmp_path):
    return kit.make_fleet(tmp_path)


def test_unknown_profile(capsys, fleet, tmp_path):
    admin, _ = fleet
    code, _, err = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-9",
                           "--device-id", "x1", "--state-dir", tmp_path / "x1")
    assert code == 2
    kit.assert_one_error(err, "unknown profile 'raspberry-pi-9'", "raspberry-pi-4", "jetson-orin-nano")
    assert not (tmp_path / "x1").exists()  # nothing was created
    code, _, err = kit.cli(capsys, "profiles", "show", "raspberry-pi-9")
    assert code == 2
    kit.assert_one_error(err, "unknown profile")


@pytest.mark.parametrize("url, fragment", [
    ("http://127.0.0.1:1883", "scheme 'http'"),
    ("mqtt://127.0.0.1:99999", "invalid port"),
    ("127.0.0.1:1883", "no scheme"),
])
def test_bad_broker_url(capsys, tmp_path, url, fragment):
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "a", "--fleet", "f", "--broker", url,
                           "--reference", "noise", "--reference-size", "8")
    assert code == 2
    kit.assert_one_error(err, fragment)
    assert not (tmp_path / "a").exists()


def test_bad_broker_url_on_provision_and_publish(capsys, fleet, tmp_path):
    admin, states = fleet
    code, _, err = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-4",
                           "--device-id", "x2", "--state-dir", tmp_path / "x2", "--broker", "tcp://host")
    assert code == 2
    kit.assert_one_error(err, "scheme 'tcp'")
    code, _, err = kit.cli(capsys, "publish", "--state-dir", states["d1"].root, "--broker", "mqtt://host:0")
    assert code == 2
    kit.assert_one_error(err, "port 0")


def test_broker_unreachable_after_bounded_retries(capsys, fleet):
    _, states = fleet
    kit.install_models(states["d1"])
    dead = f"mqtt://127.0.0.1:{free_port()}"
    code, _, err = kit.cli(capsys, "publish", "--state-dir", states["d1"].root, "--broker", dead, "--connect-timeout", "2")
    assert code == 1
    kit.assert_one_error(err, "no connection to broker", "attempt", "hdus-edge broker")
    code, _, err = kit.cli(capsys, "leave", "--state-dir", states["d2"].root, "--broker", dead, "--wait", "1.5")
    assert code == 1
    kit.assert_one_error(err, "no connection to broker")
    assert not states["d2"].evidence_dir.exists()  # nothing was claimed


def test_missing_state_dir(capsys, tmp_path):
    for argv in (["status"], ["predict", tmp_path / "x.npy"], ["distill"], ["neighbors", "list"], ["members"]):
        code, _, err = kit.cli(capsys, *argv, "--state-dir", tmp_path / "nowhere")
        assert code == 2, argv
        kit.assert_one_error(err, "nowhere", "does not exist", "hdus-edge provision")


def test_state_dir_from_the_environment(capsys, fleet, monkeypatch, tmp_path):
    _, states = fleet
    monkeypatch.setenv("HDUS_STATE_DIR", str(tmp_path / "env-missing"))
    code, _, err = kit.cli(capsys, "status")
    assert code == 2
    kit.assert_one_error(err, "env-missing")
    monkeypatch.setenv("HDUS_STATE_DIR", str(states["d1"].root))
    code, out, _ = kit.cli(capsys, "status", "--json")
    assert code == 0 and '"device_id": "d1"' in out


def test_incomplete_or_corrupt_state_dir(capsys, fleet):
    _, states = fleet
    st = states["d1"]
    (st.root / "keys" / "device.key").unlink()
    code, _, err = kit.cli(capsys, "status", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "not a provisioned device", "keys/device.key is missing")
    st2 = states["d2"]
    st2.device_file.write_text("[device\nid = ")
    code, _, err = kit.cli(capsys, "status", "--state-dir", st2.root)
    assert code == 2
    kit.assert_one_error(err, "device.toml is not valid TOML")
    st3 = states["d3"]
    st3.device_file.write_text('[device]\nid = "d3"\nprofile = "generic-x86_64"\ncolour = "red"\n')
    code, _, err = kit.cli(capsys, "status", "--state-dir", st3.root)
    assert code == 2
    kit.assert_one_error(err, "unknown key 'colour'")


def test_corrupt_store_index_and_status(capsys, tmp_path):
    _, states = kit.make_fleet(tmp_path)
    st = states["d1"]
    (st.store_dir / "index.json").write_bytes(b"{not json")
    code, _, err = kit.cli(capsys, "status", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "index.json is corrupt")
    st2 = states["d2"]
    st2.status_file.write_text("[1, 2")
    code, _, err = kit.cli(capsys, "status", "--state-dir", st2.root)
    assert code == 2
    kit.assert_one_error(err, "status.json is corrupt")


def test_corrupt_reference_set(capsys, fleet, tmp_path):
    _, states = fleet
    st = states["d1"]
    good = st.reference_file.read_bytes()
    st.reference_file.write_bytes(good[:100])
    code, _, err = kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")
    assert code == 2
    kit.assert_one_error(err, "reference set is unreadable", "reference.npz: not a readable .npz", "copy reference.npz from the fleet admin dir")
    other = kit.resolve_reference_bytes(tmp_path)
    st.reference_file.write_bytes(other)
    code, _, err = kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")
    assert code == 2
    kit.assert_one_error(err, "reference.npz has sha256", "but the fleet's is")
    st.reference_file.unlink()
    code, _, err = kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")
    assert code == 2
    kit.assert_one_error(err, "reference.npz is missing")


def test_data_folder_missing(capsys, fleet, tmp_path):
    _, states = fleet
    code, _, err = kit.cli(capsys, "train", "--state-dir", states["d1"].root, "--data", tmp_path / "no-data")
    assert code == 2
    kit.assert_one_error(err, "no-data", "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = kit.cli(capsys, "train", "--state-dir", states["d1"].root, "--data", tmp_path / "empty")
    assert code == 2
    kit.assert_one_error(err, "no data found")


def test_data_of_the_wrong_shape(capsys, fleet, tmp_path):
    _, states = fleet
    folder = kit.digits_folder(tmp_path / "big", n=20, hw=28)
    code, _, err = kit.cli(capsys, "train", "--state-dir", states["d2"].root, "--data", folder)
    assert code == 2
    kit.assert_one_error(err, "shape [1, 28, 28]", "takes [1, 8, 8]", "raspberry-pi-4")
    assert not states["d2"].main_checkpoint.exists()


def test_data_with_more_classes_than_the_fleet(capsys, tmp_path):
    code, _, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "a", "--fleet", "f", "--reference", "noise",
                         "--reference-size", "16", "--input-shape", "8x8", "--classes", "5")
    assert code == 0
    code, _, _ = kit.cli(capsys, "provision", "--admin-dir", tmp_path / "a", "--profile", "raspberry-pi-4",
                         "--device-id", "p", "--state-dir", tmp_path / "p")
    assert code == 0
    code, _, err = kit.cli(capsys, "train", "--state-dir", tmp_path / "p", "--data", kit.digits_folder(tmp_path / "d", n=30))
    assert code == 2
    kit.assert_one_error(err, "label 9", "5 classes")


def test_training_data_inside_the_reference_set_is_refused(capsys, tmp_path):
    # The reference is public and reaches every neighbour through the seeds: own data must not be in it.
    ref = kit.digits_folder(tmp_path / "ref", n=100)
    code, _, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "a", "--fleet", "f", "--reference", ref)
    assert code == 0
    code, _, _ = kit.cli(capsys, "provision", "--admin-dir", tmp_path / "a", "--profile", "raspberry-pi-4",
                         "--device-id", "p", "--state-dir", tmp_path / "p")
    assert code == 0
    code, _, err = kit.cli(capsys, "train", "--state-dir", tmp_path / "p", "--data",
                           kit.digits_folder(tmp_path / "mine", n=30, offset=90))
    assert code == 2
    kit.assert_one_error(err, "shares samples with client data", "10 with client")


def test_steps_out_of_order(capsys, fleet):
    _, states = fleet
    st = states["d1"]
    code, _, err = kit.cli(capsys, "distill", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "main.pt is missing", "hdus-edge train")
    code, _, err = kit.cli(capsys, "export", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "main.pt is missing")
    code, _, err = kit.cli(capsys, "publish", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "seed.onnx is missing", "hdus-edge export")
    code, _, err = kit.cli(capsys, "predict", "--state-dir", st.root, _npy(st.root / "x.npy", (2, 1, 8, 8)))
    assert code == 2
    kit.assert_one_error(err, "main.onnx is missing", "hdus-edge export")


def test_corrupt_checkpoint(capsys, fleet):
    _, states = fleet
    st = states["d1"]
    st.main_checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint")
    code, _, err = kit.cli(capsys, "distill", "--state-dir", st.root)
    assert code == 2
    kit.assert_one_error(err, "not a usable main checkpoint", "hdus-edge train")


def test_unknown_device_in_unlearn(capsys, fleet):
    admin, _ = fleet
    # The broker is dead: the id check must come first, before any connection attempt.
    code, _, err = kit.cli(capsys, "unlearn", "ghost", "--admin-dir", admin.root)
    assert code == 2
    kit.assert_one_error(err, "device 'ghost' is not provisioned", "d1, d2, d3")
    code, _, err = kit.cli(capsys, "unlearn", "bad/id", "--admin-dir", admin.root)
    assert code == 2
    kit.assert_one_error(err, "invalid target device id")


def test_unlearn_without_an_admin_dir(capsys, tmp_path):
    code, _, err = kit.cli(capsys, "unlearn", "d1", "--admin-dir", tmp_path)
    assert code == 2
    kit.assert_one_error(err, "not a fleet admin directory", "fleet init")


def _npy(path, shape, dtype=np.float32):
    np.save(path, np.zeros(shape, dtype=dtype))
    return path


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 2, 8, 8), (5, 8), (8,)])
def test_predict_input_of_the_wrong_shape(capsys, fleet, tmp_path, shape):
    _, states = fleet
    kit.install_models(states["d1"])
    code, _, err = kit.cli(capsys, "predict", "--state-dir", states["d1"].root, _npy(tmp_path / "x.npy", shape))
    assert code == 2
    kit.assert_one_error(err, f"shape {list(shape)}", "[N, 1, 8, 8]")


def test_predict_image_of_the_wrong_size_and_bad_inputs(capsys, fleet, tmp_path):
    _, states = fleet
    st = states["d1"]
    kit.install_models(st)
    (tmp_path / "big.pgm").write_bytes(b"P5 28 28 255\n" + bytes(28 * 28))
    code, _, err = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "big.pgm")
    assert code == 2
    kit.assert_one_error(err, "28x28", "take 8x8", "--resize")
    np.save(tmp_path / "loud.npy", np.full((1, 1, 8, 8), 16.0, np.float32))
    code, _, err = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "loud.npy")
    assert code == 2
    kit.assert_one_error(err, "must lie in [0, 1]")
    (tmp_path / "x.txt").write_text("1 2 3")
    code, _, err = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "x.txt")
    assert code == 2
    kit.assert_one_error(err, "unknown input format '.txt'")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    code, _, err = kit.cli(capsys, "predict", "--state-dir", st.root, tmp_path / "bad.png")
    assert code == 2
    kit.assert_one_error(err, "not a readable image")


def test_leave_by_a_device_that_is_not_provisioned(capsys, tmp_path):
    (tmp_path / "stranger").mkdir()
    code, _, err = kit.cli(capsys, "leave", "--state-dir", tmp_path / "stranger")
    assert code == 2
    kit.assert_one_error(err, "is not a provisioned device", "device.toml is missing", "hdus-edge provision")
    code, _, err = kit.cli(capsys, "leave", "--state-dir", tmp_path / "nobody")
    assert code == 2
    kit.assert_one_error(err, "does not exist")


def test_duplicate_device_and_existing_fleet_refused(capsys, fleet, tmp_path):
    admin, _ = fleet
    code, _, err = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-4",
                           "--device-id", "d2", "--state-dir", tmp_path / "again")
    assert code == 2
    kit.assert_one_error(err, "'d2' is already provisioned", "another --device-id")
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", admin.root, "--fleet", "kit", "--reference", "noise")
    assert code == 2
    kit.assert_one_error(err, "already holds a fleet")


def test_bad_ids_and_options(capsys, fleet, tmp_path):
    admin, states = fleet
    code, _, err = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-4",
                           "--device-id", "has/slash", "--state-dir", tmp_path / "s")
    assert code == 2
    kit.assert_one_error(err, "invalid device id 'has/slash'")
    code, _, err = kit.cli(capsys, "neighbors", "add", "admin", "--state-dir", states["d1"].root)
    assert code == 2
    kit.assert_one_error(err, "reserved for the fleet admin")
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "b", "--fleet", "f", "--input-shape", "1x8x8x8")
    assert code == 2
    kit.assert_one_error(err, "not C x H x W")
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "c", "--fleet", "f", "--reference", "noise",
                           "--input-shape", "1x4x4")
    assert code == 2
    kit.assert_one_error(err, "input_shape", "8 <= H, W <= 64")
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "d", "--fleet", "a/b", "--reference", "noise")
    assert code == 2
    kit.assert_one_error(err, "invalid fleet name")


def test_console_script_exit_code_and_debug_traceback(tmp_path):
    # Through the real entry point, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "hdus_edge", "leave", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    kit.assert_one_error(proc.stderr, "not a provisioned device")
    proc = subprocess.run([sys.executable, "-m", "hdus_edge", "--debug", "leave", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "StateDirError" in proc.stderr


def test_reference_folder_of_another_shape_than_given(capsys, tmp_path):
    folder = kit.digits_folder(tmp_path / "ref", n=20)
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "a", "--fleet", "f", "--reference", folder,
                           "--input-shape", "1x28x28")
    assert code == 2
    kit.assert_one_error(err, "shape [1, 8, 8]", "--input-shape [1, 28, 28]")
    x = np.zeros((3, 1, 8, 8), np.float32)
    save_npz(Dataset(x=x, y=np.array([0, 1, 2]), num_classes=3), tmp_path / "r2" / "a.npz")
    code, _, err = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "b", "--fleet", "f",
                           "--reference", tmp_path / "r2", "--reference-size", "10")
    assert code == 2
    kit.assert_one_error(err, "holds 3 samples", "fewer than --reference-size 10")
