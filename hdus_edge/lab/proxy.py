"""``TcpProxy``: a TCP proxy between MQTT clients and a broker, under the test's control.

Faults it makes, each on demand and undone by ``restore()``:

- ``cut()``: close every open connection (both sides): the client sees the link drop at once.
- ``cut_one(rng)``: close one connection picked by ``rng`` (random disconnects in a soak).
- ``down()``: cut, and refuse new connections (accepted, then closed at once) until ``restore()``.
- ``stall()``: keep connections open but forward nothing (a black hole: only keepalives notice).

And a link's character, for the whole run (``LinkShape``): one-way delay with jitter, loss, and
flapping (``flap_every_s``/``flap_down_s``: the link goes ``down()`` for a few seconds at a time and
comes back, on a schedule drawn from the shape's seed: ``flap_schedule``).
This machine's kernel has no ``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc
kind is unknown"), so the shaping happens here, per direction, on what TCP delivers: a chunk leaves
``delay +- jitter`` after it arrived, never before the one ahead of it (TCP delivers in order), and
a lost segment shows up as TCP shows it to the application: that chunk and everything behind it
wait one retransmission timeout (Linux's minimum, 200 ms). Seeded, so a run can be repeated.

Two threads per connection pump bytes each way (blocking sockets: simple, and a few hundred
connections is all a test needs), two more when the link is shaped; one thread accepts. Every byte
counted, every fault counted.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)

_CHUNK = 65536


@dataclass(frozen=True)
class LinkShape:
    """One direction's character: ``delay_s`` +- ``jitter_s`` (uniform) and a ``loss`` rate per chunk."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    retransmit_s: float = 0.2  # what a lost segment costs: Linux's minimum retransmission timeout
    seed: int = 0
    # Flapping: up for flap_every_s, then down for flap_down_s (each drawn uniformly within +-50%,
    # so cuts do not line up with the clients' keepalives or backoffs); 0 never flaps.
    flap_every_s: float = 0.0
    flap_down_s: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0 or self.jitter_s > self.delay_s or not 0 <= self.loss < 1:
            raise ValueError(f"invalid link shape {self}")
        if self.flap_every_s < 0 or self.flap_down_s < 0 or (self.flap_every_s > 0) != (self.flap_down_s > 0):
            raise ValueError(f"invalid link shape {self}: flapping needs both flap_every_s and flap_down_s > 0")

    @property
    def flaps(self) -> bool:
        return self.flap_down_s > 0

    @property
    def shapes_bytes(self) -> bool:
        """Whether chunks need a delay line (a flapping-only link forwards bytes untouched)."""
        return self.delay_s > 0 or self.loss > 0


def flap_schedule(shape: LinkShape, horizon_s: float) -> list[tuple[float, float]]:
    """The (down at, up at) seconds after start of every outage of ``shape`` that begins before
    ``horizon_s``; pure and seeded, so a run's outages can be replayed and tested."""
    return list(itertools.takewhile(lambda o: o[0] < horizon_s, _outages(shape)))


def _outages(shape: LinkShape) -> Iterator[tuple[float, float]]:
    if not shape.flaps:
        return
    rng = random.Random(f"flap-{shape.seed}")  # its own stream: adding flaps must not move the delays
    t = 0.0
    while True:
        t += shape.flap_every_s * rng.uniform(0.5, 1.5)
        up = t + shape.flap_down_s * rng.uniform(0.5, 1.5)
        yield t, up
        t = up


class _DelayLine:
    """Sends chunks to ``dst`` when due, in order (one thread); ``put`` stamps them on arrival."""

    def __init__(self, dst: socket.socket, shape: LinkShape, rng: random.Random, on_error: Callable[[], None],
                 on_loss: Callable[[], None]) -> None:
        self.dst, self.shape, self.rng, self.on_error, self.on_loss = dst, shape, rng, on_error, on_loss
        self._queue: deque[tuple[float, bytes]] = deque()
        self._cv = threading.Condition()
        self._last_due = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hdus-proxy-delay", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        s = self.shape
        due = time.monotonic() + s.delay_s + self.rng.uniform(-s.jitter_s, s.jitter_s)
        if s.loss and self.rng.random() < s.loss:
            due += s.retransmit_s
            self.on_loss()
        with self._cv:
            self._last_due = max(self._last_due, due)
            self._queue.append((self._last_due, data))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                due, data = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                self._queue.popleft()
            try:
                self.dst.sendall(data)
            except OSError:
                self.on_error()
                return


@dataclass
class ProxyStats:
    """What went through the proxy and what it did to it."""

    connections: int = 0  # accepted and forwarded
    refused: int = 0  # accepted and closed at once while down
    cuts: int = 0  # connections closed by a fault
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    lost: int = 0  # chunks that waited a retransmission timeout (shaped links)
    flaps: int = 0  # outages of a flapping link (each a down(), then a restore())


class _Pair:
    """One proxied connection: the client's socket and ours to the upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> bool:
        """Close both sides; True the first time."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return True


