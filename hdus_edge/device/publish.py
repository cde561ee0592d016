"""Publish a device's exported seed without its agent (``hdus-edge publish``; no torch).

It does what the agent does when a neighbour asks for its seed: read the retained neighbour lists,
and publish the signed seed envelope, retained, on ``seeds/<to>/<me>`` for every device ``to`` whose
list names this device. It connects with its own client id ``<fleet>.<id>.publish``: the agent owns
``<fleet>.<id>``, and a second connection with that id would take the agent's session over.

Nothing forgotten is published: when the broker holds a valid unlearn order for this device, it
refuses (``TombstonedError``); devices with a valid order against them get nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hdus_edge.device.retired import retirement_to_publish
from hdus_edge.errors import (
    HdusError,
    StateDirError,
    TombstonedError,
    UnknownSenderError,
)
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import TrustStore
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    SeedEnvelope,
    UnlearnOrder,
    sha256_hex,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import StateDir, read_json
from hdus_edge.transport.mqtt import MqttTransport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    """What ``publish_seed`` sent, to whom, and what it left out."""

    device_id: str
    version: int
    sha256: str
    wanted_by: tuple[str, ...]  # devices whose neighbour list names this device
    sent_to: tuple[str, ...]  # confirmed by the broker (PUBACK)
    unconfirmed: tuple[str, ...]  # queued but not confirmed in time
    skipped: dict[str, str]  # device -> why it got nothing
    membership_published: bool
    agent_running: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "version": self.version, "sha256": self.sha256,
            "wanted_by": list(self.wanted_by), "sent_to": list(self.sent_to), "unconfirmed": list(self.unconfirmed),
            "skipped": dict(self.skipped), "membership_published": self.membership_published,
            "agent_running": self.agent_running, "seconds": self.seconds,
        }


@dataclass
class FleetListener:
    """Collects verified hellos, neighbour lists and unlearn orders from the broker's retained messages.

    Messages from a sender whose hello has not arrived yet are kept and verified once it does.
    """

    trust: TrustStore
    topics: Topics
    memberships: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    orders: dict[str, UnlearnOrder] = field(default_factory=dict)  # target -> order
    last_message: float = field(default_factory=time.monotonic)
    _parked: dict[str, list[tuple[str, bytes]]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """Transport handler (worker thread): verify and record; never raises."""
        self.last_message = time.monotonic()
        if codec.is_clear(payload):
            return
        with self._lock:
            self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            signed = codec.decode(payload)
            msg = codec.verify(signed, self.trust)
            self.topics.check_matches(topic, msg)
        except UnknownSenderError:
            try:
                sender = codec.decode(payload).sender
            except HdusError:
                return
            if len(self._parked[sender]) < 16:
                self._parked[sender].append((topic, payload))
            return
        except HdusError as exc:
            logger.info("publish: ignored %s: %s", topic, exc.message)
            return
        if isinstance(msg, Hello):
            try:
                self.trust.certify(msg.certificate)
            except HdusError as exc:
                logger.info("publish: hello of %s not taken: %s", msg.device_id, exc.message)
                return
            for parked_topic, parked in self._parked.pop(msg.device_id, []):
                self._handle(parked_topic, parked)
        elif isinstance(msg, NeighborList):
            held = self.memberships.get(msg.device_id)
            if held is None or msg.version > held[0]:
                self.memberships[msg.device_id] = (msg.version, frozenset(msg.neighbors))
        elif isinstance(msg, UnlearnOrder):
            self.orders[msg.target] = msg

    def settle(self, quiet_s: float, max_s: float) -> None:
        """Wait until no message arrived for ``quiet_s`` (retained ones delivered), at most ``max_s``."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet_s:
            time.sleep(quiet_s / 4)

    def forgotten(self, device_id: str, epoch: int) -> UnlearnOrder | None:
        """The order under which ``device_id`` at ``epoch`` is forgotten, if the broker holds one."""
        with self._lock:
            order = self.orders.get(device_id)
        return order if order is not None and order.epoch >= epoch else None

    def wanting(self, device_id: str) -> tuple[str, ...]:
        """Devices whose latest neighbour list names ``device_id``."""
        with self._lock:
            return tuple(sorted(d for d, (_, nbrs) in self.memberships.items() if device_id in nbrs and d != device_id))


