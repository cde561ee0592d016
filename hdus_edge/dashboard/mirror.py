"""``BrokerMirror``: the latest payload of every topic of one fleet, as the broker holds it (MQTT I/O).

One read-only MQTT client (``MqttTransport``, clean session, no outbox, no presence). A broker hands
over every retained message matching a new subscription at once and drops what its per-client queue
cannot hold (Mosquitto: ``max_queued_messages``, 1000 by default; a 50-device complete graph retains
2,450 seeds), so subscriptions go one at a time, each waited out until its retained messages stopped
coming: first every kind but the seeds (``Topics.observer_filters``), then ``seeds/<id>/#`` for each
device the view names (``want_seeds_for``). An empty payload clears its topic, as on the broker.
Nothing here decodes or trusts a payload: that is ``fleet_view``'s job, on a copy.

Bounded, because anyone who can publish to the fleet's topics can fill it: at most ``max_topics``
topics and ``max_total_bytes`` of payloads (later new topics are counted in ``dropped`` and not kept),
and a payload over ``max_bytes`` is kept cut to ``max_bytes + 1`` bytes so that the codec still rejects
it as oversized. What it holds is about what the broker retains for the fleet (mostly seeds).

After a reconnect the broker hands over every retained message again, and topics cleared while the
link was down must not linger: the mirror starts afresh for each new session, and takes the seed
subscriptions down and up again one at a time (the transport restored them all at once, so the broker
may have dropped some). Topics outside the fleet's kinds deeper than ``hdus/v1/<fleet>/<x>`` are not
watched.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable

from hdus_edge.dashboard.fleet_view import BrokerMessage
from hdus_edge.protocol.codec import DEFAULT_MAX_BYTES
from hdus_edge.protocol.fields import is_device_id
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOPICS = 20_000  # a 100-device complete graph has ~10k seed topics
DEFAULT_MAX_TOTAL_BYTES = 1 << 30  # ~10k seeds of ~30 KB fit three times over
QUIET_S = 0.15  # a subscription's retained messages are all in once none came for this long
MAX_SETTLE_S = 30.0


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
        tls: TlsFiles | None = None,
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
        self._seed_ids: set[str] = set()
        self._todo: list[str] = []  # devices whose seed inbox is not subscribed yet
        self._follower_session = 0
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="hdus-dashboard-seeds", daemon=True)
        # A random suffix: two dashboards on one broker must not take over each other's session.
        client_id = f"{topics.fleet}.dashboard-{secrets.token_hex(4)}"
        self.transport = MqttTransport(broker_url, client_id, handler=self._on_message, clean_session=True, tls=tls)

    @property
    def url(self) -> str:
        """The broker URL without its password."""
        return self.transport.url.redacted()

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def start(self, timeout: float = 10.0) -> BrokerMirror:
        """Connect and subscribe to every kind but the seeds, one filter at a time.

        ``BrokerUnreachableError``/``BrokerRefusedError`` when the connection fails.
        """
        self.transport.connect(timeout=timeout)
        self._follower_session = self.transport.connect_count
        for f in self.topics.observer_filters():
            self._subscribe_settled(f)
        self._follower.start()
        return self

    def want_seeds_for(self, device_ids: Iterable[str]) -> None:
        """Watch the seeds addressed to these devices too (subscribed in the background, one at a time)."""
        with self._cond:
            new = sorted({d for d in device_ids if is_device_id(d)} - self._seed_ids)
            if new:
                self._seed_ids.update(new)
                self._todo.extend(new)
                self._cond.notify_all()

    @property
    def following(self) -> int:
        """How many devices' seed inboxes are subscribed (the rest are queued)."""
        with self._cond:
            return len(self._seed_ids) - len(self._todo)

    def _subscribe_settled(self, topic_filter: str) -> None:
        self.transport.subscribe(topic_filter, timeout=10.0)
        deadline = time.monotonic() + MAX_SETTLE_S
        with self._cond:
            while time.monotonic() < deadline and not self._stop.is_set():
                seen = self._changes
                self._cond.wait_for(lambda seen=seen: self._changes != seen or self._stop.is_set(), QUIET_S)
                if self._changes == seen:
                    return

    def _follow(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._todo or self._stop.is_set()
                                    or self.transport.connect_count != self._follower_session, 1.0)
                if self._stop.is_set():
                    return
                resubscribe = self.transport.connect_count != self._follower_session and self.transport.connected
                if resubscribe:
                    self._follower_session = self.transport.connect_count
                    done = sorted(self._seed_ids - set(self._todo))
                    self._todo = done + self._todo
                device = self._todo[0] if self._todo else None
            try:
                if resubscribe:
                    self.transport.unsubscribe([self.topics.seed_inbox(d) for d in done])
                if device is not None:
                    self._subscribe_settled(self.topics.seed_inbox(device))
                    with self._cond:
                        if self._todo and self._todo[0] == device:
                            self._todo.pop(0)
            except Exception:  # the link dropped mid-way: the next session starts over
                logger.warning("dashboard: subscribing to %s's seeds failed; retrying", device, exc_info=True)
                self._stop.wait(1.0)

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
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._follower.is_alive():
            self._follower.join(timeout=5)
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
