"""One handle over the brokers the fault cases crash: Mosquitto with persistence on or off, and amqtt.

``crash()`` is what a power cut does to each: SIGKILL for Mosquitto (it keeps only what its last
autosave wrote; the persistent kind autosaves every second); for the embedded amqtt broker (which
keeps nothing in any case) every link drops at once and the next ``start()`` is a fresh broker.
``start()`` brings it back on the same port.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

import psutil

from hdus_edge.lab.proxy import TcpProxy
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
        self._front: TcpProxy | None = None
        self._mosquitto: MosquittoProcess | None = None
        if kind == "amqtt":
            # amqtt 0.12 may not finish shutting down while clients storm back, and keeps its port
            # bound: clients talk to a stable proxy port, and each start is a fresh broker behind it.
            self._front = TcpProxy("127.0.0.1", 0)  # the upstream is set by each start()
            self.port = self._front.port
        else:
            persistent = kind == "mosquitto-persistent"
            self.port = free_port()
            config = MosquittoConfig(port=self.port, persistence=persistent,
                                     autosave_interval=1 if persistent else 1800, **mosquitto)  # type: ignore[arg-type]
            self._mosquitto = MosquittoProcess(self.workdir, config)

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
        if self._front is not None:
            self._amqtt = EmbeddedBroker().start()
            self._front.upstream = ("127.0.0.1", self._amqtt.port)
            if self._front.listening:
                self._front.restore()
            else:
                self._front.start()
        else:
            assert self._mosquitto is not None
            self._mosquitto.start()
        return self

    def crash(self) -> None:
        """Lose the broker the hard way (see module docstring)."""
        self.crashes += 1
        if self._front is not None:
            self._front.down()  # every client's link drops now, as when the process dies
            old, self._amqtt = self._amqtt, None
            if old is not None:  # its shutdown may take seconds; nobody waits for it
                threading.Thread(target=old.stop, kwargs={"timeout": 5.0}, daemon=True).start()
        else:
            assert self._mosquitto is not None
            self._mosquitto.kill()

    def stop(self) -> None:
        if self._front is not None:
            if self._amqtt is not None:
                self._front.down()
                self._amqtt.stop()
                self._amqtt = None
        elif self._mosquitto is not None:
            self._mosquitto.stop()

    def close(self) -> None:
        """Stop the broker and release everything (the amqtt front proxy too)."""
        self.stop()
        if self._front is not None:
            self._front.stop()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
