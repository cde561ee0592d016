"""MqttTransport against real brokers: every test runs on the embedded amqtt broker and on Mosquitto."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hdus_edge.errors import BrokerUnreachableError
from hdus_edge.transport.mqtt import MqttTransport

pytestmark = pytest.mark.integration

FAST = {"reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0}


@pytest.fixture
def transports() -> Iterator[Callable[..., MqttTransport]]:
    """``make(url, client_id, **kwargs)``; every transport made is closed after the test."""
    made: list[MqttTransport] = []

    def make(url: str, client_id: str, **kwargs: object) -> MqttTransport:
        t = MqttTransport(url, client_id, **{**FAST, **kwargs})  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def test_qos1_round_trip(broker_url: str, transports, message_collector) -> None:
    # Prepare
    inbox = message_collector()
    sub = transports(broker_url, "dev-sub", handler=inbox)
    sub.subscribe(["hdus/v1/f/seeds/dev-sub/+"])
    sub.connect(timeout=5)
    pub = transports(broker_url, "dev-pub")
    pub.connect(timeout=5)
    payload = bytes(range(256)) * 4  # binary, every byte value

    # Execute
    acked = pub.publish("hdus/v1/f/seeds/dev-sub/dev-pub", payload)
    pub.publish("hdus/v1/f/seeds/someone-else/dev-pub", b"not for dev-sub")
    pub.publish("hdus/v1/f/seeds/dev-sub/dev-pub", b"second")

    # Assert: exact bytes, in order, and the other device's topic never arrives
    assert acked is True
    got = inbox.wait_for(2)
    assert got[:2] == [
        ("hdus/v1/f/seeds/dev-sub/dev-pub", payload, False),
        ("hdus/v1/f/seeds/dev-sub/dev-pub", b"second", False),
    ]
    assert pub.pending == 0
    assert sub.connected and sub.connect_count == 1


def test_seed_sized_message_round_trip(broker_url: str, transports, message_collector) -> None:
    # Prepare: seeds are up to 8 MiB
    inbox = message_collector()
    sub = transports(broker_url, "big-sub", handler=inbox)
    sub.subscribe("big/+")
    sub.connect(timeout=5)
    pub = transports(broker_url, "big-pub")
    pub.connect(timeout=5)
    blob = (bytes(range(251)) * (8 * 1024 * 1024 // 251 + 1))[: 8 * 1024 * 1024]

    # Execute
    acked = pub.publish("big/seed", blob, retain=True, timeout=30)

    # Assert
    assert acked is True
    topic, payload, _ = inbox.wait_for(1, timeout=30)[0]
    assert topic == "big/seed" and len(payload) == len(blob) and payload == blob


def test_retained_message_reaches_late_subscriber_and_empty_clears_it(
    broker_url: str, transports, message_collector
) -> None:
    # Prepare
    pub = transports(broker_url, "ret-pub")
    pub.connect(timeout=5)
    assert pub.publish("ret/seeds/a", b"seed-a", retain=True)

    # Execute 1: a subscriber that arrives later gets the retained copy, flagged retained
    early = message_collector()
    late = transports(broker_url, "ret-late", handler=early)
    late.subscribe("ret/seeds/+")
    late.connect(timeout=5)

    # Assert 1
    assert early.wait_for(1) == [("ret/seeds/a", b"seed-a", True)]

    # Execute 2: clear it (empty retained), then retain a control message on a sibling topic
    assert pub.publish("ret/seeds/a", b"", retain=True)
    assert pub.publish("ret/seeds/b", b"seed-b", retain=True)
    after = message_collector()
    later = transports(broker_url, "ret-later", handler=after)
    later.subscribe("ret/seeds/+")
    later.connect(timeout=5)

    # Assert 2: only the control message is retained now; nothing for the cleared topic.
    # (amqtt 0.12 also sends a new client the retained messages of other clients' filters, so
    # seed-b may come twice: at-least-once allows it.)
    after.wait_topic("ret/seeds/b")
    assert set(after.settle()) == {("ret/seeds/b", b"seed-b", True)}


def test_persistent_session_gets_messages_sent_while_away(broker_url: str, transports, message_collector) -> None:
    # Prepare: the device subscribes once, then goes offline cleanly
    away = transports(broker_url, "dev-away")
    away.subscribe("hdus/v1/f/unlearn/+")
    away.connect(timeout=5)
    away.close()
    pub = transports(broker_url, "admin")
    pub.connect(timeout=5)

    # Execute: orders published while it is offline; then it comes back with the same client id
    for i in range(3):
        assert pub.publish(f"hdus/v1/f/unlearn/dev-{i}", f"order-{i}".encode())
    inbox = message_collector()
    back = transports(broker_url, "dev-away", handler=inbox)
    back.subscribe("hdus/v1/f/unlearn/+")  # a restarted agent declares its filters again
    back.connect(timeout=5)

    # Assert: all three, in order. They were not retained, so only the broker's stored session can
    # have kept them. (amqtt flags queued messages as retained; Mosquitto does not.)
    got = inbox.wait_for(3)
    assert [(t, p) for t, p, _ in got[:3]] == [(f"hdus/v1/f/unlearn/dev-{i}", f"order-{i}".encode()) for i in range(3)]


def test_handler_exception_does_not_stop_later_messages(
    broker_url: str, transports, message_collector, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a handler that fails on the first message only
    inbox = message_collector()

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        inbox(topic, payload, retained)

    sub = transports(broker_url, "fragile", handler=handler)
    sub.subscribe("x/#")
    sub.connect(timeout=5)
    pub = transports(broker_url, "x-pub")
    pub.connect(timeout=5)

    # Execute
    with caplog.at_level(logging.ERROR, logger="hdus_edge.transport.mqtt"):
        pub.publish("x/1", b"boom")
        pub.publish("x/2", b"fine")
        pub.publish("x/3", b"also fine")
        got = inbox.wait_for(2)

    # Assert: later messages handled, the error logged with its traceback, still connected
    assert [p for _, p, _ in got] == [b"fine", b"also fine"]
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    assert sub.connected


_CRASHING_PUBLISHER = textwrap.dedent(
    """
    import os, sys
    from hdus_edge.transport.mqtt import MqttTransport
    url, outbox = sys.argv[1], sys.argv[2]
    t = MqttTransport(url, "crashy-pub", outbox_dir=outbox)
    for i in range(3):
        t.publish(f"ob/{i}", f"m{i}".encode(), wait=False)
    os._exit(9)  # crash: no close(), no connect, nothing flushed by us
    """
)


def test_outbox_republishes_after_crash(broker_url: str, transports, message_collector, tmp_path: Path) -> None:
    # Prepare: a subscriber, and a publisher process that queues 3 messages and dies before sending
    inbox = message_collector()
    sub = transports(broker_url, "ob-sub", handler=inbox)
    sub.subscribe("ob/+")
    sub.connect(timeout=5)
    outbox = tmp_path / "outbox"
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_PUBLISHER, broker_url, str(outbox)], timeout=60)
    assert crashed.returncode == 9
    assert inbox.settle(0.2) == []

    # Execute: the device restarts with the same outbox
    again = transports(broker_url, "crashy-pub", outbox_dir=outbox)
    assert again.pending == 3
    again.connect(timeout=5)

    # Assert: delivered in order, and confirmed messages left the outbox for good
    got = inbox.wait_for(3)
    assert [(t, p) for t, p, _ in got] == [("ob/0", b"m0"), ("ob/1", b"m1"), ("ob/2", b"m2")]
    assert again.flush(5) and again.pending == 0
    again.close()
    third = transports(broker_url, "crashy-pub", outbox_dir=outbox)
    assert third.pending == 0


def test_publish_before_connect_is_sent_once(broker_url: str, transports, message_collector, tmp_path: Path) -> None:
    # Prepare
    inbox = message_collector()
    sub = transports(broker_url, "once-sub", handler=inbox)
    sub.subscribe("once/+")
    sub.connect(timeout=5)
    pub = transports(broker_url, "once-pub", outbox_dir=tmp_path / "ob")

    # Execute: queued before connect(); connect() must not replay it a second time
    assert pub.publish("once/a", b"a", wait=False) is False
    pub.connect(timeout=5)

    # Assert
    assert pub.flush(5)
    inbox.wait_for(1)
    assert inbox.settle() == [("once/a", b"a", False)]


def test_unreachable_broker_fails_fast(free_port: int) -> None:
    # Prepare: nothing listens on free_port
    t = MqttTransport(f"mqtt://127.0.0.1:{free_port}", "lonely", reconnect_min_delay=0.1, reconnect_max_delay=0.5)

    # Execute
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as info:
        t.connect(timeout=2.5, max_attempts=3)
    took = time.monotonic() - started
    t.close()

    # Assert: bounded, and the message says where and why
    assert took < 3.0
    assert f"127.0.0.1:{free_port}" in str(info.value)
    assert "3 attempt" in str(info.value) and "refused" in str(info.value).lower()


def test_handler_can_publish_and_wait_for_its_puback(broker_url: str, transports, message_collector) -> None:
    # Prepare: the agent's pattern: receive an order, answer with a receipt, wait for the PUBACK
    results: list[bool] = []
    receipts = message_collector()
    responder: list[MqttTransport] = []

    def answer(topic: str, payload: bytes, retained: bool) -> None:
        results.append(responder[0].publish("receipts/r1/dev-b", b"done:" + payload, wait=True, timeout=5))

    dev_b = transports(broker_url, "dev-b", handler=answer)
    responder.append(dev_b)
    dev_b.subscribe("orders/+")
    dev_b.connect(timeout=5)
    admin = transports(broker_url, "admin", handler=receipts)
    admin.subscribe("receipts/+/+")
    admin.connect(timeout=5)

    # Execute
    admin.publish("orders/r1", b"forget-x")

    # Assert: no deadlock between the handler thread and the PUBACK bookkeeping
    assert receipts.wait_for(1)[0][:2] == ("receipts/r1/dev-b", b"done:forget-x")
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results == [True]


@pytest.mark.parametrize("nodelay", [True, False])
def test_tcp_nodelay_is_set_on_the_socket(embedded_broker: str, transports, nodelay: bool) -> None:
    # Prepare / Execute: Nagle + delayed ACK cost ~44 ms per QoS 1 hop where we measured it
    import socket

    t = transports(embedded_broker, f"nagle-{nodelay}", tcp_nodelay=nodelay)
    t.connect(timeout=5)

    # Assert (reads paho's socket: the option is the whole point of the hook)
    sock = t._client.socket()
    assert sock is not None
    assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
