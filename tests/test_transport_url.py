"""Broker URL parsing: what we accept, and a clear BrokerURLError for everything else."""

from __future__ import annotations

import pytest

from hdus_edge.errors import BrokerURLError, ConfigError
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.transport.url import BrokerURL, parse_broker_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt://127.0.0.1:1883", BrokerURL("mqtt", "127.0.0.1", 1883)),
        ("mqtts://broker.example:8884", BrokerURL("mqtts", "broker.example", 8884)),
        ("mqtt://localhost", BrokerURL("mqtt", "localhost", 1883)),
        ("mqtts://localhost", BrokerURL("mqtts", "localhost", 8883)),
        ("MQTT://Host:1/", BrokerURL("mqtt", "host", 1)),
        ("mqtt://dev-1:s%40cret@10.0.0.2:1883", BrokerURL("mqtt", "10.0.0.2", 1883, "dev-1", "s@cret")),
        ("mqtt://admin@h:2000", BrokerURL("mqtt", "h", 2000, "admin", None)),
        ("mqtt://[::1]:1883", BrokerURL("mqtt", "::1", 1883)),
    ],
)
def test_parse_accepts_broker_urls(text: str, expected: BrokerURL) -> None:
    # Execute
    url = parse_broker_url(text)

    # Assert
    assert url == expected
    assert url.password == expected.password
    assert url.tls == (expected.scheme == "mqtts")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        ("127.0.0.1:1883", "no scheme"),
        ("http://127.0.0.1:1883", "scheme 'http'"),
        ("ws://h:80", "scheme 'ws'"),
        ("mqtt://h:99999", "invalid port"),
        ("mqtt://h:port", "invalid port"),
        ("mqtt://h:0", "port 0"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:1883/topic", "path"),
        ("mqtt://h:1883?x=1", "query"),
        ("mqtt://:pw@h:1883", "empty user"),
    ],
)
def test_parse_rejects_with_a_clear_message(text: str, names: str) -> None:
    # Execute
    with pytest.raises(BrokerURLError) as info:
        parse_broker_url(text)

    # Assert: a config error (exit code 2) whose message names what is wrong
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2
    assert names in str(info.value)


def test_password_never_shown() -> None:
    # Prepare
    url = parse_broker_url("mqtt://dev:topsecret@h:1883")

    # Execute
    shown = [str(url), repr(url), url.redacted()]
    with pytest.raises(BrokerURLError) as info:
        parse_broker_url("http://dev:topsecret@h:1883")

    # Assert
    assert all("topsecret" not in s for s in shown)
    assert "topsecret" not in str(info.value)
    assert str(url) == "mqtt://dev@h:1883"


def test_transport_rejects_bad_url_before_any_io() -> None:
    with pytest.raises(BrokerURLError):
        MqttTransport("tcp://127.0.0.1:1883", "dev-1")
