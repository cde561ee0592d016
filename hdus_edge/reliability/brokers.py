"""One handle over the brokers the fault cases crash: Mosquitto with persistence on or off, and amqtt.

``crash()`` is what a power cut does to each: SIGKILL for Mosquitto (it keeps only what its last
autosave wrote; the persistent kind autosaves every second), and for the embedded amqtt broker a
stop (it keeps nothing in any case). ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from types import TracebackType

import psutil

from hdus_edge.errors import TransportError
from hdus_edge.transport.broker import EmbeddedBroker
from hdus_edge.transport.mosquitto import MosquittoConfig, MosquittoProcess
from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)

BROKER_KINDS = ("mosquitto-persistent", "mosquitto-memory", "amqtt")


class Broker:
    """A broker of one of ``BROKER_KINDS`` that a case can crash and bring back."""

    def __init__(self, kind: str, workdir: Path, **mosquitto: object) -> None:
        """``mosquitto`` holds extra ``MosquittoConfig`` fields (e.g. ``max_queued_messages``)."""
        if kind not in BROKER_KINDS:
            raise ValueError(f"broker kind must be one of {BROKER_KINDS}, got {kind!r}")
        self.kind = kind
        self.workdir = Path(workdir)
        self.crashes = 0
        self._amqtt: EmbeddedBroker | None = None
        self._mosquitto: MosquittoProcess | None = None
        port = free_port()
        if kind == "amqtt":
            self._amqtt = EmbeddedBroker(port=port)
        else:
            persistent = kind == "mosquitto-persistent"
            config = MosquittoConfig(port=port, persistence=persistent, autosave_interval=1 if persistent else 1800,
                                     **mosquitto)  # type: ignore[arg-type]
            self._mosquitto = MosquittoProcess(self.workdir, config)
        self.port = port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id (None for amqtt, which runs in this process)."""
        return self._mosquitto.pid if self._mosquitto is not None else None

    def rss_bytes(self) -> int | None:
        """Resident memory of the Mosquitto process, or None."""
        pid = self.pid
        if pid is None:
            return None
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.NoSuchProcess:
            return None

    def log_text(self) -> str:
        """Mosquitto's log (empty for amqtt)."""
        return self._mosquitto.log_text() if self._mosquitto is not None else ""

    def start(self) -> Broker:
        if self._amqtt is not None:
            self._start_amqtt()
        else:
            assert self._mosquitto is not None
            self._mosquitto.start()
        return self

    def _start_amqtt(self, attempts: int = 20) -> None:
        # amqtt 0.12 sometimes does not finish shutting down while clients storm back in, and its
        # listening socket lingers until collected: collect, wait, and bind again on the same port.
        for attempt in range(attempts):
            try:
                self._amqtt = EmbeddedBroker(port=self.port)
                self._amqtt.start()
                return
            except TransportError:
                if attempt == attempts - 1:
                    raise
                gc.collect()
                time.sleep(0.5)

    def crash(self) -> None:
        """Lose the broker the hard way (see module docstring)."""
        self.crashes += 1
        if self._amqtt is not None:
            self._amqtt.stop()
        else:
            assert self._mosquitto is not None
            self._mosquitto.kill()

    def stop(self) -> None:
        if self._amqtt is not None:
            self._amqtt.stop()
        elif self._mosquitto is not None:
            self._mosquitto.stop()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
