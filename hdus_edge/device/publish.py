"""Publish a device's exported seed without its agent (``hdus-edge publish``; no torch).

It does what the agent does when a neighbour asks for its seed: read the retained neighbour lists,
and publish the signed seed envelope, retained, on ``seeds/<to>/<me>`` for every device ``to`` whose
list names this device. It connects with the device's command login (``hdus_edge.device.login``): the agent owns
``<fleet>.<id>``, and a second connection with that id would take the agent's session over.

Nothing forgotten is published: when the broker holds a valid unlearn order for this device, it
refuses (``TombstonedError``); devices with a valid order against them get nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from hdus_edge.device.login import command_login
from hdus_edge.device.retired import retirement_to_publish
from hdus_edge.errors import (
    HdusError,
    StateDirError,
    TombstonedError,
)
from hdus_edge.protocol import codec
from hdus_edge.protocol.codec import SignedMessage
from hdus_edge.protocol.crypto import TrustStore
from hdus_edge.protocol.listener import RetainedListener
from hdus_edge.protocol.messages import (
    Hello,
    Message,
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


class FleetListener(RetainedListener):
    """What ``publish`` needs from the broker's retained messages: verified neighbour lists (the
    base keeps them) and the newest unlearn order about each device."""

    def __init__(self, trust: TrustStore, topics: Topics) -> None:
        super().__init__(trust, topics, "publish")
        self.orders: dict[str, UnlearnOrder] = {}  # target -> order

    def on_verified(self, topic: str, signed: SignedMessage, msg: Message) -> None:
        if isinstance(msg, UnlearnOrder):
            self.orders[msg.target] = msg

    def forgotten(self, device_id: str, epoch: int) -> UnlearnOrder | None:
        """The order under which ``device_id`` at ``epoch`` is forgotten, if the broker holds one."""
        with self.changed:
            order = self.orders.get(device_id)
        return order if order is not None and order.epoch >= epoch else None


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
    url, client_id, tls = command_login(state, broker_url)
    filters = topics.fleet_state_filters()
    transport = MqttTransport(url, client_id, handler=listener.handle, clean_session=True, tls=tls)
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
