"""Shared fixtures: real MQTT brokers (embedded amqtt and Mosquitto) on free loopback ports.

- ``free_port``: an unused TCP port on 127.0.0.1 (nothing listens there).
- ``embedded_broker``: a fresh in-process amqtt broker per test; yields its URL.
- ``mosquitto_broker``: a fresh ``MosquittoProcess`` per test (anonymous, no persistence); use
  ``.url``, ``.stop()``, ``.start()``, ``.restart()``, ``.kill()``, ``.log_text()``.
- ``mosquitto_factory``: ``make(**MosquittoConfig fields)`` -> started ``MosquittoProcess`` (ACL,
  password file, TLS, persistence); all are stopped after the test.
- ``broker_url``: runs the test once per broker (``amqtt``, ``mosquitto``); yields a URL.
- ``message_collector``: ``make()`` -> a ``MessageCollector`` to pass as a transport's handler.
- ``_fixed_console_width`` (autouse): the CLI's rich consoles are CONSOLE_WIDTH columns wide in every
  test, in-process and in child processes (``COLUMNS``), whatever the terminal running pytest.

These never skip: without Mosquitto installed a test that asks for it fails with an install hint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hdus_edge.cli import output as cli_output
from hdus_edge.errors import TransportError
from hdus_edge.transport.broker import EmbeddedBroker
from hdus_edge.transport.mosquitto import (
    INSTALL_HINT,
    MosquittoConfig,
    MosquittoProcess,
)
from hdus_edge.transport.ports import free_port as _free_port


# Wide enough that no CLI line of a test wraps; fixed, so no test depends on the terminal's width.
CONSOLE_WIDTH = 200


@pytest.fixture(autouse=True)
def _fixed_console_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fix the CLI's console width: rich wraps human output at the terminal's (or 80) columns."""
    monkeypatch.setenv("COLUMNS", str(CONSOLE_WIDTH))  # child processes, and consoles made from now on
    for console in (cli_output.console, cli_output.err_console):
        # rich read COLUMNS once when these module-level consoles were made; _width is that reading
        monkeypatch.setattr(console, "_width", CONSOLE_WIDTH)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return _free_port()


@pytest.fixture
def embedded_broker() -> Iterator[str]:
    """A fresh in-process amqtt broker for this test; yields ``mqtt://127.0.0.1:PORT``."""
    broker = EmbeddedBroker().start()
    try:
        yield broker.url
    finally:
        broker.stop()


def _start_mosquitto(workdir: Path, config: MosquittoConfig | None = None) -> MosquittoProcess:
    try:
        return MosquittoProcess(workdir, config).start()
    except TransportError as exc:
        pytest.fail(f"cannot run Mosquitto for this test: {exc}\n{INSTALL_HINT}", pytrace=False)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A fresh Mosquitto process for this test (anonymous, no persistence, free port)."""
    proc = _start_mosquitto(tmp_path / "mosquitto")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoProcess]]:
    """``make(**options)``: start a Mosquitto with ``MosquittoConfig(**options)`` (port defaults to free)."""
    started: list[MosquittoProcess] = []

    def make(**options: object) -> MosquittoProcess:
        options.setdefault("port", _free_port())
        proc = _start_mosquitto(tmp_path / f"mosquitto-{len(started)}", MosquittoConfig(**options))  # type: ignore[arg-type]
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh broker; the test runs once with amqtt and once with Mosquitto."""
    if request.param == "amqtt":
        return request.getfixturevalue("embedded_broker")
    return request.getfixturevalue("mosquitto_broker").url


class MessageCollector:
    """A transport handler that records ``(topic, payload, retained)`` and lets tests wait for them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._cond:
            self.messages.append((topic, payload, retained))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes, bool]]:
        """Wait until at least ``count`` messages arrived; return them all (fails the test on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                pytest.fail(f"expected {count} message(s) within {timeout} s, got {self.messages!r}")
            return list(self.messages)

    def wait_topic(self, topic: str, timeout: float = 5.0) -> tuple[str, bytes, bool]:
        """Wait for the first message on ``topic`` and return it."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(m[0] == topic for m in self.messages), timeout)
            if not ok:
                pytest.fail(f"no message on {topic!r} within {timeout} s, got {self.messages!r}")
            return next(m for m in self.messages if m[0] == topic)

    def settle(self, quiet: float = 0.3) -> list[tuple[str, bytes, bool]]:
        """Return the messages once none arrived for ``quiet`` seconds (for "nothing else came")."""
        last = -1
        while True:
            with self._cond:
                if len(self.messages) == last:
                    return list(self.messages)
                last = len(self.messages)
            time.sleep(quiet)


@pytest.fixture
def message_collector() -> Callable[[], MessageCollector]:
    """``make()`` -> a new ``MessageCollector``."""
    return MessageCollector
