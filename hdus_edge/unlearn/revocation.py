"""The last step of forgetting, on the admin's side: revoke the device everywhere (``hdus-edge revoke``).

After an order's receipts were collected (``hdus-edge unlearn`` does this by itself; after a device's
own ``leave`` the admin runs ``hdus-edge revoke DEVICE``), ``revoke``:

1. records the revocation in the admin dir (``revocations.json``, ``devices.json`` ``forgotten``),
   before anything touches the broker, so a crash never loses it;
2. relays the order onto ``unlearn/<target>``, which only the admin may write: no device can clear it
   (a device's own order travels on ``leave/<itself>``, which it could);
3. publishes the signed, retained ``RevocationList``: every agent refuses the revoked certificate and
   applies the orders in it even if it missed the order itself (``DeviceAgent``);
4. deletes the device's broker logins through the dynamic-security plugin's control topic (the
   broker refuses them from now on and disconnects them now), when ``broker-config`` set the broker
   up (the admin dir has ``keys/broker.json``); the embedded demo broker has no logins to revoke;
5. clears the device's retained seeds, neighbour list and hello from the broker.

With bridged brokers (``broker-config --bridge``) steps 2-5 happen at every broker directly: the
plugin's control topic is not bridged, and a site whose bridge is down must refuse the device now.
A broker that cannot be reached is reported in ``broker_errors`` (re-run once it is back).

Re-running it is harmless (idempotent). Re-admission (``hdus-edge readmit``) gives the device a new
epoch; the revoked epochs stay refused.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hdus_edge.errors import ConfigError, HdusError, TransportError, UnauthorizedError
from hdus_edge.files import write_json
from hdus_edge.protocol import codec, crypto
from hdus_edge.protocol.crypto import VerifyKey
from hdus_edge.protocol.fields import ADMIN_ID
from hdus_edge.protocol.messages import MAX_DIGEST_ORDERS, RevocationList, UnlearnOrder
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir, read_json
from hdus_edge.transport import dynsec
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.url import companion_user, parse_broker_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevocationOutcome:
    """What ``revoke`` did."""

    device: str
    epoch: int
    request_id: str
    list_version: int
    broker_logins_deleted: tuple[str, ...]  # empty when the broker has no logins to revoke
    broker_errors: tuple[str, ...]
    cleared_topics: int

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "epoch": self.epoch, "request_id": self.request_id,
                "list_version": self.list_version, "broker_logins_deleted": list(self.broker_logins_deleted),
                "broker_errors": list(self.broker_errors), "cleared_topics": self.cleared_topics}


def check_order(admin: AdminDir, order_raw: bytes) -> UnlearnOrder:
    """The order in ``order_raw`` when it is valid: signed by the admin, or by its target with the key
    ``devices.json`` holds for it, for an epoch it was provisioned at. ``UnauthorizedError`` otherwise."""
    signed = codec.decode(order_raw)
    order = signed.msg
    if not isinstance(order, UnlearnOrder):
        raise UnauthorizedError(f"a {type(order).__name__} is not an unlearn order")
    entry = admin.registry().get(order.target)
    if entry is None:
        raise ConfigError(f"device {order.target!r} is not provisioned in this fleet")
    if signed.sender == ADMIN_ID == order.issuer:
        key = admin.key().public_key
    elif signed.sender == order.issuer == order.target:
        key = VerifyKey.from_hex(str(entry["public_key"]))
        if order.epoch > int(entry.get("epoch", 0)):
            raise UnauthorizedError(f"order forgets epoch {order.epoch} of {order.target!r}, which is at {entry.get('epoch', 0)}")
    else:
        raise UnauthorizedError(f"{signed.sender!r} may not order {order.target!r} forgotten")
    crypto.verify(key, signed.signed_bytes, signed.signature)
    return order


def revocations(admin: AdminDir) -> dict[str, Any]:
    """``revocations.json``: ``{"version": n, "entries": {device: {epoch, request_id, order, at}}}``."""
    if not admin.revocations_file.exists():
        return {"version": 0, "entries": {}}
    data = read_json(admin.revocations_file, "revocations")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ConfigError(f"{admin.revocations_file} is corrupt")
    return data


def revocation_list(data: dict[str, Any]) -> RevocationList:
    """The signed list's content from ``revocations.json`` (the newest orders when there are many)."""
    entries = data["entries"]
    by_time = sorted(entries.values(), key=lambda e: e["at"])
    return RevocationList(int(data["version"]), time.time(), tuple((d, int(e["epoch"])) for d, e in sorted(entries.items())),
                          tuple(bytes.fromhex(e["order"]) for e in by_time[-MAX_DIGEST_ORDERS:]))


