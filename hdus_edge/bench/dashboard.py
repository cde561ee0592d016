"""``hdus-edge bench dashboard``: how fast the fleet dashboard renders, and how soon a change reaches the page.

Fleets of N devices on a complete graph, as signed messages the broker retains (hello, neighbour list,
presence, one ~30 KB seed per ordered pair), built here with seeded keys and bytes:

- render: the first snapshot (every signature checked) and a re-render with the verification memo
  (what every later change costs), and the size of the JSON the page receives;
- push: on a real broker (Mosquitto when installed, else the embedded amqtt), a running ``Dashboard``
  and a server-sent-event client; from publishing a change (a device's presence flips, then an
  admin-signed unlearn order) to the event that shows it, against the issue's 1 s target.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.dashboard.fleet_view import (
    AdminView,
    BrokerMessage,
    VerifyMemo,
    build_snapshot,
)
from hdus_edge.dashboard.service import Dashboard
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, issue_certificate
from hdus_edge.protocol.messages import Hello, NeighborList, SeedEnvelope, UnlearnOrder
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import init_fleet
from hdus_edge.transport.mqtt import PRESENCE_OFFLINE, PRESENCE_ONLINE, MqttTransport

logger = logging.getLogger(__name__)

FLEET = "bench"
SEED_BYTES = 30_000  # a 4k-6k parameter seed exported to ONNX
TARGET_PUSH_S = 1.0


def _key(name: str, seed: int) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(f"{seed}:{name}".encode()).digest())


def signed_fleet(n: int, seed: int = 0) -> tuple[SigningKey, dict[str, SigningKey], dict[str, bytes]]:
    """(admin key, device keys, topic -> retained payload) of a running complete-graph fleet of ``n``."""
    t = Topics(FLEET)
    admin = _key("admin", seed)
    ids = [f"dev-{k:03d}" for k in range(n)]
    keys = {d: _key(d, seed) for d in ids}
    rng = np.random.default_rng(seed)
    retained: dict[str, bytes] = {}
    for d in ids:
        cert = issue_certificate(admin, fleet=FLEET, device_id=d, public_key=keys[d].public_key, issued_at=1.0)
        others = tuple(j for j in ids if j != d)
        hello = Hello(d, keys[d].public_key.raw, cert, "generic-x86_64", "resnet-8", "seed-cnn")
        retained[t.hello(d)] = codec.encode(hello, keys[d], d)
        retained[t.membership(d)] = codec.encode(NeighborList(d, others, 1), keys[d], d)
        retained[t.presence(d)] = PRESENCE_ONLINE
        onnx = rng.bytes(SEED_BYTES)
        for j in others:
            env = SeedEnvelope.build(owner=d, to=j, version=1, onnx=onnx, arch="seed-cnn", input_shape=(-1, 1, 8, 8),
                                     num_classes=10, reference_sha256="0" * 64, epoch=0)
            retained[t.seed(j, d)] = codec.encode(env, keys[d], d)
    return admin, keys, retained


def render_figures(n: int, seed: int = 0) -> dict[str, Any]:
    """First render, re-render with the memo, and JSON size for a fleet of ``n`` (no broker)."""
    admin, _, retained = signed_fleet(n, seed)
    messages = [BrokerMessage(topic, payload, 1.0) for topic, payload in retained.items()]
    view = AdminView(FLEET, admin.public_key)
    memo = VerifyMemo()
    began = time.perf_counter()
    snap = build_snapshot(view, messages, memo=memo)
    first = time.perf_counter() - began
    began = time.perf_counter()
    again = build_snapshot(view, messages, memo=memo)
    rerender = time.perf_counter() - began
    body = json.dumps(again.to_json())
    assert not snap.rejected and len(snap.devices) == n
    return {"devices": n, "messages": len(messages), "first_render_s": first, "rerender_s": rerender,
            "json_kib": len(body) / 1024}


class _EventClient:
    """Reads the dashboard's server-sent events in a thread; ``wait(pred)`` -> arrival time of the first match."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/api/events")
        self.resp = self.conn.getresponse()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.resp.fp:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    doc = json.loads(line[len("data: "):])
                    with self.cond:
                        self.events.append((time.monotonic(), doc))
                        self.cond.notify_all()
        except (OSError, ValueError):
            pass

    def wait(self, pred: Callable[[dict[str, Any]], bool], after: int, timeout: float = 60.0) -> tuple[float, int]:
        """(arrival time, index) of the first event at index >= ``after`` that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.events)):
                    if pred(self.events[i][1]):
                        return self.events[i][0], i + 1
                after = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    raise TimeoutError("the dashboard pushed no matching event")

    def close(self) -> None:
        self.conn.close()


def _online(doc: dict[str, Any], device: str) -> bool | None:
    return next((d["online"] for d in doc["devices"] if d["device_id"] == device), None)


def _forgotten(doc: dict[str, Any], device: str) -> bool:
    return any(d["device_id"] == device and d["forgotten"] for d in doc["devices"])


def push_figures(n: int, broker_url: str, root: Path, flips: int = 6, seed: int = 0) -> dict[str, Any]:
    """Seconds from publishing a change to the pushed event that shows it, on a live dashboard."""
    t = Topics(FLEET)
    admin_key, _, retained = signed_fleet(n, seed)
    config = FleetConfig(FleetSection(FLEET, broker_url), DataSection((1, 8, 8), 10, "public", "0" * 64), EnsembleSection())
    admin = init_fleet(root / f"admin-{n}", config, key=admin_key)
    writer = MqttTransport(broker_url, f"bench-writer-{n}", clean_session=True)
    writer.connect(timeout=10)
    dashboard = None
    client = None
    try:
        for topic, payload in retained.items():
            writer.publish(topic, payload, retain=True, wait=False)
        if not writer.flush(timeout=120):
            raise TimeoutError("the broker did not take the fleet's retained messages")
        dashboard = Dashboard(admin, host="127.0.0.1", port=0).start()
        client = _EventClient(dashboard.server.port)
        converged = lambda doc: len(doc["devices"]) == n and all(len(d["members"]) == n - 1 for d in doc["devices"])  # noqa: E731
        _, seen = client.wait(converged, 0, 300)
        device = f"dev-{0:03d}"
        samples = []
        for k in range(flips):
            online = k % 2 == 1
            began = time.monotonic()
            writer.publish(t.presence(device), PRESENCE_ONLINE if online else PRESENCE_OFFLINE, retain=True, wait=False)
            arrived, seen = client.wait(lambda doc, want=online: _online(doc, device) is want, seen)
            samples.append(arrived - began)
        target = f"dev-{n - 1:03d}"
        order = UnlearnOrder(target, "admin", f"bench-{n}", time.time(), "bench", 0)
        began = time.monotonic()
        writer.publish(t.unlearn(target), codec.encode(order, admin_key, "admin"), retain=True, wait=False)
        arrived, _ = client.wait(lambda doc: _forgotten(doc, target), seen)
        unlearn_s = arrived - began
    finally:
        if client is not None:
            client.close()
        if dashboard is not None:
            dashboard.stop()
        for topic in [*retained, t.unlearn(f"dev-{n - 1:03d}")]:  # leave the broker as we found it
            writer.publish(topic, b"", retain=True, wait=False)
        writer.flush(timeout=60)
        writer.close()
    return {"devices": n, "presence_samples": len(samples), "presence_p50_s": float(np.median(samples)),
            "presence_max_s": float(max(samples)), "unlearn_s": unlearn_s,
            "within_target": max(*samples, unlearn_s) <= TARGET_PUSH_S}


def run_dashboard_bench(render_sizes: tuple[int, ...], push_sizes: tuple[int, ...],
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Render figures for ``render_sizes`` and push latencies for ``push_sizes`` in one run."""
    from hdus_edge.transport.broker import EmbeddedBroker
    from hdus_edge.transport.mosquitto import MosquittoProcess

    started = time.monotonic()
    note = progress or (lambda what: None)
    render = []
    for n in render_sizes:
        note(f"render, {n} devices")
        render.append(render_figures(n))
    root = Path(tempfile.mkdtemp(prefix="hdus-bench-dashboard-"))
    push = []
    broker_name = "mosquitto" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "amqtt"
    broker: Any = MosquittoProcess(root / "mosquitto").start() if broker_name == "mosquitto" else EmbeddedBroker().start()
    try:
        for n in push_sizes:
            note(f"push, {n} devices on {broker_name}")
            push.append(push_figures(n, broker.url, root))
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"render": render, "push": push, "broker": broker_name, "target_push_s": TARGET_PUSH_S,
            "seconds": time.monotonic() - started}
