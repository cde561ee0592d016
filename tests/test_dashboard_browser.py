"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) against
``hdus-edge dashboard`` on a real Mosquitto with three live agents.

The page lists the three devices and draws the graph; after ``hdus-edge unlearn dev-2`` it shows dev-2
forgotten and both holders' receipts without a reload (pushed by server-sent events); malformed retained
messages on the broker, one of them on a topic that is HTML, are listed as rejected and run nothing.
The test saves a screenshot (to ``$HDUS_DASHBOARD_SCREENSHOT`` too, when set: that is how
``docs/dashboard.png`` is made).

Needs the apt packages ``chromium`` (and Mosquitto, as every broker test); Playwright only drives
that browser (never ``playwright install``: no browser downloads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.device.agent import AgentSettings
from hdus_edge.lab.agents import AgentFleet, DeviceModels
from hdus_edge.lab.synthetic import REFERENCE_SHA, synthetic_models
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.messages import NeighborList
from hdus_edge.protocol.topics import Topics
from hdus_edge.topology import complete
from hdus_edge.transport.mqtt import MqttTransport

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IDS = ("dev-0", "dev-1", "dev-2")
PROFILES = ("raspberry-pi-4", "jetson-nano", "generic-x86_64")
HD = [sys.executable, "-m", "hdus_edge"]
WAIT_MS = 30_000  # generous: the machine is shared; the push itself takes well under a second
HTML_TOPIC_TAIL = "<img src=x onerror=window.__xss=1>"


def _fleet(root: Path, broker_url: str) -> AgentFleet:
    models = synthetic_models(3)
    by_id = {d: DeviceModels(m.main_onnx, m.seed_onnx, profile)
             for d, m, profile in zip(IDS, models.values(), PROFILES, strict=True)}
    config = FleetConfig(FleetSection("lab", broker_url), DataSection((1, 8, 8), 10, "public", REFERENCE_SHA),
                         EnsembleSection(0.5, "probs"))
    settings = AgentSettings(lam=0.5, space="probs", probe_in_subprocess=False, digest_interval_s=0.5)
    return AgentFleet(root, broker_url, config, by_id, complete(list(IDS)), settings)


def _publish_junk(broker_url: str) -> list[str]:
    """Malformed retained messages, as anyone with write access to the fleet's topics could leave them."""
    t = Topics("lab")
    junk = {
        t.hello("dev-9"): b"\x00not an envelope",
        t.unlearn("dev-1"): b"HDUS" + bytes(120),
        t.presence("dev-0") + "x": b"online",
        f"{t.root}/{HTML_TOPIC_TAIL}": b"<script>window.__xss=2</script>",
    }
    with MqttTransport(broker_url, "junk-writer", clean_session=True) as writer:
        writer.connect(timeout=10)
        for topic, payload in junk.items():
            assert writer.publish(topic, payload, retain=True, wait=True, timeout=10)
        # Well formed, but from a device that never announced itself: parked, by the agents and the page.
        stranger = SigningKey.from_seed(bytes([7]) * 32)
        parked = codec.encode(NeighborList("dev-7", ("dev-0",), 1), stranger, "dev-7")
        assert writer.publish(t.membership("dev-7"), parked, retain=True, wait=True, timeout=10)
    return sorted(junk)


def _start_dashboard(admin: Path, states: list[Path]) -> tuple[subprocess.Popen, dict]:
    argv = [*HD, "dashboard", "--admin-dir", str(admin), "--listen", "127.0.0.1:0", "--json"]
    for s in states:
        argv += ["--state-dir", str(s)]
    # Its log goes to a file: a pipe nobody reads fills up (64 KiB) and blocks the dashboard's threads.
    log = admin.parent / "dashboard.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the dashboard exited {proc.wait()}: {log.read_text()[-3000:]}")
        lines.append(line)
        if line.rstrip() == "}":
            return proc, json.loads("".join(lines))