def revoke(admin: AdminDir, order_raw: bytes, *, broker_url: str | None = None, timeout: float = 10.0) -> RevocationOutcome:
    """Revoke the target of the valid order ``order_raw`` at the admin dir and the broker (module doc)."""
    order = check_order(admin, order_raw)
    fleet = admin.fleet().fleet.name
    data = revocations(admin)
    held = data["entries"].get(order.target)
    if held is None or held["epoch"] < order.epoch or held["request_id"] != order.request_id:
        epoch = max(order.epoch, held["epoch"] if held else -1)
        data["entries"][order.target] = {"epoch": epoch, "request_id": order.request_id, "order": order_raw.hex(),
                                         "at": time.time()}
        data["version"] = int(data["version"]) + 1
        write_json(admin.revocations_file, data)
    registry = admin.registry()
    registry[order.target] = {**registry[order.target], "forgotten": {"request_id": order.request_id,
                                                                      "epoch": data["entries"][order.target]["epoch"]}}
    write_json(admin.registry_file, registry)
    rl = revocation_list(data)
    deleted, errors, cleared = _apply_at_broker(admin, fleet, order, order_raw, rl, sorted(registry), broker_url, timeout)
    # Bridged brokers: the plugin's $CONTROL topic is not bridged, so each broker deletes the logins
    # itself; the list, the order and the clears go there directly too, so a site whose bridge is
    # down refuses the device and drops its seeds now, not when the bridge is back.
    for other in admin.broker_urls()[1:]:
        where = _label(other)
        try:
            d, e, _ = _apply_at_broker(admin, fleet, order, order_raw, rl, sorted(registry), other, timeout)
        except TransportError as exc:
            d, e = (), (exc.message,)
        deleted = tuple(u for u in deleted if u in d)
        errors += tuple(f"{where}: {m}" for m in e)
    logger.info("revoked %s (epoch %d, request %s): list v%d, logins deleted %s", order.target,
                data["entries"][order.target]["epoch"], order.request_id, rl.version, deleted)
    return RevocationOutcome(order.target, int(data["entries"][order.target]["epoch"]), order.request_id, rl.version,
                             deleted, errors, cleared)


def _apply_at_broker(
    admin: AdminDir, fleet: str, order: UnlearnOrder, order_raw: bytes, rl: RevocationList, devices: list[str],
    broker_url: str | None, timeout: float,
) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    topics = Topics(fleet)
    url = broker_url or admin.broker_url()
    with_logins = admin.broker_access() is not None
    responses: list[bytes] = []
    answered = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if topic == dynsec.RESPONSE_TOPIC:
            responses.append(payload)
            answered.set()

    transport = MqttTransport(url, f"admin-revoke-{uuid.uuid4().hex[:12]}", handler=on_message, clean_session=True,
                              tls=TlsFiles.for_url(url, admin.tls_dir))
    deleted: list[str] = []
    errors: list[str] = []
    cleared = 0
    try:
        if with_logins:
            transport.subscribe(dynsec.RESPONSE_TOPIC)
        transport.connect(timeout=timeout)
        key = admin.key()
        transport.publish(topics.unlearn(order.target), order_raw, retain=True, wait=False)
        transport.publish(topics.revocations(), codec.encode(rl, key, ADMIN_ID), retain=True, wait=False)
        if with_logins:
            logins = [order.target, companion_user(order.target)]
            transport.publish(dynsec.CONTROL_TOPIC, dynsec.command_payload([dynsec.delete_client(u) for u in logins]),
                              wait=True, timeout=timeout)
            if not answered.wait(timeout):
                errors.append("the dynamic-security plugin did not answer")
            else:
                # "not found": an earlier revoke already deleted it (re-running is harmless).
                errors += [e for e in dynsec.response_errors(responses[0]) if "not found" not in e.lower()]
                deleted = [u for u in logins if not errors]
        # The broker keeps no copy: the device's seeds (both ways), its neighbour list and hello.
        clear = [topics.seed(d, order.target) for d in devices if d != order.target]
        clear += [topics.seed(order.target, d) for d in devices if d != order.target]
        clear += [topics.membership(order.target), topics.hello(order.target)]
        for topic in clear:
            transport.publish(topic, b"", retain=True, wait=False)
        cleared = len(clear)
        if not transport.flush(timeout):
            errors.append("the broker did not confirm every publish in time")
    except HdusError as exc:
        raise TransportError(f"revoking {order.target!r} at the broker failed: {exc.message}",
                             hint="the revocation is recorded in the admin dir; run 'hdus-edge revoke' again") from None
    finally:
        transport.close()
    return tuple(deleted), tuple(errors), cleared


