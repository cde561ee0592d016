"""The dashboard's I/O without a broker: the HTTP server (access rules, SSE), the feed, the mirror's bounds."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from hdus_edge.dashboard.feed import FleetFeed
from hdus_edge.dashboard.mirror import BrokerMirror
from hdus_edge.dashboard.server import DashboardServer, is_loopback, parse_listen
from hdus_edge.errors import ConfigError
from hdus_edge.protocol.topics import Topics


class Source:
    """A render function and a change counter standing in for the broker mirror."""

    def __init__(self) -> None:
        self.doc = {"fleet": "lab", "generated_at": 1.0, "devices": []}
        self.changes = 0
        self.cond = threading.Condition()

    def render(self) -> dict:
        return dict(self.doc)

    def change(self, **fields) -> None:
        with self.cond:
            self.doc.update(fields)
            self.changes += 1
            self.cond.notify_all()

    def wait_change(self, seen: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.changes > seen, timeout)
            return self.changes


@pytest.fixture
def served():
    made = []

    def make(token=None, host="127.0.0.1", max_streams=32):
        source = Source()
        feed = FleetFeed(source.render, source.wait_change, poll_s=0.05).start()
        server = DashboardServer(feed, host, 0, token=token, max_streams=max_streams).start()
        made.append((feed, server))
        return source, feed, server

    yield make
    for feed, server in made:
        feed.stop()
        server.stop()


def get(server: DashboardServer, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, dict(resp.getheaders())


def test_page_api_and_assets_are_served_with_a_strict_policy(served):
    source, _, server = served()
    status, body, headers = get(server, "/")
    assert status == 200 and b'src="static/dashboard.js"' in body and b"http" not in body.split(b"<body>")[0].lower()
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    status, body, _ = get(server, "/api/fleet.json")
    assert status == 200 and json.loads(body)["fleet"] == "lab"
    assert get(server, "/static/dashboard.js")[0] == 200 and get(server, "/static/dashboard.css")[0] == 200
    assert get(server, "/static/../server.py")[0] == 404 and get(server, "/etc/passwd")[0] == 404


def test_the_page_and_assets_load_nothing_from_the_internet(served):
    _, _, server = served()
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        text = get(server, path)[1].decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path
        assert "//cdn" not in text and "@import" not in text


def test_a_token_guards_the_page_and_the_api_but_not_the_assets(served):
    _, _, server = served(token="s3cret")
    assert get(server, "/api/fleet.json")[0] == 401
    assert get(server, "/api/fleet.json?token=wrong")[0] == 401
    assert get(server, "/")[0] == 401 and get(server, "/api/events")[0] == 401
    assert get(server, "/api/fleet.json?token=s3cret")[0] == 200
    assert get(server, "/api/fleet.json", {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(server, "/static/dashboard.js")[0] == 200
    assert server.url.endswith("/?token=s3cret")


def test_on_loopback_a_foreign_host_name_is_refused(served):
    # A page on another site that rebinds its name to 127.0.0.1 sends its own name as Host.
    _, _, server = served()
    assert get(server, "/api/fleet.json", {"Host": "evil.example:8080"})[0] == 403
    assert get(server, "/api/fleet.json", {"Host": f"localhost:{server.port}"})[0] == 200
    assert get(server, "/api/fleet.json", {"Host": f"[::1]:{server.port}"})[0] == 200


def test_listening_beyond_loopback_without_a_token_is_refused():
    source = Source()
    feed = FleetFeed(source.render, source.wait_change)
    with pytest.raises(ConfigError, match="token"):
        DashboardServer(feed, "0.0.0.0", 0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080) and parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "host:", "a:b", ":80", "h:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_events_stream_the_current_view_then_each_change(served):
    source, _, server = served()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"

    def next_event() -> dict:
        data = None
        while True:
            line = resp.fp.readline().decode().rstrip("\n")
            if line.startswith("data: "):
                data = json.loads(line[len("data: "):])
            elif line == "" and data is not None:
                return data

    assert next_event()["devices"] == []
    source.change(devices=[{"device_id": "dev-0"}])
    assert next_event()["devices"] == [{"device_id": "dev-0"}]
    conn.close()


def test_the_feed_publishes_a_new_version_only_when_the_view_changes():
    source = Source()
    feed = FleetFeed(source.render, source.wait_change, poll_s=0.05)
    assert feed.refresh() and feed.current()[0] == 1
    source.doc["generated_at"] = 2.0  # only the time stamp moved
    assert not feed.refresh() and feed.current()[0] == 1
    source.doc["devices"] = ["x"]
    assert feed.refresh() and feed.current()[0] == 2
    assert feed.wait_newer(2, 0.01) is None and feed.wait_newer(1, 0.01)[0] == 2


def test_a_render_error_keeps_the_last_good_view():
    source = Source()
    feed = FleetFeed(source.render, source.wait_change)
    feed.refresh()

    def broken() -> dict:
        raise RuntimeError("bug")

    feed._render = broken
    assert not feed.refresh() and json.loads(feed.current()[1])["fleet"] == "lab"


def test_the_mirror_is_bounded_and_follows_cleared_topics():
    mirror = BrokerMirror("mqtt://127.0.0.1:9", Topics("lab"), max_topics=3, max_bytes=10)
    try:
        for k in range(5):
            mirror._on_message(f"hdus/v1/lab/x/{k}", b"payload", True)
        assert len(mirror.messages()) == 3 and mirror.dropped == 2
        mirror._on_message("hdus/v1/lab/x/0", b"", False)  # cleared: room again
        mirror._on_message("hdus/v1/lab/x/9", b"y" * 1000, False)
        held = {m.topic: m for m in mirror.messages()}
        assert "hdus/v1/lab/x/0" not in held and len(held["hdus/v1/lab/x/9"].payload) == 11
        assert held["hdus/v1/lab/x/9"].live and not held["hdus/v1/lab/x/1"].live
        assert mirror.wait_change(0, 0.01) == 7
    finally:
        mirror.close()


def test_the_mirror_caps_the_bytes_it_holds():
    mirror = BrokerMirror("mqtt://127.0.0.1:9", Topics("lab"), max_bytes=100, max_total_bytes=250)
    try:
        for k in range(4):
            mirror._on_message(f"hdus/v1/lab/x/{k}", b"p" * 100, True)
        assert len(mirror.messages()) == 2 and mirror.dropped == 2
        mirror._on_message("hdus/v1/lab/x/0", b"q" * 50, False)  # a smaller replacement frees room
        mirror._on_message("hdus/v1/lab/x/7", b"r" * 100, False)
        assert sorted(m.topic for m in mirror.messages()) == ["hdus/v1/lab/x/0", "hdus/v1/lab/x/1", "hdus/v1/lab/x/7"]
    finally:
        mirror.close()


def test_after_a_broker_restart_the_mirror_holds_only_what_the_new_session_delivers(mosquitto_broker):
    import time

    from hdus_edge.transport.mqtt import MqttTransport

    topics = Topics("lab")
    writer = MqttTransport(mosquitto_broker.url, "writer", clean_session=True)
    writer.connect(timeout=10)
    mirror = BrokerMirror(mosquitto_broker.url, topics).start()
    try:
        assert writer.publish(topics.presence("old"), b"online", retain=True, wait=True)
        mirror.wait_change(0, 10)
        assert [m.topic for m in mirror.messages()] == [topics.presence("old")]
        mosquitto_broker.restart()  # no persistence: the retained message is gone with it
        deadline = time.monotonic() + 60
        while mirror.transport.connect_count < 2 or not writer.connected:
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.05)
        assert mirror.messages() == ()  # nothing from the old session lingers
        assert writer.publish(topics.presence("new"), b"online", retain=True, wait=True)
        while not mirror.messages():
            assert time.monotonic() < deadline, "nothing after the reconnect"
            time.sleep(0.05)
        assert [m.topic for m in mirror.messages()] == [topics.presence("new")]
    finally:
        mirror.close()
        writer.close()


def test_the_mirror_gets_every_retained_seed_past_the_brokers_queue_limit(mosquitto_factory):
    # Found by 'bench dashboard': one subscription to the whole fleet made Mosquitto hand over every
    # retained seed at once and drop those past its per-client queue (1000 by default), so a 50-device
    # fleet showed missing seeds. Here the queue holds 40; the fleet retains 132 seeds.
    import time

    from hdus_edge.bench.dashboard import FLEET, signed_fleet
    from hdus_edge.transport.mqtt import MqttTransport

    broker = mosquitto_factory(max_queued_messages=40)
    _, keys, retained = signed_fleet(12)
    writer = MqttTransport(broker.url, "writer", clean_session=True)
    writer.connect(timeout=10)
    for topic, payload in retained.items():
        assert writer.publish(topic, payload, retain=True, wait=True)
    mirror = BrokerMirror(broker.url, Topics(FLEET)).start()
    try:
        mirror.want_seeds_for(keys)
        deadline = time.monotonic() + 120
        while len(mirror.messages()) < len(retained) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {m.topic for m in mirror.messages()} == set(retained)
    finally:
        mirror.close()
        writer.close()


def test_event_streams_are_capped_so_a_flood_of_clients_cannot_take_every_thread(served, monkeypatch):
    import hdus_edge.dashboard.server as server_module

    # No keep-alive write would ever notice the closed client: only the server's own check frees its slot.
    monkeypatch.setattr(server_module, "KEEPALIVE_S", 3600.0)
    _, _, server = served(max_streams=2)
    streams = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/events")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.fp.readline()  # the stream is open and served
        streams.append(conn)
    assert get(server, "/api/events")[0] == 503
    assert get(server, "/api/fleet.json")[0] == 200  # the rest still answers
    streams.pop().close()
    deadline = time.monotonic() + 60
    while stream_status(server) != 200:  # the closed stream's slot comes back
        assert time.monotonic() < deadline, "a closed client kept its stream slot"
        time.sleep(0.2)
    for conn in streams:
        conn.close()


def stream_status(server: DashboardServer) -> int:
    """The status of a new event stream (closed again at once; its body never ends)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/events")
    status = conn.getresponse().status
    conn.close()
    return status


def test_an_idle_fleet_is_not_rendered_again_until_the_broker_or_the_disk_changes():
    source = Source()
    renders = []
    stamp = {"value": 1}

    def render() -> dict:
        renders.append(1)
        return source.render()

    feed = FleetFeed(render, source.wait_change, stamp=lambda: stamp["value"], poll_s=0.02).start()
    try:
        time.sleep(0.3)  # about 15 polls, nothing changed
        assert len(renders) == 1  # the first one, at start
        stamp["value"] = 2  # e.g. a new evidence file
        deadline = time.monotonic() + 30
        while len(renders) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        source.change(devices=["x"])  # a broker message
        while feed.current()[0] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        feed.stop()


def test_the_dashboard_listens_on_ipv6_loopback_too(served):
    _, _, server = served(host="::1")
    assert server.url == f"http://[::1]:{server.port}/"
    conn = http.client.HTTPConnection("::1", server.port, timeout=10)
    conn.request("GET", "/api/fleet.json")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["fleet"] == "lab"
    conn.close()