def publish_seed(
    state: StateDir,
    *,
    broker_url: str | None = None,
    connect_timeout: float = 10.0,
    settle_s: float = 0.5,
    max_settle_s: float = 5.0,
    publish_timeout: float = 10.0,
) -> PublishOutcome:
    """Publish the exported seed (``models/seed.onnx``, version from ``seed.json``) to every device that wants it.

    Also announces the device (its hello, and its neighbour list from ``device.toml`` when no agent
    runs), so devices that publish later find this one. Raises ``StateDirError`` before export,
    ``BrokerUnreachableError`` / ``BrokerRefusedError`` for the broker, ``TombstonedError`` when this
    device was forgotten.
    """
    start = time.monotonic()
    device = state.device()
    fleet = state.fleet()
    me = device.device.id
    seed_onnx, info = _exported_seed(state)
    version = int(info["version"])
    cert = state.certificate()
    key = state.key()
    trust = TrustStore(fleet.fleet.name, state.admin_key())
    trust.certify(cert)
    topics = Topics(fleet.fleet.name)
    listener = FleetListener(trust, topics)
    running = state.agent_running()
    url = broker_url or device.device.broker or fleet.fleet.broker
    filters = topics.fleet_state_filters()
    transport = MqttTransport(url, f"{fleet.fleet.name}.{me}.publish", handler=listener.handle, clean_session=True)
    sent: list[str] = []
    unconfirmed: list[str] = []
    skipped: dict[str, str] = {}
    membership = False
    try:
        transport.subscribe(filters)
        transport.connect(timeout=connect_timeout)
        listener.settle(settle_s, max_settle_s)
        order = listener.forgotten(me, cert.epoch)
        if order is not None:
            raise TombstonedError(
                f"device {me!r} was forgotten (request {order.request_id}, issued by {order.issuer}); "
                "its seed would be refused everywhere, so nothing was published",
                hint="the fleet admin must re-admit the device with a new epoch",
            )
        hello = Hello(me, key.public_key.raw, cert, device.device.profile, _main_arch(state), str(info.get("arch", "seed-cnn")))
        transport.publish(topics.hello(me), codec.encode(hello, key, me), retain=True, wait=True, timeout=publish_timeout)
        # A version that retires older ones (forget-samples): the retirement goes before the seed.
        retire = retirement_to_publish(state.retire_file, me, version, seed_onnx, cert.epoch)
        if retire is not None:
            transport.publish(topics.retire(me), codec.encode(retire, key, me), retain=True, wait=True,
                              timeout=publish_timeout)
        if not running:
            # The agent owns the neighbour list while it runs; without it, announce device.toml's.
            seen = listener.memberships.get(me, (0, frozenset()))[0]
            nl = NeighborList(me, device.neighbors, max(int(time.time() * 1000), seen + 1))
            membership = transport.publish(topics.membership(me), codec.encode(nl, key, me), retain=True, wait=True,
                                           timeout=publish_timeout)
        wanted = listener.wanting(me)
        for to in wanted:
            to_epoch = trust.epoch_of(to) if to in trust else 0
            if listener.forgotten(to, to_epoch) is not None:
                skipped[to] = "forgotten"
                continue
            env = SeedEnvelope.build(
                owner=me, to=to, version=version, onnx=seed_onnx, arch=str(info.get("arch", "seed-cnn")),
                input_shape=(-1, *fleet.data.input_shape), num_classes=fleet.data.num_classes,
                reference_sha256=str(info.get("reference_sha256") or fleet.data.reference_sha256), epoch=cert.epoch,
            )
            ok = transport.publish(topics.seed(to, me), codec.encode(env, key, me), retain=True, wait=True,
                                   timeout=publish_timeout)
            (sent if ok else unconfirmed).append(to)
        # A persistent session with subscriptions would collect messages for a client that never returns.
        transport.unsubscribe(filters)
    finally:
        transport.close()
    logger.info("published seed v%d of %s to %s", version, me, sent)
    return PublishOutcome(me, version, sha256_hex(seed_onnx), wanted, tuple(sent), tuple(unconfirmed), skipped,
                          membership, running, time.monotonic() - start)


def _exported_seed(state: StateDir) -> tuple[bytes, dict[str, Any]]:
    seed = state.model_bytes("seed.onnx")
    if not state.seed_info_file.exists():
        raise StateDirError(f"{state.seed_info_file} is missing", hint="run 'hdus-edge export' for this device first")
    info = read_json(state.seed_info_file, "seed info")
    if not isinstance(info, dict) or int(info.get("version", 0)) < 1:
        raise StateDirError(f"{state.seed_info_file} names no exported version", hint="run 'hdus-edge export' again")
    if "sha256" in info and info["sha256"] != sha256_hex(seed):
        raise StateDirError(f"{state.models / 'seed.onnx'} does not match {state.seed_info_file}",
                            hint="run 'hdus-edge export' again")
    return seed, info


def _main_arch(state: StateDir) -> str:
    from hdus_edge.onnx.checks import parse_onnx
    from hdus_edge.onnx.metadata import read_provenance

    try:
        prov = read_provenance(parse_onnx(state.model_bytes("main.onnx"), max_bytes=512 << 20))
    except HdusError:
        prov = None
    return prov.arch if prov is not None else state.profile().model.main_arch
