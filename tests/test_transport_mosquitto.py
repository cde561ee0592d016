"""Mosquitto: generated config, ACL, passwords, TLS, restarts, and what MqttTransport does with them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hdus_edge.errors import BrokerRefusedError, BrokerUnreachableError, TransportError
from hdus_edge.transport import certs
from hdus_edge.transport.mosquitto import (
    MosquittoConfig,
    MosquittoProcess,
    MosquittoTls,
    acl_rules,
    render_config,
    write_acl_file,
    write_password_file,
)
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.ports import free_port, port_open

FAST = {"reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5}
FLEET = "f1"
SEEDS = f"hdus/v1/{FLEET}/seeds"


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


# --- config generation (no process) ------------------------------------------------------


def test_render_config_has_listeners_limits_and_persistence(tmp_path: Path) -> None:
    # Prepare
    tls = MosquittoTls(port=8884, ca_file=tmp_path / "ca.crt", cert_file=tmp_path / "s.crt", key_file=tmp_path / "s.key")
    config = MosquittoConfig(
        port=1884, persistence=True, max_queued_messages=77, message_size_limit=5000,
        acl_file=tmp_path / "acl", password_file=tmp_path / "pw", allow_anonymous=False, tls=tls,
    )

    # Execute
    text = render_config(config, persistence_dir=tmp_path / "data")
    lines = text.splitlines()

    # Assert
    for expected in [
        "listener 1884 127.0.0.1", "listener 8884 127.0.0.1", "max_queued_messages 77",
        "message_size_limit 5000", "persistence true", f"persistence_location {tmp_path / 'data'}/",
        f"acl_file {tmp_path / 'acl'}", f"password_file {tmp_path / 'pw'}", "allow_anonymous false",
        "require_certificate true", "use_identity_as_username true", f"cafile {tmp_path / 'ca.crt'}",
        "set_tcp_nodelay true",
    ]:
        assert expected in lines, expected
    # the TLS options belong to the TLS listener, i.e. come after its 'listener' line
    assert lines.index("require_certificate true") > lines.index("listener 8884 127.0.0.1")
    assert ("user root" in lines) == (os.geteuid() == 0)


def test_acl_rules_bind_writes_to_the_senders_own_id() -> None:
    # Execute
    rules = acl_rules(FLEET, admins=("admin",)).splitlines()

    # Assert
    assert f"pattern write {SEEDS}/+/%u" in rules
    assert f"pattern read {SEEDS}/%u/+" in rules
    assert "user admin" in rules and f"topic readwrite hdus/v1/{FLEET}/#" in rules
    assert not any(r.startswith("pattern write") and "%u" not in r for r in rules)
    with pytest.raises(ValueError):
        acl_rules("fleet/with/slash")


def test_password_file_is_hashed(tmp_path: Path) -> None:
    # Execute
    path = write_password_file(tmp_path / "pw", {"devA": "alpha-secret", "devB": "beta-secret"})

    # Assert
    text = path.read_text()
    assert "alpha-secret" not in text and "beta-secret" not in text
    assert [line.split(":", 1)[0] for line in text.splitlines()] == ["devA", "devB"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# --- a real Mosquitto ----------------------------------------------------------------------


@pytest.mark.integration
def test_reconnect_after_restart_restores_subscriptions(
    mosquitto_broker: MosquittoProcess, transports, message_collector
) -> None:
    # Prepare: no persistence, so the restarted broker forgets every session and subscription
    inbox = message_collector()
    sub = transports(mosquitto_broker.url, "dev-r", handler=inbox)
    sub.subscribe("r/+")
    sub.connect(timeout=5)
    pub = transports(mosquitto_broker.url, "pub-r")
    pub.connect(timeout=5)

    # Execute: broker down; a publish meanwhile waits in the outbox; broker up on the same port.
    # The subscriber queues it itself: on one connection, paho sends the re-SUBSCRIBE (on_connect)
    # before the queued PUBLISH, so it must come back to it. (From another client it could reach
    # the broker before the subscriber is back, and a broker without persistence would drop it.)
    mosquitto_broker.stop()
    deadline = time.monotonic() + 5
    while (sub.connected or pub.connected) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sub.connected and not pub.connected
    assert sub.publish("r/while-down", b"queued", wait=False) is False
    assert sub.pending == 1
    mosquitto_broker.start()

    # Assert: both reconnect on their own, the subscription is back, the queued message went out
    assert sub.wait_connected(5) and pub.wait_connected(5)
    assert sub.connect_count == 2
    assert pub.publish("r/after", b"fresh")
    got = inbox.wait_for(2)
    assert {(t, p) for t, p, _ in got} == {("r/while-down", b"queued"), ("r/after", b"fresh")}
    assert sub.flush(5) and sub.pending == 0


@pytest.mark.integration
def test_acl_device_cannot_publish_under_another_devices_seed_topic(
    mosquitto_factory, transports, message_collector, tmp_path: Path
) -> None:
    # Prepare
    users = {"devA": "pw-a", "devB": "pw-b", "admin": "pw-admin"}
    broker = mosquitto_factory(
        allow_anonymous=False,
        password_file=write_password_file(tmp_path / "passwd", users),
        acl_file=write_acl_file(tmp_path / "acl", FLEET),
        log_types=("all",),
    )
    inbox = message_collector()
    watcher = transports(broker.url, "admin", username="admin", password="pw-admin", handler=inbox)
    watcher.subscribe(f"{SEEDS}/#")
    watcher.connect(timeout=5)
    dev_a = transports(broker.url, "devA", username="devA", password="pw-a")
    dev_a.connect(timeout=5)

    # Execute: A forges a seed "from B", then publishes its own
    dev_a.publish(f"{SEEDS}/devC/devB", b"forged by A")
    dev_a.publish(f"{SEEDS}/devC/devA", b"genuine A")

    # Assert: only the genuine one arrives (same connection, so the forged one would have come first)
    inbox.wait_topic(f"{SEEDS}/devC/devA")
    assert inbox.settle(0.2) == [(f"{SEEDS}/devC/devA", b"genuine A", False)]
    assert "Denied PUBLISH from devA" in broker.log_text()


@pytest.mark.integration
def test_wrong_password_is_refused_not_retried(mosquitto_factory, tmp_path: Path) -> None:
    # Prepare
    broker = mosquitto_factory(
        allow_anonymous=False, password_file=write_password_file(tmp_path / "passwd", {"devA": "right"})
    )
    t = MqttTransport(broker.url, "devA", username="devA", password="wrong", **FAST)

    # Execute
    started = time.monotonic()
    with pytest.raises(BrokerRefusedError) as info:
        t.connect(timeout=5, max_attempts=10)
    t.close()

    # Assert: refused at the first CONNACK, not after 10 attempts
    assert time.monotonic() - started < 2.0
    assert "not authorized" in str(info.value).lower() or "bad user" in str(info.value).lower()


@pytest.mark.integration
def test_tls_listener_requires_a_certificate_from_our_ca(
    mosquitto_factory, transports, message_collector, tmp_path: Path
) -> None:
    # Prepare: CA, server cert for 127.0.0.1, a client cert for devA; and a stranger CA
    pki = tmp_path / "pki"
    ca = certs.make_ca(pki)
    server = certs.make_server_cert(ca, pki)
    dev_a = certs.make_client_cert(ca, pki, "devA")
    stranger_ca = certs.make_ca(tmp_path / "other", common_name="not ours")
    stranger = certs.make_client_cert(stranger_ca, tmp_path / "other", "devA")
    tls = MosquittoTls(port=free_port(), ca_file=ca.cert, cert_file=server.cert, key_file=server.key)
    broker = mosquitto_factory(tls=tls)
    inbox = message_collector()

    # Execute 1: a certified client round-trips over TLS
    good = transports(broker.tls_url, "devA", tls=TlsFiles(ca.cert, dev_a.cert, dev_a.key), handler=inbox)
    good.subscribe("tls/+")
    good.connect(timeout=5)
    assert good.publish("tls/x", b"over tls")
    assert inbox.wait_for(1) == [("tls/x", b"over tls", False)]

    # Execute 2 / Assert: no certificate, or one from another CA: refused, quickly
    for label, files in [("no cert", TlsFiles(ca.cert)), ("foreign CA", TlsFiles(ca.cert, stranger.cert, stranger.key))]:
        bad = transports(broker.tls_url, f"intruder-{label.replace(' ', '-')}", tls=files)
        started = time.monotonic()
        with pytest.raises(BrokerUnreachableError) as info:
            bad.connect(timeout=4, max_attempts=2)
        assert time.monotonic() - started < 3.0, label
        assert "tls" in str(info.value).lower() or "certificate" in str(info.value).lower(), label


@pytest.mark.integration
def test_oversized_message_is_acknowledged_but_dropped(mosquitto_factory, transports, message_collector) -> None:
    # Prepare: why MQTT acks do not prove delivery (the protocol layer adds receipts)
    broker = mosquitto_factory(message_size_limit=1024)
    inbox = message_collector()
    sub = transports(broker.url, "size-sub", handler=inbox)
    sub.subscribe("size/+")
    sub.connect(timeout=5)
    pub = transports(broker.url, "size-pub")
    pub.connect(timeout=5)

    # Execute
    acked_big = pub.publish("size/big", b"x" * 2048)
    acked_small = pub.publish("size/small", b"y" * 100)

    # Assert
    assert acked_big and acked_small
    inbox.wait_topic("size/small")
    assert inbox.settle(0.2) == [("size/small", b"y" * 100, False)]


_CRASHING_SUBSCRIBER = textwrap.dedent(
    """
    import os, sys
    from hdus_edge.transport.mqtt import MqttTransport
    def handler(topic, payload, retained):
        print("handling", payload.decode(), flush=True)
        os._exit(3)  # crash inside the handler: the message was never acknowledged
    t = MqttTransport(sys.argv[1], "crash-sub", handler=handler)
    t.subscribe("order/+")
    t.connect(timeout=5)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.integration