def reapply_all(admin: AdminDir, *, broker_url: str | None = None, timeout: float = 10.0) -> list[RevocationOutcome]:
    """``revoke`` again every revocation recorded in the admin dir (idempotent: no new list version).

    For bridged brokers once a bridge or a site broker is back: a reconnecting Mosquitto bridge
    replays the retained messages it had queued or held, which can put a forgotten device's seed
    back on a broker that was cleared meanwhile (measured in ``bench scale`` with bridge cuts)."""
    entries = revocations(admin)["entries"]
    registry = admin.registry()
    # Not a device re-admitted since (a later epoch): that would delete its new logins and mark it forgotten.
    return [revoke(admin, bytes.fromhex(e["order"]), broker_url=broker_url, timeout=timeout)
            for d, e in sorted(entries.items()) if int(registry.get(d, {}).get("epoch", 0)) <= int(e["epoch"])]


def _label(url: str) -> str:
    parsed = parse_broker_url(url)
    return f"{parsed.host}:{parsed.port}"


def retained_orders(admin: AdminDir, filters: list[str], *, broker_url: str | None = None,
                    wait_s: float = 2.0) -> dict[str, bytes]:
    """The non-empty retained messages on ``filters`` (order topics), by topic, as the admin sees them."""
    url = broker_url or admin.broker_url()
    found: dict[str, bytes] = {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        with lock:
            last[0] = time.monotonic()
            if payload:
                found[topic] = payload

    transport = MqttTransport(url, f"admin-find-{uuid.uuid4().hex[:12]}", handler=on_message, clean_session=True,
                              tls=TlsFiles.for_url(url, admin.tls_dir))
    try:
        transport.subscribe(filters)
        transport.connect(timeout=10.0)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and time.monotonic() - last[0] < 0.3:  # until retained ones stop
            time.sleep(0.05)
    finally:
        transport.close()
    with lock:
        return dict(found)


def find_self_order(admin: AdminDir, device: str, *, broker_url: str | None = None, wait_s: float = 2.0) -> bytes:
    """The admin's retained order about ``device`` (``unlearn/<device>``) or the device's own (``leave/<device>``).

    ``ConfigError`` when the broker holds no valid one: then nothing asked to forget the device yet.
    """
    topics = Topics(admin.fleet().fleet.name)
    found = retained_orders(admin, [topics.leave(device), topics.unlearn(device)], broker_url=broker_url, wait_s=wait_s)
    for topic in (topics.unlearn(device), topics.leave(device)):
        if topic in found:
            try:
                check_order(admin, found[topic])
            except HdusError as exc:
                logger.warning("ignored the order on %s: %s", topic, exc)
                continue
            return found[topic]
    raise ConfigError(f"the broker holds no valid order to forget {device!r}",
                      hint=f"the device asks with 'hdus-edge leave'; or order it: 'hdus-edge unlearn {device}'")


def pending_leaves(admin: AdminDir, *, broker_url: str | None = None, wait_s: float = 2.0) -> dict[str, bytes]:
    """Devices whose own valid order (``leave/<id>``) is on the broker and not yet revoked: id -> order."""
    topics = Topics(admin.fleet().fleet.name)
    done = {d: e["request_id"] for d, e in revocations(admin)["entries"].items()}
    pending: dict[str, bytes] = {}
    for topic, raw in retained_orders(admin, [f"{topics.root}/leave/+"], broker_url=broker_url, wait_s=wait_s).items():
        try:
            order = check_order(admin, raw)
        except HdusError as exc:
            logger.warning("ignored the order on %s: %s", topic, exc)
            continue
        if done.get(order.target) != order.request_id:
            pending[order.target] = raw
    return dict(sorted(pending.items()))
