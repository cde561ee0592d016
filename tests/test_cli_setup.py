"""Fleet and device set-up through the CLI: fleet init, provision, profiles, broker-config, --help."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import cli_lifecycle_kit as kit
import numpy as np
import pytest

from hdus_edge.config import list_profiles, load_fleet_config
from hdus_edge.data import dataset_sha256, load_digits, load_npz
from hdus_edge.errors import BrokerRefusedError, BrokerUnreachableError
from hdus_edge.protocol.crypto import verify_certificate
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import StateDir
from hdus_edge.transport.mosquitto import find_binary
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.ports import free_port, wait_for_port


def test_fleet_init_from_a_data_folder(capsys, tmp_path):
    # Prepare
    folder = kit.digits_folder(tmp_path / "public", n=150)
    # Execute
    code, out, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "admin", "--fleet", "home",
                           "--broker", "mqtt://10.0.0.2:1883", "--reference", folder, "--lam", "0.3", "--json")
    # Assert: shape and classes come from the data; fleet.toml names the exact bytes in reference.npz.
    assert code == 0
    report = json.loads(out)
    fleet = load_fleet_config(tmp_path / "admin" / "fleet.toml")
    ref = load_npz(tmp_path / "admin" / "reference.npz")
    assert fleet.data.input_shape == (1, 8, 8) and fleet.data.num_classes == 10
    assert fleet.data.reference == "public" and fleet.data.reference_sha256 == dataset_sha256(ref) == report["reference"]["sha256"]
    assert len(ref) == 150 and report["topic_root"] == "hdus/v1/home" and fleet.ensemble.lam == 0.3
    assert np.array_equal(ref.x, load_digits().x[:150])
    assert oct((tmp_path / "admin" / "keys" / "admin.key").stat().st_mode & 0o777) == "0o600"


def test_fleet_init_noise_and_digits_references(capsys, tmp_path):
    code, out, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "n", "--fleet", "n",
                           "--input-shape", "1x28x28", "--classes", "5", "--reference-size", "40", "--json")
    assert code == 0
    fleet = load_fleet_config(tmp_path / "n" / "fleet.toml")
    assert fleet.data.input_shape == (1, 28, 28) and fleet.data.num_classes == 5 and fleet.data.reference == "noise"
    assert len(load_npz(tmp_path / "n" / "reference.npz")) == 40
    code, out, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "d", "--fleet", "d", "--reference-size", "100", "--json")
    assert code == 0
    ref = load_npz(tmp_path / "d" / "reference.npz")
    assert json.loads(out)["reference"]["source"] == "digits" and len(ref) == 100
    assert np.bincount(ref.y, minlength=10).min() >= 9  # stratified
    # Same seed, same reference set (bit for bit); another seed, another one.
    code, out2, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "d2", "--fleet", "d", "--reference-size", "100", "--json")
    code, out3, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", tmp_path / "d3", "--fleet", "d", "--reference-size", "100",
                            "--seed", "1", "--json")
    sha = [json.loads(o)["reference"]["sha256"] for o in (out, out2, out3)]
    assert sha[0] == sha[1] != sha[2]


def test_provision_creates_a_device_and_copies_the_reference(capsys, tmp_path):
    admin, _ = kit.make_fleet(tmp_path, ids=("d1",))
    code, out, _ = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "jetson-orin-nano",
                           "--device-id", "cam-7", "--state-dir", tmp_path / "cam", "--neighbors", "d1,d9",
                           "--neighbor", "d4", "--broker", "mqtt://cam:pw@10.0.0.2:1883", "--json")
    assert code == 0
    report = json.loads(out)
    st = StateDir(tmp_path / "cam")
    st.check()
    dev = st.device()
    assert dev.device.profile == "jetson-orin-nano" and dev.neighbors == ("d1", "d4", "d9")
    assert dev.device.broker == "mqtt://cam:pw@10.0.0.2:1883"
    assert st.reference_file.read_bytes() == admin.reference_file.read_bytes()
    assert st.fleet_file.read_bytes() == admin.fleet_file.read_bytes()
    cert = st.certificate()
    verify_certificate(admin.key().public_key, cert, "kit")  # signed by this fleet's admin
    assert cert.device_id == "cam-7" and cert.public_key == st.key().public_key.raw and cert.epoch == 0
    assert "cam-7" in admin.registry() and oct(st.key_file.stat().st_mode & 0o777) == "0o600"
    assert set(report["files"]) >= {"device.toml", "fleet.toml", "keys/device.key", "keys/device.cert.json",
                                    "keys/admin.pub", "reference.npz"}
    assert any("keys/device.key" in step for step in report["next"])
    code, out, _ = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-5",
                           "--device-id", "lonely", "--state-dir", tmp_path / "lonely")
    flat = " ".join(out.split())  # the words, however the console wrapped the lines
    assert code == 0 and "neighbours: none" in flat and "keys/device.key is its secret" in flat


def test_profiles_list_and_show(capsys):
    code, out, _ = kit.cli(capsys, "profiles", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    names = [r["profile"]["name"] for r in rows]
    assert names == list_profiles() and set(names) >= {
        "raspberry-pi-zero-2w", "raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "generic-x86_64"}
    code, out, _ = kit.cli(capsys, "profiles", "show", "raspberry-pi-4", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["model"]["main_arch"] == "mobilenet-m" and shown["runtime"]["providers"][-1] == "CPUExecutionProvider"
    code, out, _ = kit.cli(capsys, "profiles", "list")
    assert code == 0 and "jetson-orin-nano" in out and "resnet-50" in out
    code, out, _ = kit.cli(capsys, "profiles", "show", "jetson-nano")
    assert code == 0 and "main_arch = resnet-20" in out


COMMANDS = [
    ["fleet", "init"], ["fleet", "show"], ["provision"], ["broker-config"], ["profiles", "list"], ["profiles", "show"],
    ["train"], ["distill"], ["export"], ["publish"], ["agent"], ["predict"], ["status"], ["members"],
    ["neighbors", "list"], ["neighbors", "add"], ["neighbors", "remove"], ["leave"], ["unlearn"], ["receipts"],
    ["inspect"], ["broker"], ["demo"], ["models", "list"], ["models", "show"], ["bench", "accuracy"],
    ["dashboard"], ["bench", "dashboard"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(capsys, argv):
    code, out, _ = kit.cli(capsys, *argv, "--help")
    assert code == 0
    assert "Example: hdus-edge " + argv[0] in " ".join(out.split()), out


def test_neighbors_add_and_remove_without_an_agent(capsys, tmp_path):
    _, states, seeds = kit.installed_fleet(tmp_path)
    st = states["d1"]
    code, out, _ = kit.cli(capsys, "neighbors", "remove", "d3", "--state-dir", st.root, "--json")
    change = json.loads(out)
    assert code == 0 and change["neighbors"] == ["d2"] and change["seeds_removed"] == ["d3"]
    assert st.device().neighbors == ("d2",)
    from hdus_edge.device.store import SeedStore

    with SeedStore(st.store_dir) as store:
        assert store.seed_info("d3") is None and store.seed_info("d2") is not None
        assert not any(seeds["d3"] in p.read_bytes() for p in (st.store_dir / "seeds").iterdir())
    code, out, _ = kit.cli(capsys, "neighbors", "add", "d3,d7", "d8", "--state-dir", st.root, "--json")
    assert code == 0 and json.loads(out)["added"] == ["d3", "d7", "d8"]
    assert st.device().neighbors == ("d2", "d3", "d7", "d8")
    code, out, _ = kit.cli(capsys, "neighbors", "list", "--state-dir", st.root, "--json")
    rows = {r["device_id"]: r["seed_version"] for r in json.loads(out)["neighbors"]}
    assert rows == {"d2": 1, "d3": None, "d7": None, "d8": None}


# --- broker-config, checked against a real Mosquitto ---------------------------------------------------------


def _generated_broker(capsys, tmp_path, *extra: str, ids=kit.IDS):
    """A fleet, ``broker-config`` run through the CLI, and Mosquitto running exactly the written config."""
    admin, states = kit.make_fleet(tmp_path, ids=ids)
    port = free_port()
    code, out, _ = kit.cli(capsys, "broker-config", "--admin-dir", admin.root, "--out", tmp_path / "broker",
                           "--port", port, "--no-persistence", *extra, "--json")
    assert code == 0
    files = json.loads(out)
    proc = subprocess.Popen([find_binary("mosquitto"), "-c", files["config"]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_for_port("127.0.0.1", port, 10)
    return admin, states, files, port, proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_broker_config_is_tls_only_with_passwords_and_per_device_acl(capsys, tmp_path):
    # Prepare: a fleet of three and the broker the default broker-config writes.
    _, _, files, port, proc = _generated_broker(capsys, tmp_path)
    creds = json.loads((tmp_path / "broker" / "credentials.json").read_text())
    bundle = {d: TlsFiles.from_dir(tmp_path / "broker" / "devices" / d / "keys" / "tls") for d in ("admin", "d1")}
    try:
        assert oct(os.stat(tmp_path / "broker" / "credentials.json").st_mode & 0o777) == "0o600"
        assert set(creds) == {"admin", "d1", "d2", "d3"} and files["tls"] is True
        assert creds["d1"]["password"] not in (tmp_path / "broker" / "dynamic-security.json").read_text()  # hashed
        assert creds["d1"]["url"].startswith("mqtts://")
        root = Topics("kit").root
        # Execute / Assert: no plain-text listener, no TLS without a client certificate, no wrong password.
        with pytest.raises((BrokerRefusedError, BrokerUnreachableError)):
            MqttTransport(f"mqtt://d1:{creds['d1']['password']}@127.0.0.1:{port}", "kit.d1").connect(timeout=3, max_attempts=1)
        with pytest.raises((BrokerRefusedError, BrokerUnreachableError)):
            MqttTransport(creds["d1"]["url"], "kit.d1", tls=TlsFiles(ca_file=bundle["d1"].ca_file)).connect(timeout=3, max_attempts=1)
        with pytest.raises(BrokerRefusedError):
            MqttTransport(creds["d1"]["url"].replace(creds["d1"]["password"], "wrong"), "kit.d1",
                          tls=bundle["d1"]).connect(timeout=5)
        # The admin sees what devices write; d1 may write only where it is the sender, never an order.
        seen: list[str] = []
        watcher = MqttTransport(creds["admin"]["url"], "watcher", handler=lambda t, p, r: seen.append(t), tls=bundle["admin"])
        watcher.subscribe(f"{root}/#")
        watcher.connect(timeout=5)
        d1 = MqttTransport(creds["d1"]["url"], "kit.d1", tls=bundle["d1"])
        d1.connect(timeout=5)
        try:
            for topic in (f"{root}/membership/d1", f"{root}/membership/d2", f"{root}/seeds/d2/d1",
                          f"{root}/seeds/d3/d2", f"{root}/unlearn/d3", f"{root}/unlearn/d1", f"{root}/leave/d1",
                          f"{root}/leave/d2", f"{root}/revocations", f"{root}/tombstones/d1"):
                assert d1.publish(topic, b"x", wait=True, timeout=5)  # a 3.1.1 broker acks denied ones too
            deadline = time.monotonic() + 5
            while len(seen) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert sorted(seen) == sorted([f"{root}/membership/d1", f"{root}/seeds/d2/d1", f"{root}/leave/d1",
                                           f"{root}/tombstones/d1"])
        finally:
            d1.close()
            watcher.close()
    finally:
        _stop(proc)


def test_a_device_agent_runs_on_the_generated_broker_with_its_state_dir_certificate(capsys, tmp_path):
    # The ACL must allow everything the agent subscribes to and publishes (hello, membership, digests, ...),
    # and the agent finds its client certificate in <state>/keys/tls/ by itself.
    from hdus_edge.admin.broker import install_device_access
    from hdus_edge.device.agent import AgentSettings, DeviceAgent

    _, states, _, _, proc = _generated_broker(capsys, tmp_path)
    kit.install_models(states["d1"])
    url = install_device_access(tmp_path / "broker", "d1", states["d1"])
    try:
        assert (states["d1"].root / "keys" / "tls" / "client.crt").exists() and url.startswith("mqtts://d1:")
        agent = DeviceAgent.from_state_dir(states["d1"], settings=AgentSettings(probe_in_subprocess=False))
        agent.start()
        try:
            assert agent.transport.connected
            assert agent.transport.subscribe(Topics("kit").subscriptions("d1", ["d2"]))  # every filter granted
        finally:
            agent.stop()
    finally:
        _stop(proc)


def test_broker_config_insecure_plaintext_has_no_tls_listener(capsys, tmp_path):
    admin, _, files, _, proc = _generated_broker(capsys, tmp_path, "--insecure-plaintext", ids=("d1", "d2"))
    creds = json.loads((tmp_path / "broker" / "credentials.json").read_text())
    try:
        assert files["tls"] is False and files["ca"] is None and "cafile" not in Path(files["config"]).read_text()
        t = MqttTransport(creds["d1"]["url"], "kit.d1")
        t.connect(timeout=5)
        try:
            assert t.publish(f"{Topics('kit').root}/membership/d1", b"x", wait=True, timeout=5)
        finally:
            t.close()
    finally:
        _stop(proc)
    code, _, err = kit.cli(capsys, "broker-config", "--admin-dir", admin.root, "--out", tmp_path / "broker")
    assert code == 2
    kit.assert_one_error(err, "mosquitto.conf already exists")


def test_console_width_is_fixed_whatever_the_terminal(capsys, tmp_path):
    # conftest fixes the CLI's console width, so human output wraps the same in every terminal:
    # a long line (a long state-dir path) stays one line at CONSOLE_WIDTH.
    from conftest import CONSOLE_WIDTH

    from hdus_edge.cli import output

    assert output.console.width == output.err_console.width == CONSOLE_WIDTH
    admin, _ = kit.make_fleet(tmp_path, ids=("d1",))
    state = tmp_path / ("s" * 60)
    code, out, _ = kit.cli(capsys, "provision", "--admin-dir", admin.root, "--profile", "raspberry-pi-5",
                           "--device-id", "lonely", "--state-dir", state)
    first = out.splitlines()[0]
    assert code == 0 and 80 < len(first) <= CONSOLE_WIDTH and first.endswith("neighbours: none")