def test_message_is_redelivered_when_the_handler_crashed(
    mosquitto_broker: MosquittoProcess, transports, message_collector
) -> None:
    # Prepare: a device process that dies while handling its first message
    with subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SUBSCRIBER, mosquitto_broker.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            pub = transports(mosquitto_broker.url, "admin")
            pub.connect(timeout=5)

            # Execute
            assert pub.publish("order/1", b"forget devX")
            assert proc.stdout.readline().strip() == "handling forget devX"
            assert proc.wait(10) == 3
        finally:
            if proc.poll() is None:  # a failed assertion must not leave it running
                proc.kill()

    # Assert: the restarted device gets the order again (manual PUBACK after the handler)
    inbox = message_collector()
    again = transports(mosquitto_broker.url, "crash-sub", handler=inbox)
    again.subscribe("order/+")
    again.connect(timeout=5)
    assert inbox.wait_for(1)[0][:2] == ("order/1", b"forget devX")


@pytest.mark.integration
def test_persistence_keeps_sessions_and_retained_across_restart(
    mosquitto_factory, transports, message_collector
) -> None:
    # Prepare
    broker = mosquitto_factory(persistence=True)
    away = transports(broker.url, "dev-p")
    away.subscribe("p/+")
    away.connect(timeout=5)
    away.close()
    pub = transports(broker.url, "pub-p")
    pub.connect(timeout=5)
    assert pub.publish("p/queued", b"for dev-p")
    assert pub.publish("p/seed", b"retained seed", retain=True)

    # Execute: clean restart (Mosquitto saves its db on SIGTERM)
    broker.restart()
    inbox = message_collector()
    back = transports(broker.url, "dev-p", handler=inbox)
    back.subscribe("p/+")
    back.connect(timeout=5)

    # Assert: the queued message and the retained seed both survived
    inbox.wait_for(2)
    assert {(t, p) for t, p, _ in inbox.settle(0.2)} == {("p/queued", b"for dev-p"), ("p/seed", b"retained seed")}