class TcpProxy:
    """Forward ``host:port`` to ``upstream_host:upstream_port``; cut, stall and restore on demand."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int | None = None,
                 shape: LinkShape | None = None) -> None:
        """Prepare (not start) a proxy; ``port=None`` picks a free port on ``host``; ``shape`` applies
        to both directions of every connection (each direction with its own seeded generator)."""
        self.upstream = (upstream_host, upstream_port)
        self.shape = shape
        self._shape_rng = random.Random(shape.seed if shape else 0)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.stats = ProxyStats()
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._flapper: threading.Thread | None = None
        self._stopped = threading.Event()

    @classmethod
    def in_front_of(cls, broker_url: str) -> TcpProxy:
        """A proxy in front of the broker at ``mqtt://host:port``."""
        from hdus_edge.transport.url import parse_broker_url

        url = parse_broker_url(broker_url)
        return cls(url.host, url.port)

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the proxy (what clients connect to)."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._listener is not None

    @property
    def open_connections(self) -> int:
        """Connections currently forwarded."""
        with self._lock:
            return len(self._pairs)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen, and forward every accepted connection; returns at once."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"hdus-proxy-{self.port}", daemon=True)
        self._acceptor.start()
        if self.shape is not None and self.shape.flaps:
            self._flapper = threading.Thread(target=self._flap_loop, name=f"hdus-proxy-flap-{self.port}", daemon=True)
            self._flapper.start()
        logger.info("proxy %s -> %s:%d", self.url, *self.upstream)
        return self

    def stop(self) -> None:
        """Close the listener and every connection. Idempotent."""
        self._stopped.set()
        self._flowing.set()  # release stalled pumps so they can exit
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        self._close_all(count=False)
        for thread in (self._acceptor, self._flapper):
            if thread is not None:
                thread.join(timeout=5)
        self._acceptor = self._flapper = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- faults ------------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every open connection now (clients reconnect); return how many were cut."""
        return self._close_all(count=True)

    def cut_one(self, rng: random.Random) -> bool:
        """Close one open connection chosen by ``rng``; False when none is open."""
        with self._lock:
            pairs = sorted(self._pairs, key=id)
        if not pairs:
            return False
        pair = rng.choice(pairs)
        if pair.close():
            with self._lock:
                self._pairs.discard(pair)
                self.stats.cuts += 1
        return True

    def down(self) -> int:
        """Cut every connection and refuse new ones until ``restore()``; return how many were cut."""
        self._refusing = True
        return self.cut()

    def stall(self) -> None:
        """Stop forwarding bytes (connections stay open) until ``restore()``."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and forward again (undo ``down()`` and ``stall()``)."""
        self._refusing = False
        self._flowing.set()

    # --- internals -----------------------------------------------------------------------------

    def _close_all(self, count: bool) -> int:
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        closed = sum(1 for p in pairs if p.close())
        if count:
            with self._lock:
                self.stats.cuts += closed
        return closed

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            if self._refusing:
                client.close()
                with self._lock:
                    self.stats.refused += 1
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError as exc:
                logger.debug("proxy %d: upstream %s:%d unreachable: %s", self.port, *self.upstream, exc)
                client.close()
                with self._lock:
                    self.stats.refused += 1
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.stats.connections += 1
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(pair, src, dst, up), daemon=True,
                                 name=f"hdus-proxy-pump-{self.port}").start()

    def _flap_loop(self) -> None:
        """Follow ``flap_schedule`` until stopped; the link is left up when the proxy stops."""
        assert self.shape is not None
        began = time.monotonic()
        for down_at, up_at in _outages(self.shape):
            if self._stopped.wait(max(0.0, began + down_at - time.monotonic())):
                return
            cut = self.down()
            with self._lock:
                self.stats.flaps += 1
            logger.info("proxy %d: link down (%d connections cut)", self.port, cut)
            if self._stopped.wait(max(0.0, began + up_at - time.monotonic())):
                return
            self.restore()
            logger.info("proxy %d: link up", self.port)

    def _count_loss(self) -> None:
        with self._lock:
            self.stats.lost += 1

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, up: bool) -> None:
        line = None
        if self.shape is not None and self.shape.shapes_bytes:
            with self._lock:
                rng = random.Random(self._shape_rng.getrandbits(64))
            line = _DelayLine(dst, self.shape, rng, pair.close, self._count_loss)
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                # A stall holds what was read; it goes out (or is dropped with the link) on restore.
                while not self._flowing.wait(0.1):
                    if self._stopped.is_set():
                        return
                if line is None:
                    dst.sendall(data)
                else:
                    line.put(data)
                with self._lock:
                    if up:
                        self.stats.bytes_up += len(data)
                    else:
                        self.stats.bytes_down += len(data)
        except OSError:
            pass
        finally:
            if line is not None:
                line.close()
            pair.close()
            with self._lock:
                self._pairs.discard(pair)
