"""QoS 1 flows through a loopback TCP proxy that the test cuts, takes down, stalls and restores:
every message published is delivered (duplicates allowed, losses never), on amqtt and Mosquitto."""

from __future__ import annotations

import random
import threading
import time

from hdus_edge.lab.proxy import TcpProxy
from hdus_edge.transport.mqtt import MqttTransport

TOPIC = "rel/flow"


def _numbers(collector) -> list[int]:
    return [int(p) for t, p, _ in list(collector.messages) if t == TOPIC]


def _wait_all(collector, n: int, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = set(_numbers(collector))
        if got >= set(range(n)):
            return got
        time.sleep(0.05)
    return set(_numbers(collector))


def test_publisher_behind_a_cut_proxy_loses_nothing(broker_url, message_collector, tmp_path):
    # Prepare: the subscriber talks to the broker directly, the publisher through the proxy.
    collector = message_collector()
    sub = MqttTransport(broker_url, "rel-sub", handler=collector)
    sub.subscribe([TOPIC])
    sub.connect()
    proxy = TcpProxy.in_front_of(broker_url).start()
    # keepalive 2 s: a reconnect whose CONNACK never comes (amqtt 0.12, now and then, while the cut
    # session is still being torn down) is dropped and retried in ~2 s, not 30 s.
    pub = MqttTransport(proxy.url, "rel-pub", outbox_dir=tmp_path / "outbox", keepalive=2,
                        reconnect_min_delay=0.1, reconnect_max_delay=0.5)
    pub.connect()
    try:
        # Execute: 300 messages, the link cut three times while they flow.
        n = 300
        for k in range(n):
            pub.publish(TOPIC, str(k).encode(), wait=False)
            if k in (50, 150, 250):
                # Back from the previous cut (messages kept flowing): a condition, with room for a
                # busy machine, not a fixed pause.
                assert pub.wait_connected(30), f"no reconnect after cut {proxy.stats.cuts}: {proxy.stats}"
                assert proxy.cut() >= 1
        # Assert: every message arrives; duplicates are allowed (at-least-once), losses are not.
        assert pub.flush(timeout=60), f"{pub.pending} unacknowledged; connected={pub.connected}, {proxy.stats}"
        got = _wait_all(collector, n, 30)
        assert got == set(range(n)), f"lost {sorted(set(range(n)) - got)[:10]}"
        assert proxy.stats.cuts >= 3 and pub.connect_count >= 2
        assert pub.pending == 0
    finally:
        pub.close()
        sub.close()
        proxy.stop()


def test_subscriber_behind_a_downed_proxy_gets_what_was_queued(broker_url, message_collector):
    # Prepare: the subscriber (persistent session) behind the proxy.
    collector = message_collector()
    proxy = TcpProxy.in_front_of(broker_url).start()
    sub = MqttTransport(proxy.url, "rel-sub2", handler=collector, reconnect_min_delay=0.1, reconnect_max_delay=0.5)
    sub.subscribe([TOPIC])
    sub.connect()
    pub = MqttTransport(broker_url, "rel-pub2")
    pub.connect()
    try:
        for k in range(20):
            assert pub.publish(TOPIC, str(k).encode())
        assert _wait_all(collector, 20, 10) == set(range(20))
        # Execute: the link goes down (reconnects are refused) while 80 more are published.
        proxy.down()
        assert _wait_connected_state(sub, False, 5)
        for k in range(20, 100):
            assert pub.publish(TOPIC, str(k).encode())
        time.sleep(0.5)
        assert proxy.stats.refused >= 1 or proxy.open_connections == 0
        proxy.restore()
        # Assert: the broker kept them for the persistent session.
        assert _wait_all(collector, 100, 20) == set(range(100))
    finally:
        pub.close()
        sub.close()
        proxy.stop()


def test_stalled_link_is_noticed_by_keepalive_and_recovers(embedded_broker, message_collector):
    # Prepare: a publisher with a 1 s keepalive behind the proxy.
    collector = message_collector()
    sub = MqttTransport(embedded_broker, "rel-sub3", handler=collector)
    sub.subscribe([TOPIC])
    sub.connect()
    proxy = TcpProxy.in_front_of(embedded_broker).start()
    pub = MqttTransport(proxy.url, "rel-pub3", keepalive=1, reconnect_min_delay=0.1, reconnect_max_delay=0.5)
    pub.connect()
    try:
        # Execute: stall the link (nothing forwarded, nothing closed), publish, then restore.
        proxy.stall()
        assert pub.publish(TOPIC, b"0", wait=True, timeout=0.5) is False
        assert _wait_connected_state(pub, False, 10), "keepalive did not notice the stalled link"
        proxy.cut()  # the stalled connections are dead anyway; drop them like a router would
        proxy.restore()
        # Assert: the message goes out after the reconnect.
        assert pub.wait_connected(10)
        assert pub.flush(timeout=10)
        assert _wait_all(collector, 1, 10) == {0}
    finally:
        pub.close()
        sub.close()
        proxy.stop()


def test_cut_one_picks_deterministically_and_counts():
    # Prepare: three clients behind one proxy to an embedded broker.
    from hdus_edge.transport.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        proxy = TcpProxy.in_front_of(broker.url).start()
        clients = [MqttTransport(proxy.url, f"rel-c{k}", reconnect_min_delay=0.1) for k in range(3)]
        try:
            for c in clients:
                c.connect()
            assert proxy.open_connections == 3
            # Execute
            assert proxy.cut_one(random.Random(0))
            # Assert: one cut, and the client reconnects through the proxy.
            assert proxy.stats.cuts == 1
            deadline = time.monotonic() + 10
            while sum(c.connect_count for c in clients) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(c.connect_count for c in clients) == 4
        finally:
            for c in clients:
                c.close()
            proxy.stop()
    time.sleep(0.2)  # pump threads exit once their sockets are closed
    assert not [t for t in threading.enumerate() if t.name.endswith(f"-{proxy.port}") and t.name.startswith("hdus-proxy")]


def _wait_connected_state(t: MqttTransport, want: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.connected == want:
            return True
        time.sleep(0.05)
    return t.connected == want


# --- shaped links (the WAN profile of the scale bench) ------------------------------------------


def _echo_server():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(65536), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _round_trips(proxy, messages: list[bytes]) -> tuple[bytes, list[float]]:
    import socket

    got, times = b"", []
    with socket.create_connection((proxy.host, proxy.port)) as c:
        for m in messages:
            t0 = time.monotonic()
            c.sendall(m)
            want = len(got) + len(m)
            while len(got) < want:
                got += c.recv(65536)
            times.append(time.monotonic() - t0)
    return got, times


def test_a_shaped_link_delays_each_direction_and_keeps_bytes_in_order():
    from hdus_edge.lab.proxy import LinkShape

    srv = _echo_server()
    shape = LinkShape(delay_s=0.05, jitter_s=0.01, seed=1)
    with TcpProxy("127.0.0.1", srv.getsockname()[1], shape=shape) as proxy:
        messages = [f"<{k}>".encode() * (k + 1) for k in range(20)]
        got, times = _round_trips(proxy, messages)
    srv.close()
    assert got == b"".join(messages)  # nothing lost, nothing reordered
    # One-way delay at least delay - jitter each way: a lower bound, which a busy machine cannot break.
    assert min(times) >= 2 * (shape.delay_s - shape.jitter_s)


def test_loss_on_a_shaped_link_costs_a_retransmission_not_bytes():
    from hdus_edge.lab.proxy import LinkShape

    srv = _echo_server()
    shape = LinkShape(delay_s=0.0, loss=0.3, retransmit_s=0.2, seed=7)
    with TcpProxy("127.0.0.1", srv.getsockname()[1], shape=shape) as proxy:
        messages = [bytes([k]) * 100 for k in range(30)]
        got, times = _round_trips(proxy, messages)
    srv.close()
    assert got == b"".join(messages)
    slow = sum(1 for t in times if t >= shape.retransmit_s)
    assert proxy.stats.lost >= 1 and slow >= 1  # some chunks waited a retransmission timeout...
    assert slow <= proxy.stats.lost  # ...and only those (a chunk waits at most once per loss)


def test_an_unshaped_proxy_loses_nothing_and_counts_no_loss():
    srv = _echo_server()
    with TcpProxy("127.0.0.1", srv.getsockname()[1]) as proxy:
        got, _ = _round_trips(proxy, [b"x" * 1000] * 5)
    srv.close()
    assert got == b"x" * 5000 and proxy.stats.lost == 0


def test_link_shape_rejects_nonsense():
    import pytest

    from hdus_edge.lab.proxy import LinkShape

    for bad in ({"delay_s": -1}, {"delay_s": 0.01, "jitter_s": 0.02}, {"loss": 1.0}):
        with pytest.raises(ValueError):
            LinkShape(**bad)


# --- a flapping link (the scale bench's flap profile) ----------------------------------------------


def test_flap_schedule_is_seeded_bounded_and_leaves_the_delays_alone():
    from hdus_edge.lab.proxy import LinkShape, flap_schedule

    shape = LinkShape(flap_every_s=4.0, flap_down_s=2.0, seed=3)
    outages = flap_schedule(shape, 120.0)
    assert outages == flap_schedule(LinkShape(flap_every_s=4.0, flap_down_s=2.0, seed=3), 120.0)  # replayable
    assert outages != flap_schedule(LinkShape(flap_every_s=4.0, flap_down_s=2.0, seed=4), 120.0)  # per seed
    assert len(outages) >= 10 and all(down < 120.0 for down, _ in outages)
    previous_up = 0.0
    for down, up in outages:  # up 2-6 s, then down 1-3 s, never overlapping
        assert 2.0 <= down - previous_up <= 6.0 and 1.0 <= up - down <= 3.0
        previous_up = up
    assert flap_schedule(LinkShape(delay_s=0.01), 120.0) == []  # a link that does not flap


def test_a_flapping_link_cuts_refuses_and_comes_back():
    import socket

    from hdus_edge.lab.proxy import LinkShape

    srv = _echo_server()
    shape = LinkShape(flap_every_s=0.3, flap_down_s=0.3, seed=0)
    with TcpProxy("127.0.0.1", srv.getsockname()[1], shape=shape) as proxy:
        # Prepare: a connection through the link while it is up.
        c = socket.create_connection((proxy.host, proxy.port))
        c.settimeout(30)
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        # Execute: the first outage closes it.
        assert c.recv(1) == b""
        c.close()
        # Assert: outages keep coming (counted), and between them the link carries bytes again.
        deadline = time.monotonic() + 30
        while proxy.stats.flaps < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.stats.flaps >= 3 and proxy.stats.cuts >= 1
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((proxy.host, proxy.port), timeout=5) as c:
                    c.sendall(b"back")
                    if c.recv(4) == b"back":
                        break
            except OSError:
                pass
            time.sleep(0.05)  # down now (closed at once, or cut mid-trip): try again once it is up
        else:
            raise AssertionError("the flapping link never carried bytes again")
    srv.close()


def test_flapping_needs_both_periods():
    import pytest

    from hdus_edge.lab.proxy import LinkShape

    for bad in ({"flap_every_s": 1.0}, {"flap_down_s": 1.0}, {"flap_every_s": -1.0, "flap_down_s": 1.0}):
        with pytest.raises(ValueError):
            LinkShape(**bad)