@pytest.mark.integration
def test_process_start_failure_names_the_problem(tmp_path: Path, mosquitto_broker: MosquittoProcess) -> None:
    # Prepare: a second broker on a port that is taken
    clash = MosquittoProcess(tmp_path / "clash", MosquittoConfig(port=mosquitto_broker.port), start_timeout=3)

    # Execute
    with pytest.raises(TransportError) as info:
        clash.start()

    # Assert: the error carries Mosquitto's own log line; the first broker is untouched
    assert "mosquitto did not start" in str(info.value)
    assert "address already in use" in str(info.value).lower()
    assert not clash.running and mosquitto_broker.running


@pytest.mark.integration
def test_kill_and_start_again(mosquitto_broker: MosquittoProcess) -> None:
    # Execute
    pid = mosquitto_broker.pid
    mosquitto_broker.kill()
    closed = not port_open("127.0.0.1", mosquitto_broker.port)
    mosquitto_broker.start()

    # Assert
    assert closed
    assert mosquitto_broker.running and mosquitto_broker.pid != pid
    assert port_open("127.0.0.1", mosquitto_broker.port)


@pytest.mark.integration
def test_close_while_broker_is_down_is_prompt_and_keeps_the_outbox(
    mosquitto_broker: MosquittoProcess, tmp_path: Path
) -> None:
    # Prepare
    t = MqttTransport(mosquitto_broker.url, "dev-down", outbox_dir=tmp_path / "ob",
                      presence_topic="hdus/v1/f1/devices/dev-down/presence", **FAST)
    t.connect(timeout=5)
    mosquitto_broker.stop()
    t.publish("down/x", b"unsent", wait=False)

    # Execute
    started = time.monotonic()
    t.close()

    # Assert
    assert time.monotonic() - started < 3.0
    again = MqttTransport(mosquitto_broker.url, "dev-down", outbox_dir=tmp_path / "ob")
    assert again.pending == 1
    again.close()
