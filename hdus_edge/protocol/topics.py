"""Every MQTT topic name, in one place. Root: ``hdus/v1/<fleet>/``.

=============================== ======== =====================================================
topic                           retained payload
=============================== ======== =====================================================
``devices/<id>/hello``          yes      ``Hello``
``seeds/<to>/<from>``           yes      ``SeedEnvelope`` (empty payload = cleared)
``membership/<id>``             yes      ``NeighborList``
``unlearn/<target>``            yes      ``UnlearnOrder`` (only the admin writes here)
``leave/<id>``                  yes      ``UnlearnOrder`` signed by ``<id>`` itself
``receipts/<request_id>/<from>`` no      ``Receipt``
``tombstones/<id>``             yes      ``TombstoneDigest``
``revocations``                 yes      ``RevocationList`` (only the admin writes here)
``devices/<id>/retire``         yes      ``SeedRetire`` (old seed versions of <id> retired)
``receipts/<request_id>/<from>`` no      ``SwapReceipt`` (answer to a ``SeedRetire``)
=============================== ======== =====================================================

Orders about a device live where the device cannot clear them: the broker lets only the admin write
``unlearn/<target>``; a device asks to be forgotten on ``leave/<itself>``, and the admin relays that
order onto ``unlearn/<target>`` when it revokes the device (``hdus_edge.admin.revocation``).

Every id segment is validated (``fields.ID_PATTERN``), so no id can smuggle in ``/``, ``+`` or ``#``.
To clear a forgotten seed from the broker, device ``me`` publishes an empty retained payload on
``seed(me, target)``: each device clears its own inbox copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdus_edge.errors import DecodeError
from hdus_edge.protocol.fields import (
    ADMIN_ID,
    check_device_id,
    check_fleet,
    check_request_id,
)
from hdus_edge.protocol.messages import (
    Hello,
    Message,
    NeighborList,
    Receipt,
    RevocationList,
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
REVOCATIONS = "revocations"
RETIRE = "retire"

RETAINED: dict[str, bool] = {
    HELLO: True,
    SEED: True,
    MEMBERSHIP: True,
    UNLEARN: True,
    RECEIPT: False,
    TOMBSTONES: True,
    REVOCATIONS: True,
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
    self_issued: bool = False  # an order on leave/<device>: only <device> itself may have signed it


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

    def leave(self, device: str) -> str:
        """Where ``device`` publishes the order to forget itself (the admin relays it to ``unlearn``)."""
        return f"{self.root}/leave/{check_device_id(device)}"

    def order(self, order: UnlearnOrder) -> str:
        """Where ``order`` is published by its issuer: ``unlearn/<target>`` (admin) or ``leave/<target>``."""
        return self.unlearn(order.target) if order.issuer == ADMIN_ID else self.leave(order.target)

    def revocations(self) -> str:
        """Where the admin keeps the signed revocation list (retained)."""
        return f"{self.root}/revocations"

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
        """What an observer reads to know the fleet: every hello, membership, unlearn order and request
        to leave (all retained)."""
        return [f"{self.root}/devices/+/hello", f"{self.root}/membership/+", f"{self.root}/unlearn/+",
                f"{self.root}/leave/+"]

    def hello_filter(self) -> str:
        """Every device's hello (the certified keys of the fleet)."""
        return f"{self.root}/devices/+/hello"

    def subscriptions(self, device: str, neighbors: Iterable[str]) -> list[str]:
        """The filters a device's agent subscribes to, orders and revocations first: the fleet's state,
        every tombstone digest, and the seed each neighbour addresses to it (one topic per neighbour,
        so the ACL's per-pair rule and a neighbour removed later leave nothing behind).

        Order matters: a broker hands over retained messages filter by filter, so an order that forgot
        this device while its agent was down is applied before any neighbour list asks for its seed.
        """
        check_device_id(device)
        orders = f"{self.root}/unlearn/+"
        return [orders, self.revocations(), *(f for f in self.fleet_state_filters() if f != orders),
                f"{self.root}/tombstones/+", self.retire_filter(), *(self.seed(device, j) for j in sorted(neighbors))]

    def observer_filters(self) -> list[str]:
        """What a read-only observer (the dashboard) subscribes to first: every kind but the seeds.

        Seeds (one retained message per ordered pair of neighbours) come per recipient
        (``seed_inbox``), one subscription at a time: a broker hands over every retained message
        matching a new subscription at once and drops what its per-client queue cannot hold
        (Mosquitto's ``max_queued_messages``, 1000 by default).
        """
        r = self.root
        return [f"{r}/+", f"{r}/devices/#", f"{r}/membership/#", f"{r}/unlearn/#", f"{r}/leave/#", f"{r}/tombstones/#",
                f"{r}/receipts/#"]

    def seed_inbox(self, to: str) -> str:
        """Every seed addressed to ``to`` (and anything else under it): ``seeds/<to>/#``."""
        return f"{self.root}/seeds/{check_device_id(to, 'recipient')}/#"

    def parse_presence(self, topic: str) -> str | None:
        """The device id of a presence topic (``devices/<id>/presence``), None for any other topic.

        Presence is the transport's plain ``online``/``offline`` (not a signed message), so it has no
        kind in ``parse``.
        """
        prefix, suffix = f"{self.root}/devices/", "/presence"
        if not (isinstance(topic, str) and topic.startswith(prefix) and topic.endswith(suffix)):
            return None
        device = topic[len(prefix) : -len(suffix)]
        try:
            return check_device_id(device)
        except (TypeError, ValueError):
            return None

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
                case ["leave", target]:
                    return ParsedTopic(UNLEARN, check_device_id(target), self_issued=True)
                case ["revocations"]:
                    return ParsedTopic(REVOCATIONS, ADMIN_ID)
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
            if parsed.self_issued and msg.issuer != msg.target:
                raise DecodeError(f"order from {msg.issuer!r} about {msg.target!r} does not belong on {topic!r}")
        elif isinstance(msg, Receipt):
            expected = (RECEIPT, msg.device_id, None)
            if parsed.request_id != msg.request_id:
                raise DecodeError(f"receipt for {msg.request_id!r} arrived on {topic!r}")
        elif isinstance(msg, TombstoneDigest):
            expected = (TOMBSTONES, msg.device_id, None)
        elif isinstance(msg, RevocationList):
            expected = (REVOCATIONS, ADMIN_ID, None)
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
