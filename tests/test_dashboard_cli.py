"""``hdus-edge dashboard`` as a user runs it: a subprocess on a real broker; access token and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cli_lifecycle_kit import DEAD_BROKER, assert_one_error, cli, make_fleet

HD = [sys.executable, "-m", "hdus_edge"]


def _serve(*argv: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([*HD, "dashboard", *argv, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the dashboard exited {proc.wait()}: {proc.stderr.read()[-3000:]}")
        lines.append(line)
        if line.rstrip() == "}":
            return proc, json.loads("".join(lines))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_beyond_loopback_the_dashboard_makes_up_a_token_and_requires_it(tmp_path, mosquitto_broker):
    admin, _ = make_fleet(tmp_path, mosquitto_broker.url)
    proc, info = _serve("--admin-dir", str(admin.root), "--listen", "0.0.0.0:0")
    try:
        token = info["token"]
        assert token and len(token) >= 24 and info["url"].endswith(f"/?token={token}")
        port = info["url"].split(":")[2].split("/")[0]
        assert _status(f"http://127.0.0.1:{port}/api/fleet.json") == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet.json?token={token}", timeout=10) as resp:
            doc = json.loads(resp.read())
        # Provisioned but never started: listed from devices.json, not announced, presence unknown.
        assert [(d["device_id"], d["registered"], d["announced"], d["online"]) for d in doc["devices"]] == [
            ("d1", True, False, None), ("d2", True, False, None), ("d3", True, False, None)]
        assert doc["broker"]["connected"] and doc["fleet"] == "kit"
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps and "onnxruntime" not in maps, "the dashboard loaded torch or onnxruntime"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_an_unreachable_broker_or_a_bad_listen_address_is_one_error_line(tmp_path, capsys):
    admin, _ = make_fleet(tmp_path, DEAD_BROKER)
    code, _, err = cli(capsys, "dashboard", "--admin-dir", admin.root, "--listen", "127.0.0.1:0")
    assert code == 1
    assert_one_error(err, "no connection to broker")
    code, _, err = cli(capsys, "dashboard", "--admin-dir", admin.root, "--listen", "nowhere")
    assert code == 2
    assert_one_error(err, "--listen", "HOST:PORT")
    code, _, err = cli(capsys, "dashboard", "--admin-dir", tmp_path / "no-admin")
    assert code == 2
    assert_one_error(err, "not a fleet admin directory")


def test_bench_dashboard_measures_render_and_push_on_a_real_broker(tmp_path, mosquitto_broker):
    from hdus_edge.bench.dashboard import push_figures, render_figures

    render = render_figures(3)
    assert render["devices"] == 3 and render["messages"] == 15 and render["json_kib"] > 0
    push = push_figures(3, mosquitto_broker.url, tmp_path, flips=2)
    # Figures, not assertions on time: each sample is a matching event the page received.
    assert push["presence_samples"] == 2 and push["unlearn_s"] > 0 and isinstance(push["within_target"], bool)


def test_the_dashboard_reads_a_fleet_on_either_broker(tmp_path, broker_url):
    # The README's fleet runs on the embedded amqtt broker; real fleets on Mosquitto.
    import time

    from hdus_edge.bench.dashboard import FLEET, signed_fleet
    from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
    from hdus_edge.dashboard.service import Dashboard
    from hdus_edge.state import init_fleet
    from hdus_edge.transport.mqtt import MqttTransport

    admin_key, _, retained = signed_fleet(3)
    config = FleetConfig(FleetSection(FLEET, broker_url), DataSection((1, 8, 8), 10, "public", "0" * 64), EnsembleSection())
    admin = init_fleet(tmp_path / "admin", config, key=admin_key)
    with MqttTransport(broker_url, "writer", clean_session=True) as writer:
        writer.connect(timeout=10)
        for topic, payload in retained.items():
            assert writer.publish(topic, payload, retain=True, wait=True)
    with Dashboard(admin, port=0) as dashboard:
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(dashboard.url + "api/fleet.json", timeout=10) as resp:
                doc = json.loads(resp.read())
            if [len(d["members"]) for d in doc["devices"]] == [2, 2, 2] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert [(d["device_id"], d["online"], len(d["members"])) for d in doc["devices"]] == [
        ("dev-000", True, 2), ("dev-001", True, 2), ("dev-002", True, 2)]
    assert doc["rejected"] == [] and doc["broker"]["connected"]
