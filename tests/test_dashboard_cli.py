"""``hdus-edge dashboard`` as a user runs it: a subprocess on a real broker; access token and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.cli_lifecycle_kit import DEAD_BROKER, assert_one_error, cli, make_fleet

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
