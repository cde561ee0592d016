"""``RetainedListener``: what a one-shot observer verifies from a fleet's retained messages (pure logic).

A command that is not an agent (``publish`` on a device, the admin's requester) subscribes, lets
the broker hand over its retained messages, and decides from what verifies: who is certified
(hellos), who wants whose seed (neighbour lists), what was ordered (unlearn orders), who answered
(receipts). Messages arrive in any order, so one whose sender's hello has not come yet is parked
(bounded) and verified when it does. Subclasses record what they need in ``on_verified``; the
transport's handler is ``handle``. No I/O here: tests feed it bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from hdus_edge.errors import HdusError, UnknownSenderError
from hdus_edge.protocol import codec
from hdus_edge.protocol.codec import SignedMessage
from hdus_edge.protocol.crypto import TrustStore
from hdus_edge.protocol.messages import Hello, Message, NeighborList
from hdus_edge.protocol.topics import Topics

logger = logging.getLogger(__name__)

MAX_PARKED = 10_000  # messages awaiting their sender's hello, in all: a fleet's retained set, not a flood


class RetainedListener:
    """Verifies every message against ``trust``; keeps the newest neighbour list of each device."""

    def __init__(self, trust: TrustStore, topics: Topics, name: str = "listener") -> None:
        self.trust = trust
        self.topics = topics
        self.name = name
        self.memberships: dict[str, tuple[int, frozenset[str]]] = {}  # device -> (version, neighbours)
        self.last_message = time.monotonic()
        self.changed = threading.Condition()  # notified after every message (an RLock: replays nest)
        self._parked: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._parked_count = 0

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """Transport handler (its worker thread): verify and record; never raises."""
        if codec.is_clear(payload):
            return
        self.last_message = time.monotonic()
        with self.changed:
            self._handle(topic, payload)
            self.changed.notify_all()

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            signed = codec.decode(payload)
            msg = codec.verify(signed, self.trust)
            self.topics.check_matches(topic, msg)
        except UnknownSenderError:
            self._park(topic, payload)
            return
        except HdusError as exc:
            logger.info("%s: ignored %s: %s", self.name, topic, exc.message)
            return
        if isinstance(msg, Hello):
            try:
                self.trust.certify(msg.certificate)
            except HdusError as exc:
                logger.info("%s: hello of %s not taken: %s", self.name, msg.device_id, exc.message)
                return
            parked = self._parked.pop(msg.device_id, [])
            self._parked_count -= len(parked)
            for parked_topic, parked_payload in parked:
                self._handle(parked_topic, parked_payload)
        elif isinstance(msg, NeighborList):
            held = self.memberships.get(msg.device_id)
            if held is None or msg.version > held[0]:
                self.memberships[msg.device_id] = (msg.version, frozenset(msg.neighbors))
        self.on_verified(topic, signed, msg)

    def _park(self, topic: str, payload: bytes) -> None:
        if self._parked_count >= MAX_PARKED:
            return
        try:
            sender = codec.decode(payload).sender
        except HdusError:
            return
        self._parked[sender].append((topic, payload))
        self._parked_count += 1

    def on_verified(self, topic: str, signed: SignedMessage, msg: Message) -> None:
        """Called (under ``changed``) for every message that verified, hellos and lists included."""

    def wanting(self, device_id: str) -> tuple[str, ...]:
        """Devices whose newest neighbour list names ``device_id``."""
        with self.changed:
            return tuple(sorted(d for d, (_, nbrs) in self.memberships.items() if device_id in nbrs and d != device_id))

    def settle(self, quiet_s: float, max_s: float) -> None:
        """Wait until no message arrived for ``quiet_s`` (retained ones delivered), at most ``max_s``."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet_s:
            time.sleep(quiet_s / 4)
