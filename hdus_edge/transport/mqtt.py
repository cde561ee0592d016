"""``MqttTransport``: one device's connection to the broker (paho-mqtt 2.x, callback API v2).

What it guarantees, and how:

- **Persistent session, MQTT 3.1.1 with clean_session=False, client id = device id.** amqtt 0.12
  speaks only 3.1.1 (it answers a v5 CONNECT with "unacceptable protocol version"), while Mosquitto
  speaks both; 3.1.1's clean_session=False is the one persistent-session form that works on both.
  The broker then keeps our subscriptions and queues QoS 1 messages while we are away.
- **QoS 1 everywhere, at-least-once from our side.** Every outgoing message goes to the durable
  ``Outbox`` first and leaves it only when its PUBACK arrives; unconfirmed ones are re-published by
  the next ``connect()`` (also after a crash). Incoming messages are acknowledged (manual PUBACK)
  only after the handler has run, so a crash mid-handler makes the broker deliver them again.
  Duplicates are therefore possible both ways; the protocol layer deduplicates.
- **Reconnects** with exponential backoff (paho's ``reconnect_delay_set`` + ``loop_start``); every
  (re)connect re-subscribes all filters (a broker that restarted without persistence forgot them),
  so retained messages are delivered again after a reconnect.
- **Callbacks never block or raise.** paho's network thread only enqueues; a worker thread runs the
  user handler ``handler(topic, payload, retained)``; an exception there is logged and the next
  message is handled as usual. A second thread removes acknowledged messages from the outbox, so a
  handler that itself publishes with ``wait=True`` cannot deadlock.
- **Presence.** With ``presence_topic``: a retained ``online`` on every connect, a retained
  ``offline`` on ``close()``, and the same ``offline`` as the last will (broker-sent on a lost link).
- **TCP_NODELAY** on the socket (``on_socket_open``): a QoS 1 round trip is one small packet each
  way, which Nagle + delayed ACK would hold back for tens of milliseconds.

MQTT acknowledgements alone do not prove delivery (a 3.1.1 broker acknowledges an oversized or
ACL-denied message and drops it); end-to-end receipts belong to the protocol layer.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from hdus_edge.errors import (
    BrokerRefusedError,
    BrokerUnreachableError,
    ConfigError,
    TransportError,
)
from hdus_edge.transport.outbox import Outbox, OutboxItem
from hdus_edge.transport.url import (
    INSECURE_ENV,
    BrokerURL,
    check_plaintext,
    parse_broker_url,
)

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""``handler(topic, payload, retained)``, run on the transport's worker thread."""

QOS = 1
PRESENCE_ONLINE = b"online"
PRESENCE_OFFLINE = b"offline"
_SUBACK_FAILURE = 0x80
_MAX_SUBACK_RESULTS = 256  # unclaimed SUBACK results kept (re-subscriptions nobody waits for)


@dataclass(frozen=True)
class TlsFiles:
    """TLS material for ``mqtts://`` URLs.

    ``ca_file=None`` trusts the system's CAs; ``cert_file``/``key_file`` are the client's own
    certificate for brokers that require one (Mosquitto ``require_certificate true``).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_dir(cls, folder: Path) -> TlsFiles | None:
        """The files in a state or admin dir's ``keys/tls/`` (``ca.crt``, ``client.crt``, ``client.key``);
        None when the folder holds none of them (a plain-text or system-CA broker)."""
        folder = Path(folder)
        ca, cert, key = (folder / n for n in ("ca.crt", "client.crt", "client.key"))
        if not (ca.exists() or cert.exists() or key.exists()):
            return None
        return cls(ca if ca.exists() else None, cert if cert.exists() else None, key if key.exists() else None)

    @classmethod
    def for_url(cls, url: str | BrokerURL, folder: Path) -> TlsFiles | None:
        """``from_dir(folder)`` for an ``mqtts://`` URL; None for plain ``mqtt://`` (the files stay unused)."""
        parsed = url if isinstance(url, BrokerURL) else parse_broker_url(url)
        return cls.from_dir(folder) if parsed.tls else None