def test_the_page_shows_the_fleet_and_an_unlearn_live_in_chromium(tmp_path, mosquitto_broker):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium", pytrace=False)
    fleet = _fleet(tmp_path / "fleet", mosquitto_broker.url)
    dashboard = None
    try:
        fleet.start(timeout=120)
        junk_topics = _publish_junk(mosquitto_broker.url)
        dashboard, info = _start_dashboard(fleet.admin.root, [fleet.states[d].root for d in IDS])
        assert info["fleet"] == "lab" and info["token"] is None and info["url"].startswith("http://127.0.0.1:")
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1360, "height": 900},
            )
            try:
                page = browser.new_page()
                page.goto(info["url"])
                # --- three devices and the graph ----------------------------------------------------
                rows = page.locator("#devices tbody tr")
                expect(rows).to_have_count(3, timeout=WAIT_MS)
                for d in IDS:
                    row = page.locator(f'#devices tr[data-device="{d}"]')
                    expect(row).to_have_attribute("data-state", "online", timeout=WAIT_MS)
                    expect(page.locator(f'#graph g.node[data-node="{d}"]')).to_have_count(1)
                expect(page.locator("#graph line.edge")).to_have_count(3)
                expect(page.locator("#graph line.edge.unseeded")).to_have_count(0, timeout=WAIT_MS)
                expect(page.locator('#devices tr[data-device="dev-0"] td.members')).to_have_text("main, dev-1, dev-2")
                expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
                # --- malformed retained messages: listed as rejected, never run -----------------------
                rejected = page.locator("#rejected tr.rejected")
                expect(rejected).to_have_count(len(junk_topics), timeout=WAIT_MS)
                expect(page.locator("#rejected td.topic", has_text=HTML_TOPIC_TAIL)).to_have_count(1)
                expect(page.locator('#rejected tr.parked[data-reason="UnknownSenderError"]')).to_have_count(1)
                expect(page.locator('[data-card="parked"] b')).to_have_text("1")
                assert page.evaluate("window.__xss") is None
                # The agents rejected the junk too: their own counters, from their status files.
                expect(page.locator("#agent-reasons tr")).to_have_count(3, timeout=WAIT_MS)
                # --- the admin orders dev-2 forgotten; the open page follows without a reload ----------
                page.evaluate("window.__sameDocument = true")
                done = subprocess.run([*HD, "unlearn", "dev-2", "--admin-dir", str(fleet.admin.root), "--wait", "30",
                                       "--json"], capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr[-3000:]
                outcome = json.loads(done.stdout)
                assert outcome["complete"] and outcome["holders"] == ["dev-0", "dev-1"]
                dev_2 = page.locator('#devices tr[data-device="dev-2"]')
                expect(dev_2).to_have_attribute("data-state", "forgotten", timeout=WAIT_MS)
                expect(page.locator('#graph g.node[data-node="dev-2"]')).to_have_attribute("data-state", "forgotten")
                request = page.locator(f'.request[data-request="{outcome["request_id"]}"]')
                expect(request).to_have_attribute("data-complete", "true", timeout=WAIT_MS)
                expect(request.locator("tr.receipt")).to_have_count(2)
                for holder in ("dev-0", "dev-1"):
                    expect(request.locator(f'tr.receipt[data-device="{holder}"]')).to_contain_text("deleted")
                expect(page.locator('#devices tr[data-device="dev-0"] td.members')).to_have_text("main, dev-1", timeout=WAIT_MS)
                expect(page.locator('#devices tr[data-device="dev-1"] td.members')).to_have_text("main, dev-0", timeout=WAIT_MS)
                # Evidence written by the CLI shows up as a source of the receipts too.
                expect(request.locator('tr.receipt[data-device="dev-0"]')).to_contain_text("evidence", timeout=WAIT_MS)
                # The agents parked the stranger's list too (their status files, rewritten after the unlearn).
                expect(page.locator('#devices tr[data-device="dev-0"]')).to_contain_text("1 parked", timeout=WAIT_MS)
                assert page.evaluate("window.__sameDocument") is True  # no reload happened
                assert page.evaluate("window.__xss") is None
                # --- the JSON API says the same ---------------------------------------------------------
                with urllib.request.urlopen(info["api"], timeout=10) as resp:
                    api = json.loads(resp.read())
                by_id = {d["device_id"]: d for d in api["devices"]}
                assert by_id["dev-2"]["forgotten"] and not by_id["dev-0"]["forgotten"]
                [req] = [r for r in api["requests"] if r["request_id"] == outcome["request_id"]]
                assert [r["device_id"] for r in req["receipts"]] == ["dev-0", "dev-1"] and req["missing"] == []
                assert sorted({r["topic"] for r in api["rejected"]}) == junk_topics
                # --- a screenshot, for people ----------------------------------------------------------
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("HDUS_DASHBOARD_SCREENSHOT"):
                    shutil.copyfile(shot, os.environ["HDUS_DASHBOARD_SCREENSHOT"])
            finally:
                browser.close()
    finally:
        if dashboard is not None:
            dashboard.terminate()
            try:
                assert dashboard.wait(15) == 0, dashboard.stderr.read()[-2000:]
            finally:
                if dashboard.poll() is None:
                    dashboard.kill()
        fleet.stop()
