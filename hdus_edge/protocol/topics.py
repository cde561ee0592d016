"""Every MQTT topic name, in one place. Root: ``hdus/v1/<fleet>/``.

=============================== ======== =====================================================
topic                           retained payload
=============================== ======== =====================================================
``devices/<id>/hello``          yes      ``Hello``
``seeds/<to>/<from>``           yes      ``SeedEnvelope`` (empty payload = cleared)
``membership/<id>``             yes      ``NeighborList``
``unlearn/<target>``            yes      ``UnlearnOrder``
``receipts/<request_id>/<from>`` no      ``Receipt``
``tombstones/<id>``             yes      ``TombstoneDigest``
``devices/<id>/retire``         yes      ``SeedRetire`` (old seed versions of <id> retired)
``receipts/<request_id>/<from>`` no      ``SwapReceipt`` (answer to a ``SeedRetire``)
=============================== ======== =====================================================

Every id segment is validated (``fields.ID_PATTERN``), so no id can smuggle in ``/``, ``+`` or ``#``.
To clear a forgotten seed from the broker, device ``me`` publishes an empty retained payload on
``seed(me, target)``: each device clears its own inbox copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdus_edge.errors import DecodeError
from hdus_edge.protocol.fields import check_device_id, check_fleet, check_request_id
from hdus_edge.protocol.messages import (
    Hello,
    Message,
    NeighborList,
    Receipt,
    SeedEnvelope,
    SeedRetire,
    SwapReceipt,
    TombstoneDigest,
    UnlearnOrder,
)

PROTOCOL_ROOT = "hdus/v1"

HELLO = "hello"
SEED = "seed"
MEMBERSHIP = "membership"
UNLEARN = "unlearn"
RECEIPT = "receipt"
TOMBSTONES = "tombstones"
RETIRE = "retire"

RETAINED: dict[str, bool] = {
    HELLO: True,
    SEED: True,
    MEMBERSHIP: True,
    UNLEARN: True,
    RECEIPT: False,
    TOMBSTONES: True,
    RETIRE: True,
}
"""Whether each kind of topic is published retained (DESIGN.md section 4)."""


@dataclass(frozen=True)
class ParsedTopic:
    """A topic taken apart: its kind and the ids in it.

    ``device`` is the id the topic is about: the author for every kind except ``unlearn``, where it is the
    target (the author may be the admin).
    """

    kind: str
    device: str
    to: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Topics:
    """Topic names and filters for one fleet."""

    fleet: str

    def __post_init__(self) -> None:
        check_fleet(self.fleet)

    @property
    def root(self) -> str:
        """``hdus/v1/<fleet>``."""
        return f"{PROTOCOL_ROOT}/{self.fleet}"

    def hello(self, device: str) -> str:
        """Where ``device`` announces itself."""
        return f"{self.root}/devices/{check_device_id(device)}/hello"

    def presence(self, device: str) -> str:
        """Where ``device``'s connection state lives (``online``, or ``offline`` as its last will)."""
        return f"{self.root}/devices/{check_device_id(device)}/presence"

    def seed(self, to: str, frm: str) -> str:
        """Where ``frm`` publishes its seed for ``to``."""
        return f"{self.root}/seeds/{check_device_id(to, 'recipient')}/{check_device_id(frm, 'sender')}"

    def membership(self, device: str) -> str:
        """Where ``device`` publishes its neighbour list."""
        return f"{self.root}/membership/{check_device_id(device)}"

    def unlearn(self, target: str) -> str:
        """Where the order to forget ``target`` is published."""
        return f"{self.root}/unlearn/{check_device_id(target, 'target')}"

    def receipt(self, request_id: str, frm: str) -> str:
        """Where ``frm`` answers unlearn request ``request_id``."""
        return f"{self.root}/receipts/{check_request_id(request_id)}/{check_device_id(frm, 'sender')}"

    def tombstones(self, device: str) -> str:
        """Where ``device`` gossips the unlearn orders it applied."""
        return f"{self.root}/tombstones/{check_device_id(device)}"

    def retire(self, owner: str) -> str:
        """Where ``owner`` retires its old seed versions (under its own ``devices/<id>/``, which the
        broker ACL already lets only it write and every device read)."""
        return f"{self.root}/devices/{check_device_id(owner)}/retire"

    def retire_filter(self) -> str:
        """Every device's retirement (rare: one per forget-samples request)."""
        return f"{self.root}/devices/+/retire"

    def fleet_state_filters(self) -> list[str]:
        """What an observer reads to know the fleet: every hello, membership and unlearn order (all retained)."""
        return [f"{self.root}/devices/+/hello", f"{self.root}/membership/+", f"{self.root}/unlearn/+"]

    def hello_filter(self) -> str:
        """Every device's hello (the certified keys of the fleet)."""
        return f"{self.root}/devices/+/hello"

    def subscriptions(self, device: str, neighbors: Iterable[str]) -> list[str]:
        """The filters a device's agent subscribes to: the fleet's state, every tombstone digest, and
        the seed each neighbour addresses to it (one topic per neighbour, so the ACL's per-pair rule
        and a neighbour removed later leave nothing behind)."""
        check_device_id(device)
        return [*self.fleet_state_filters(), f"{self.root}/tombstones/+", self.retire_filter(),
                *(self.seed(device, j) for j in sorted(neighbors))]

    def receipts_filter(self, request_id: str) -> str:
        """The filter a requester subscribes to, to collect every receipt for ``request_id``."""
        return f"{self.root}/receipts/{check_request_id(request_id)}/+"

    def parse(self, topic: str) -> ParsedTopic:
        """Take a topic of this fleet apart; ``DecodeError`` for anything else."""
        prefix = self.root + "/"
        if not isinstance(topic, str) or not topic.startswith(prefix):
            raise DecodeError(f"topic {topic!r} is not under {prefix}")
        parts = topic[len(prefix) :].split("/")
        try:
            match parts:
                case ["devices", device, "hello"]:
                    return ParsedTopic(HELLO, check_device_id(device))
                case ["devices", device, "retire"]:
                    return ParsedTopic(RETIRE, check_device_id(device))
                case ["seeds", to, frm]:
                    return ParsedTopic(SEED, check_device_id(frm), to=check_device_id(to))
                case ["membership", device]:
                    return ParsedTopic(MEMBERSHIP, check_device_id(device))
                case ["unlearn", target]:
                    return ParsedTopic(UNLEARN, check_device_id(target))
                case ["receipts", request_id, frm]:
                    return ParsedTopic(RECEIPT, check_device_id(frm), request_id=check_request_id(request_id))
                case ["tombstones", device]:
                    return ParsedTopic(TOMBSTONES, check_device_id(device))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"topic {topic!r} has a bad id: {exc}") from None
        raise DecodeError(f"topic {topic!r} is not an hdus topic")

    def parse_seed_topic(self, topic: str) -> tuple[str, str]:
        """``(to, frm)`` of a seed topic; ``DecodeError`` for any other topic."""
        parsed = self.parse(topic)
        if parsed.kind != SEED or parsed.to is None:
            raise DecodeError(f"topic {topic!r} is not a seed topic")
        return parsed.to, parsed.device

    def check_matches(self, topic: str, msg: Message) -> None:
        """Raise ``DecodeError`` unless ``msg`` belongs on ``topic`` (kind and ids agree).

        A signed message replayed onto another device's topic would otherwise shadow that device's
        retained message (e.g. hide its hello or its latest seed).
        """
        parsed = self.parse(topic)
        expected: tuple[str, str | None, str | None]
        if isinstance(msg, Hello):
            expected = (HELLO, msg.device_id, None)
        elif isinstance(msg, SeedEnvelope):
            expected = (SEED, msg.owner, msg.to)
        elif isinstance(msg, NeighborList):
            expected = (MEMBERSHIP, msg.device_id, None)
        elif isinstance(msg, UnlearnOrder):
            expected = (UNLEARN, msg.target, None)
        elif isinstance(msg, Receipt):
            expected = (RECEIPT, msg.device_id, None)
            if parsed.request_id != msg.request_id:
                raise DecodeError(f"receipt for {msg.request_id!r} arrived on {topic!r}")
        elif isinstance(msg, TombstoneDigest):
            expected = (TOMBSTONES, msg.device_id, None)
        elif isinstance(msg, SeedRetire):
            expected = (RETIRE, msg.owner, None)
        elif isinstance(msg, SwapReceipt):
            expected = (RECEIPT, msg.device_id, None)
            if parsed.request_id != msg.request_id:
                raise DecodeError(f"swap receipt for {msg.request_id!r} arrived on {topic!r}")
        else:
            raise TypeError(f"not a protocol message: {type(msg).__name__}")
        if (parsed.kind, parsed.device, parsed.to) != expected:
            raise DecodeError(f"{type(msg).__name__} from {expected[1]!r} does not belong on topic {topic!r}")
