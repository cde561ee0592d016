"""``BrokerMirror``: the latest payload of every topic of one fleet, as the broker holds it (MQTT I/O).

One read-only MQTT client (``MqttTransport``, clean session, no outbox, no presence) subscribed to
``hdus/v1/<fleet>/#``: the broker hands over every retained message, then everything published while
we listen. An empty payload clears its topic, as it does on the broker. Nothing here decodes or trusts
a payload: that is ``fleet_view``'s job, on a copy.

Bounded, because anyone who can publish to the fleet's topics can fill it: at most ``max_topics``
topics and ``max_total_bytes`` of payloads (later new topics are counted in ``dropped`` and not kept),
and a payload over ``max_bytes`` is kept cut to ``max_bytes + 1`` bytes so that the codec still rejects
it as oversized. What it holds is about what the broker retains for the fleet (mostly seeds).

After a reconnect the broker hands over every retained message again, and topics cleared while the
link was down must not linger: the mirror starts afresh for each new session.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from hdus_edge.dashboard.fleet_view import BrokerMessage
from hdus_edge.protocol.codec import DEFAULT_MAX_BYTES
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOPICS = 20_000  # a 100-device complete graph has ~10k seed topics
DEFAULT_MAX_TOTAL_BYTES = 1 << 30  # ~10k seeds of ~30 KB fit three times over


class BrokerMirror:
    """Keeps ``topic -> BrokerMessage`` for one fleet; ``wait_change`` wakes whoever renders it."""

    def __init__(
        self,
        broker_url: str,
        topics: Topics,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        self.topics = topics
        self.max_topics = max_topics
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.dropped = 0
        self._total_bytes = 0
        self._messages: dict[str, BrokerMessage] = {}
        self._changes = 0
        self._seen_connects = 0
        self._cond = threading.Condition()
        # A random suffix: two dashboards on one broker must not take over each other's session.
        client_id = f"{topics.fleet}.dashboard-{secrets.token_hex(4)}"
        self.transport = MqttTransport(broker_url, client_id, handler=self._on_message, clean_session=True)

    @property
    def url(self) -> str:
        """The broker URL without its password."""
        return self.transport.url.redacted()

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def start(self, timeout: float = 10.0) -> BrokerMirror:
        """Connect and subscribe; ``BrokerUnreachableError``/``BrokerRefusedError`` when that fails."""
        self.transport.subscribe(self.topics.everything())
        self.transport.connect(timeout=timeout)
        return self

    def messages(self) -> tuple[BrokerMessage, ...]:
        """A copy of what the mirror holds now (nothing from a session before the current one)."""
        with self._cond:
            self._follow_session()
            return tuple(self._messages.values())

    def _follow_session(self) -> None:
        # Called with the lock held, from the handler and from readers, so whichever comes first
        # after a reconnect drops the old session's messages, and the other sees it done.
        connects = self.transport.connect_count
        if connects != self._seen_connects:
            if self._seen_connects:
                self._messages.clear()
                self._total_bytes = 0
            self._seen_connects = connects

    @property
    def changes(self) -> int:
        """How many times the mirror changed (goes up on every message)."""
        with self._cond:
            return self._changes

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until ``changes`` exceeds ``seen`` or ``timeout`` passes; return ``changes``."""
        with self._cond:
            self._cond.wait_for(lambda: self._changes > seen, timeout)
            return self._changes

    def close(self) -> None:
        self.transport.close()
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        # Runs on the transport's worker thread: short, never raises.
        now = time.time()
        with self._cond:
            self._follow_session()
            held = self._messages.get(topic)
            kept = payload if len(payload) <= self.max_bytes else payload[: self.max_bytes + 1]
            if held is not None:
                self._total_bytes -= len(held.payload)
                del self._messages[topic]
            if not payload:
                pass  # cleared, as on the broker
            elif len(self._messages) < self.max_topics and self._total_bytes + len(kept) <= self.max_total_bytes:
                self._messages[topic] = BrokerMessage(topic, kept, now, live=not retained)
                self._total_bytes += len(kept)
            else:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("dashboard: %d topics held; %d new topics not kept", len(self._messages), self.dropped)
            self._changes += 1
            self._cond.notify_all()
