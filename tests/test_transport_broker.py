"""The embedded amqtt broker: start/stop, errors, and ``hdus-edge broker`` as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from hdus_edge.errors import TransportError
from hdus_edge.transport.broker import EmbeddedBroker
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.transport.ports import port_open

pytestmark = pytest.mark.integration


def test_context_manager_serves_then_releases_the_port(message_collector) -> None:
    # Prepare
    inbox = message_collector()

    # Execute
    with EmbeddedBroker() as broker:
        assert broker.running and broker.url == f"mqtt://127.0.0.1:{broker.port}"
        with MqttTransport(broker.url, "cm-dev", handler=inbox) as t:
            t.subscribe("cm/+")
            t.connect(timeout=5)
            assert t.publish("cm/a", b"hi")
            inbox.wait_for(1)
    broker.stop()  # idempotent

    # Assert
    assert inbox.messages == [("cm/a", b"hi", False)]
    assert not broker.running and not port_open("127.0.0.1", broker.port)


def test_port_in_use_is_a_transport_error(embedded_broker: str) -> None:
    # Prepare
    taken = int(embedded_broker.rsplit(":", 1)[1])

    # Execute / Assert
    with pytest.raises(TransportError, match=f"127.0.0.1:{taken}"):
        EmbeddedBroker(port=taken, start_timeout=3).start()


def test_presence_online_then_offline_on_clean_close(embedded_broker: str, message_collector) -> None:
    # Prepare
    inbox = message_collector()
    watcher = MqttTransport(embedded_broker, "watcher", handler=inbox)
    watcher.subscribe("hdus/v1/f/devices/+/presence")
    watcher.connect(timeout=5)
    dev = MqttTransport(embedded_broker, "dev-1", presence_topic="hdus/v1/f/devices/dev-1/presence")

    # Execute
    dev.connect(timeout=5)
    inbox.wait_for(1)
    dev.close()
    got = inbox.wait_for(2)
    watcher.close()

    # Assert
    assert [(t, p) for t, p, _ in got[:2]] == [
        ("hdus/v1/f/devices/dev-1/presence", b"online"),
        ("hdus/v1/f/devices/dev-1/presence", b"offline"),
    ]


def test_cli_broker_runs_until_sigterm(free_port: int) -> None:
    # Prepare
    with subprocess.Popen(
        [sys.executable, "-m", "hdus_edge", "broker", "--port", str(free_port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            # Execute: wait for the JSON object announcing the URL
            assert proc.stdout is not None
            text = ""
            deadline = time.monotonic() + 30
            while not text.rstrip().endswith("}") and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                text += line
            url = json.loads(text)["url"]
            with MqttTransport(url, "cli-dev") as t:
                t.connect(timeout=5)
                acked = t.publish("cli/x", b"1")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
        finally:
            if proc.poll() is None:  # a failed assertion must not leave it running
                proc.kill()

    # Assert
    assert url == f"mqtt://127.0.0.1:{free_port}"
    assert acked
    assert code == 0
    assert not port_open("127.0.0.1", free_port)


def test_cli_broker_port_taken_is_one_error_line(embedded_broker: str) -> None:
    # Execute
    port = embedded_broker.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "hdus_edge", "broker", "--port", port], capture_output=True, text=True, timeout=60
    )

    # Assert
    assert result.returncode == 1
    assert result.stderr.startswith("error: embedded broker on 127.0.0.1:" + port)
    assert "Traceback" not in result.stderr
