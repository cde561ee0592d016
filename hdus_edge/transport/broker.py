"""``EmbeddedBroker``: an amqtt broker in its own thread and asyncio loop, for demos and tests.

amqtt 0.12.1, as configured here:

- Anonymous clients are allowed **and keep persistent sessions.** amqtt's stock
  ``AnonymousAuthPlugin`` marks every client it admits as anonymous, and amqtt then neither queues
  messages for an offline anonymous session nor keeps it; so with the stock plugin,
  clean_session=False does nothing. ``OpenAuthPlugin`` below admits everyone without that mark.
- No ``$SYS`` publisher and no packet-logging plugins (overhead, and noise in our logs).
- Message size: amqtt has no size limit (it reads whatever length the packet header announces, up
  to MQTT's 256 MiB), so 8 MiB seeds pass. The embedded broker is for trusted loopback use; fleets
  facing untrusted clients use Mosquitto with ``message_size_limit`` (see ``mosquitto.py``).
- Everything is in memory: sessions, queued and retained messages are gone after ``stop()``.

Known amqtt 0.12.1 behaviours that the transport copes with: a resumed session receives the retained
messages of every filter any client subscribed to (``MqttTransport`` drops those matching none of
its own filters), and messages queued for an offline session arrive with the retain flag set.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hdus_edge.errors import TransportError
from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)

try:  # amqtt is a dependency, but keep the import error readable.
    from amqtt.plugins.base import BaseAuthPlugin
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError("the embedded broker needs amqtt (pip install 'amqtt>=0.11')") from exc


class OpenAuthPlugin(BaseAuthPlugin):
    """Admit every client, without marking it anonymous, so persistent sessions work."""

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Any) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """The amqtt config dict for one plain TCP listener on ``host:port``."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{OpenAuthPlugin.__module__}.{OpenAuthPlugin.__qualname__}": {}},
        # Keep disconnected persistent sessions (subscriptions + queued QoS 1) indefinitely, as the
        # MQTT 3.1.1 spec says; None disables amqtt's expiry.
        "session_expiry_interval": None,
    }


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker on ``host`` (loopback by default) and a free or given port.

    ``start()`` returns once the port accepts connections; ``stop()`` shuts the broker down and joins
    its thread. Usable as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 10.0) -> None:
        """Prepare the broker; ``port=None`` picks a free port."""
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for clients."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._thread is not None and self._thread.is_alive() and self._started.is_set()

    def start(self) -> EmbeddedBroker:
        """Start the broker thread; return when it accepts connections (else ``TransportError``).

        amqtt's ``Broker.start()`` returns after its listening socket is bound, so no probe
        connection is needed (amqtt would log an empty probe connection as an error).
        """
        if self._thread is not None:
            raise RuntimeError("broker already started")
        self._check_bind()
        self._started.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name=f"amqtt-broker-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout) or self._start_error is not None:
            reason = self._start_error or f"not started within {self._start_timeout:.0f} s"
            self.stop()
            raise TransportError(f"embedded broker on {self.host}:{self.port} failed to start: {reason}",
                                 hint="pick another port, or check that nothing else listens there")
        logger.info("embedded broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down (clients are disconnected) and join its thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and loop.is_running() and self._broker is not None and self._started.is_set():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout)
            except Exception:
                logger.exception("embedded broker did not shut down cleanly")
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None
        self._broker = None
        self._started.clear()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_bind(self) -> None:
        # Bind once the way amqtt will (SO_REUSEADDR), so a taken port is one clear error instead
        # of amqtt logging a traceback first.
        try:
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host, self.port))
        except OSError as exc:
            raise TransportError(
                f"embedded broker on {self.host}:{self.port} failed to start: {exc.strerror or exc}",
                hint="pick another port (--port), or stop whatever listens there",
            ) from exc

    # --- broker thread --------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # report any startup failure to start()
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            # Let cancelled client tasks finish so the loop closes without warnings.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _startup(self) -> None:
        from amqtt.broker import Broker  # imported here: amqtt pulls in websockets etc.

        self._broker = Broker(broker_config(self.host, self.port))
        await self._broker.start()

    async def _shutdown(self) -> None:
        await self._broker.shutdown()


def run_forever(
    host: str = "127.0.0.1",
    port: int = 1883,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run an embedded broker in the foreground until SIGINT/SIGTERM or ``stop`` is set.

    ``on_ready(url)`` is called once it accepts connections (``hdus-edge broker`` prints the URL).
    Raises ``TransportError`` when it cannot start (e.g. the port is taken).
    """
    done = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        with EmbeddedBroker(host, port) as broker:
            if on_ready is not None:
                on_ready(broker.url)
            while not done.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