class MqttTransport:
    """A device's MQTT connection: QoS 1, persistent session, durable outbox, reconnects.

    Typical use::

        t = MqttTransport("mqtt://127.0.0.1:1883", "dev-1", handler=on_msg, outbox_dir=state / "outbox")
        t.subscribe(["hdus/v1/fleet/seeds/dev-1/+"])   # may come before or after connect()
        t.connect(timeout=10)
        t.publish("hdus/v1/fleet/seeds/dev-2/dev-1", blob, retain=True)
        t.close()
    """

    def __init__(
        self,
        url: str | BrokerURL,
        client_id: str,
        *,
        handler: MessageHandler | None = None,
        outbox_dir: Path | str | None = None,
        presence_topic: str | None = None,
        tls: TlsFiles | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        reconnect_min_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        tcp_nodelay: bool = True,
        clean_session: bool = False,
        insecure: bool | None = None,
    ) -> None:
        """Prepare a client; nothing touches the network until ``connect()``.

        ``outbox_dir=None`` keeps the outbox in memory (no durability across restarts).
        ``username``/``password`` override the ones in the URL. ``keepalive`` (seconds) also bounds
        how long the broker takes to notice a dead device and send its last will (1.5x keepalive).
        ``insecure`` allows plain-text ``mqtt://`` to a host that is not loopback (default: the
        ``HDUS_INSECURE`` environment variable, which ``hdus-edge --insecure`` sets); otherwise
        ``BrokerURLError``.
        """
        if not client_id or any(c in client_id for c in "/+#"):
            raise ValueError(f"client id must be a non-empty device id without / + #, got {client_id!r}")
        self.url = url if isinstance(url, BrokerURL) else parse_broker_url(url)
        check_plaintext(self.url, insecure if insecure is not None else os.environ.get(INSECURE_ENV, "") == "1")
        self.client_id = client_id
        self._handler = handler
        self._presence_topic = presence_topic
        self._tcp_nodelay = tcp_nodelay
        self._keepalive = keepalive

        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,  # one-shot clients (requesters) leave no session behind
            protocol=MQTTProtocolVersion.MQTTv311,
            manual_ack=True,  # PUBACK only after our handler ran (see module docstring)
        )
        self._client.reconnect_delay_set(min_delay=reconnect_min_delay, max_delay=reconnect_max_delay)  # type: ignore[arg-type]
        user = username if username is not None else self.url.username
        secret = password if password is not None else self.url.password
        if user is not None:
            self._client.username_pw_set(user, secret)
        self._configure_tls(tls)
        if presence_topic is not None:
            self._client.will_set(presence_topic, PRESENCE_OFFLINE, qos=QOS, retain=True)

        c = self._client
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._on_socket_open
        c.on_log = self._on_log

        # Connection state, shared with paho's thread.
        self._state = threading.Condition()
        self._ready = False  # CONNACK accepted and subscriptions restored
        self._connects = 0
        self._fail_count = 0
        self._refused: str | None = None
        self._last_error: str | None = None
        self._resub_mid: int | None = None

        # Subscriptions we want, in order (dict as an ordered set).
        self._filters_lock = threading.Lock()
        self._filters: dict[str, None] = {}
        self._subacks = threading.Condition()
        self._suback_results: dict[int, list[int]] = {}

        # Outgoing: outbox row ids handed to paho, by paho message id.
        self._outbox = Outbox(outbox_dir)
        self._pub = threading.Condition()
        self._row_of_mid: dict[int, int] = {}
        self._on_ack: dict[int, Callable[[], None]] = {}  # outbox row -> called when its PUBACK arrives

        self._inbox: queue.Queue[paho.MQTTMessage | None] = queue.Queue()
        self._acks: queue.Queue[int | None] = queue.Queue()
        self._loop_running = False
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=f"hdus-mqtt-handler-{client_id}", daemon=True)
        self._acker = threading.Thread(target=self._ack_loop, name=f"hdus-mqtt-acks-{client_id}", daemon=True)
        self._worker.start()
        self._acker.start()

    # --- public API ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected with all subscriptions in place."""
        with self._state:
            return self._ready

    @property
    def connect_count(self) -> int:
        """How many times a CONNACK was accepted (1 after ``connect()``, +1 per reconnect)."""
        with self._state:
            return self._connects

    @property
    def pending(self) -> int:
        """Messages in the outbox still waiting for their PUBACK."""
        return len(self._outbox)

    def set_handler(self, handler: MessageHandler | None) -> None:
        """Replace the message handler (takes effect from the next message)."""
        self._handler = handler

    def connect(self, timeout: float = 10.0, max_attempts: int = 5) -> None:
        """Connect, restore subscriptions, re-publish unconfirmed outbox messages; then return.

        Gives up after ``max_attempts`` failed TCP/TLS attempts or ``timeout`` seconds, whichever
        comes first, and raises ``BrokerUnreachableError``; raises ``BrokerRefusedError`` at once
        when the broker refuses us (credentials, authorization). Afterwards paho reconnects on its
        own with exponential backoff whenever the link drops.
        """
        if self._closed:
            raise RuntimeError("transport is closed")
        if self._loop_running:
            raise RuntimeError("connect() was already called")
        if max_attempts < 1 or timeout <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout > 0")
        started = time.monotonic()
        self._replay()
        with self._state:
            self._fail_count = 0
            self._refused = None
            self._last_error = None
        # A blackholed host must not hold one attempt past our overall deadline.
        self._client.connect_timeout = max(0.2, min(5.0, timeout))
        self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive)
        self._client.loop_start()
        self._loop_running = True

        deadline = started + timeout
        with self._state:
            while not self._ready and self._refused is None and self._fail_count < max_attempts:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
            ready, refused, failures, last_error = self._ready, self._refused, self._fail_count, self._last_error
        if ready:
            logger.info("connected to %s as %s", self.url, self.client_id)
            return

        self._client.loop_stop()
        self._loop_running = False
        waited = time.monotonic() - started
        if refused is not None:
            raise BrokerRefusedError(f"broker {self.url} refused client {self.client_id!r}: {refused}")
        raise BrokerUnreachableError(
            f"no connection to broker {self.url} after {max(failures, 1)} attempt(s) in {waited:.1f} s: "
            f"{self._diagnose(last_error)}"
        )

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected with subscriptions restored; False if ``timeout`` passes first."""
        with self._state:
            return self._state.wait_for(lambda: self._ready, timeout)

    def subscribe(self, filters: str | Iterable[str], timeout: float = 5.0) -> bool:
        """Subscribe to topic filters at QoS 1; they are restored on every reconnect.

        Returns True when the broker acknowledged them now, False when not connected (they are
        sent on the next connect) or no SUBACK came within ``timeout``. Raises ``TransportError``
        when the broker refuses a filter (e.g. denied by its ACL).
        """
        new = [filters] if isinstance(filters, str) else list(filters)
        for f in new:
            if not isinstance(f, str) or not f or not _valid_filter(f):
                raise ValueError(f"invalid MQTT topic filter: {f!r}")
        with self._filters_lock:
            for f in new:
                self._filters[f] = None
        if not new or not self._loop_running:
            return False  # on_connect subscribes everything in self._filters
        # Sent even while (re)connecting: on_connect may have taken its snapshot before our add.
        rc, mid = self._client.subscribe([(f, QOS) for f in new])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        codes = self._wait_suback(mid, timeout)
        if codes is None:
            logger.warning("no SUBACK for %s within %.1f s; it will be re-sent on reconnect", new, timeout)
            return False
        refused = [f for f, code in zip(new, codes) if code >= _SUBACK_FAILURE]
        if refused:
            raise TransportError(f"broker {self.url} refused subscription to {refused}",
                                 hint="check the broker's ACL for this device")
        return True

    def unsubscribe(self, filters: str | Iterable[str]) -> None:
        """Stop receiving messages for these filters (now and after reconnects)."""
        gone = [filters] if isinstance(filters, str) else list(filters)
        with self._filters_lock:
            for f in gone:
                self._filters.pop(f, None)
        if gone and self._loop_running:
            self._client.unsubscribe(gone)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
        durable: bool = True,
        on_ack: Callable[[], None] | None = None,
    ) -> bool:
        """Publish at QoS 1 through the durable outbox.

        ``durable=False`` keeps the outbox copy in memory only (no fsync): for a message whose caller
        holds it durably and sends it again after a restart. ``on_ack`` is called once, from the ack
        thread, when the broker's PUBACK arrives; it must be short and must not block on the caller.

        The message is on disk when this returns, whatever the result. With ``wait=True``, returns
        True once the broker's PUBACK arrived (and the message left the outbox), False if
        ``timeout`` passed first; it stays in the outbox and is sent again after a reconnect or
        restart. With ``wait=False`` returns False at once. An empty ``payload`` with
        ``retain=True`` clears the topic's retained message.
        """
        if self._closed:
            raise RuntimeError("transport is closed")
        if not isinstance(topic, str) or not topic or any(c in topic for c in "+#"):
            raise ValueError(f"invalid MQTT topic to publish to: {topic!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        data = bytes(payload)
        with self._pub:
            row = self._outbox.put(topic, data, retain, durable=durable)
            if on_ack is not None:
                self._on_ack[row] = on_ack
            sent = self._send(OutboxItem(id=row, topic=topic, payload=data, retain=retain, created=time.time()))
            if not sent or not wait:
                return False
            return self._pub.wait_for(lambda: row not in self._row_of_mid.values(), timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message handed to the broker was acknowledged; False on timeout."""
        with self._pub:
            return self._pub.wait_for(lambda: not self._row_of_mid, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Say ``offline`` (retained), disconnect cleanly, stop the threads, close the outbox.

        Messages still unconfirmed stay in the outbox and are sent by the next ``connect()``;
        incoming messages not yet handled are not acknowledged, so the broker sends them again.
        """
        if self._closed:
            return
        self._closed = True
        if self._loop_running:
            if self._presence_topic is not None and self.connected:
                info = self._client.publish(self._presence_topic, PRESENCE_OFFLINE, qos=QOS, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    logger.debug("offline presence not confirmed before disconnect")
            self._client.disconnect()
            self._client.loop_stop()
            self._loop_running = False
        with self._state:
            self._ready = False
        self._inbox.put(None)
        self._acks.put(None)
        for thread in (self._worker, self._acker):
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._outbox.close()
        logger.info("closed transport %s to %s", self.client_id, self.url)

    def __enter__(self) -> MqttTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals: outgoing --------------------------------------------------------------

    def _configure_tls(self, tls: TlsFiles | None) -> None:
        if tls is not None and not self.url.tls:
            raise ConfigError(f"TLS files given for {self.url}, which is not TLS; use an mqtts:// URL")
        if not self.url.tls:
            return
        files = tls or TlsFiles()
        for label, path in (("CA", files.ca_file), ("certificate", files.cert_file), ("key", files.key_file)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS {label} file {path} does not exist")
        if (files.cert_file is None) != (files.key_file is None):
            raise ConfigError("a client certificate needs both cert_file and key_file")
        try:
            self._client.tls_set(
                ca_certs=str(files.ca_file) if files.ca_file else None,
                certfile=str(files.cert_file) if files.cert_file else None,
                keyfile=str(files.key_file) if files.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot load TLS files {files}: {exc}") from exc

    def _send(self, item: OutboxItem) -> bool:
        # Caller holds self._pub, so the ack thread cannot look up this mid before it is mapped.
        info = self._client.publish(item.topic, item.payload, qos=QOS, retain=item.retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not queued by paho (cannot happen with an unbounded queue); the outbox still holds it.
            logger.warning("paho did not queue message %d on %s: %s", item.id, item.topic, paho.error_string(info.rc))
            return False
        self._row_of_mid[info.mid] = item.id
        return True

    def _replay(self) -> None:
        with self._pub:
            items = self._outbox.pending(exclude=list(self._row_of_mid.values()))
            for item in items:
                self._send(item)
        if items:
            logger.info("re-publishing %d unconfirmed message(s) from the outbox", len(items))

    def _ack_loop(self) -> None:
        while True:
            mid = self._acks.get()
            if mid is None:
                return
            callback = None
            try:
                with self._pub:
                    row = self._row_of_mid.pop(mid, None)
                    if row is not None:
                        self._outbox.remove(row)
                        callback = self._on_ack.pop(row, None)
                    self._pub.notify_all()
            except Exception:
                logger.exception("could not remove acknowledged message (mid %d) from the outbox", mid)
            if callback is not None:  # outside the lock: it may take the caller's own locks
                try:
                    callback()
                except Exception:
                    logger.exception("ack callback failed (mid %d)", mid)

    # --- internals: incoming --------------------------------------------------------------

    def _work(self) -> None:
        while True:
            msg = self._inbox.get()
            if msg is None:
                return
            try:
                self._deliver(msg)
            except Exception:
                logger.exception("message handler failed on topic %r; continuing with the next message", msg.topic)
            finally:
                if msg.qos > 0 and not self._closed:
                    self._client.ack(msg.mid, msg.qos)

    def _deliver(self, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        with self._filters_lock:
            wanted = any(paho.topic_matches_sub(f, topic) for f in self._filters)
        if not wanted:
            # amqtt 0.12 sends a resumed session the retained messages of every client's filters.
            logger.debug("dropping message on %r: matches none of our subscriptions", topic)
            return
        handler = self._handler
        if handler is None:
            logger.debug("no handler set; dropping message on %r", topic)
            return
        handler(topic, bytes(msg.payload), bool(msg.retain))

    def _wait_suback(self, mid: int, timeout: float) -> list[int] | None:
        with self._subacks:
            if not self._subacks.wait_for(lambda: mid in self._suback_results, timeout):
                return None
            return self._suback_results.pop(mid)

    def _diagnose(self, last_error: str | None) -> str:
        # paho does not say why a TCP connect failed; one plain probe tells refused from timeout.
        try:
            with socket.create_connection((self.url.host, self.url.port), timeout=1.0):
                pass
        except OSError as exc:
            return str(exc) or type(exc).__name__
        if last_error:  # the port is open: paho's last error (e.g. a TLS alert) says more
            return last_error
        if self.url.tls:
            return "TCP port open but the TLS handshake or MQTT CONNECT failed (check CA and client certificate)"
        return "TCP port open but no MQTT CONNACK (is it an MQTT broker? TLS needs mqtts://)"

    # --- paho callbacks: run on paho's thread; short, never raise -------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._tcp_nodelay:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            logger.debug("could not set TCP_NODELAY on %r", sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                with self._state:
                    self._refused = str(reason)
                    self._state.notify_all()
                logger.warning("broker %s refused %s: %s", self.url, self.client_id, reason)
                return
            with self._filters_lock:
                filters = list(self._filters)
            resub_mid = None
            if filters:
                rc, resub_mid = client.subscribe([(f, QOS) for f in filters])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    resub_mid = None
            if self._presence_topic is not None:
                client.publish(self._presence_topic, PRESENCE_ONLINE, qos=QOS, retain=True)
            with self._state:
                self._connects += 1
                self._resub_mid = resub_mid
                self._ready = resub_mid is None  # else ready once the SUBACK arrives
                self._state.notify_all()
            logger.debug("CONNACK from %s (session present: %s), re-subscribed %d filter(s)",
                         self.url, flags.session_present, len(filters))
        except Exception:
            logger.exception("on_connect failed")

    def _on_log(self, client: paho.Client, userdata: Any, level: int, text: str) -> None:
        # paho logs network trouble at ERROR; the transport reports what matters itself, so paho's
        # lines go to DEBUG, and the last error is kept for connect()'s message.
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text
        logger.debug("paho: %s", text)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        with self._state:
            self._fail_count += 1
            self._state.notify_all()
        logger.debug("connection attempt to %s failed", self.url)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._state:
            was_ready = self._ready
            if not was_ready:
                # Dropped before we were ready, e.g. a TLS 1.3 broker rejecting our certificate
                # after the handshake: one failed attempt, as far as connect() is concerned.
                self._fail_count += 1
            self._ready = False
            self._state.notify_all()
        if was_ready and not self._closed:
            logger.warning("lost connection to %s (%s); reconnecting with backoff", self.url, reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.put(msg)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acks.put(mid)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        try:
            codes = [int(getattr(r, "value", r)) for r in reasons]
            if any(code >= _SUBACK_FAILURE for code in codes):
                logger.warning("broker %s refused a subscription (SUBACK codes %s)", self.url, codes)
            with self._subacks:
                self._suback_results[mid] = codes
                while len(self._suback_results) > _MAX_SUBACK_RESULTS:
                    del self._suback_results[next(iter(self._suback_results))]
                self._subacks.notify_all()
            with self._state:
                if mid == self._resub_mid:
                    self._resub_mid = None
                    self._ready = True
                    self._state.notify_all()
        except Exception:
            logger.exception("on_subscribe failed")


def _valid_filter(f: str) -> bool:
    # '#' only as the whole last level, '+' only as a whole level (MQTT 3.1.1 section 4.7.1).
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True
