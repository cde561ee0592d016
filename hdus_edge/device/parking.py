"""Messages parked until their sender's hello arrives, within caps (pure: no I/O, no threads).

A message whose sender is not yet certified may be fine (its hello is on the way: retained messages
arrive in any order) or may come from a made-up sender id that will never say hello. Parking is
the one queue an insider can fill with signed-looking junk, so it is capped four ways: per sender,
per topic (a device may publish only on its own topics, so one topic cap bounds one insider), and
in total, each by count and the total also by bytes. The oldest parked message goes first, and
every drop is counted (``dropped``) so the agent can report and audit it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ParkingLimits:
    """Caps on parked messages. The defaults hold the retained set of a 64-device fleet's worth of
    early messages (a few per sender) without letting parked bytes exceed 4 MiB."""

    per_sender: int = 16  # hello, membership, digest, a seed or two, orders: a handful per device
    per_topic: int = 8  # a topic is one device's (the broker's ACL): one insider's share of the lot
    total: int = 256
    total_bytes: int = 4 * 1024 * 1024  # a seed is ~20 KiB; four maximum-size envelopes would not fit

    def __post_init__(self) -> None:
        if min(self.per_sender, self.per_topic, self.total, self.total_bytes) < 1:
            raise ValueError(f"parking limits must be positive: {self}")


@dataclass
class ParkingCounts:
    """What the lot has seen since it was made."""

    parked: int = 0
    dropped: int = 0  # evicted to make room, or too large to park at all
    dropped_bytes: int = 0
    released: int = 0  # handed back when their sender's hello came


class ParkingLot:
    """Parked (topic, payload) per sender; latest wins per (sender, topic); oldest evicted first."""

    def __init__(self, limits: ParkingLimits = ParkingLimits()) -> None:
        self.limits = limits
        self.counts = ParkingCounts()
        # (sender, topic) -> payload, in arrival order (oldest first)
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Payload bytes parked now."""
        return self._bytes

    def park(self, sender: str, topic: str, payload: bytes) -> int:
        """Park ``payload``; return how many messages were dropped to keep within the limits.

        A payload larger than the byte cap is not parked (it counts as one drop).
        """
        if len(payload) > self.limits.total_bytes:
            self.counts.dropped += 1
            self.counts.dropped_bytes += len(payload)
            return 1
        key = (sender, topic)
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old)  # a newer message on the same topic replaces it: not a drop
        dropped = 0
        dropped += self._evict(lambda k: k[0] == sender, self.limits.per_sender - 1)
        dropped += self._evict(lambda k: k[1] == topic, self.limits.per_topic - 1)
        dropped += self._evict(lambda k: True, self.limits.total - 1)
        while self._items and self._bytes + len(payload) > self.limits.total_bytes:
            self._drop_oldest(lambda k: True)
            dropped += 1
        self._items[key] = payload
        self._bytes += len(payload)
        self.counts.parked += 1
        return dropped

    def release(self, sender: str) -> list[tuple[str, bytes]]:
        """Take every message parked for ``sender``, oldest first (its hello came)."""
        keys = [k for k in self._items if k[0] == sender]
        out = []
        for k in keys:
            payload = self._items.pop(k)
            self._bytes -= len(payload)
            out.append((k[1], payload))
        self.counts.released += len(out)
        return out

    def discard(self, sender: str) -> int:
        """Drop every message parked for ``sender`` (its certificate was revoked: no hello will vouch
        for them); they count as dropped. Returns how many."""
        return self._evict(lambda k: k[0] == sender, 0)

    def senders(self) -> set[str]:
        """Senders with something parked."""
        return {k[0] for k in self._items}

    def _evict(self, match: Callable[[tuple[str, str]], bool], keep: int) -> int:
        keys = [k for k in self._items if match(k)]
        excess = len(keys) - keep
        for k in keys[:max(0, excess)]:
            self._drop(k)
        return max(0, excess)

    def _drop_oldest(self, match: Callable[[tuple[str, str]], bool]) -> None:
        for k in self._items:
            if match(k):
                self._drop(k)
                return

    def _drop(self, key: tuple[str, str]) -> None:
        payload = self._items.pop(key)
        self._bytes -= len(payload)
        self.counts.dropped += 1
        self.counts.dropped_bytes += len(payload)
