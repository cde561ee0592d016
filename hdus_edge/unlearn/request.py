"""The requester's side of forgetting: publish a signed unlearn order, collect signed receipts, keep evidence.

The admin (``hdus-edge unlearn``) or the device itself (``hdus-edge leave``) signs the order. Holders
are the devices whose neighbour list names the target: each must answer with a receipt signed by its
own certified key. With the admin's registry (``expected``: every provisioned, non-forgotten device and
its provisioned neighbour list), the holder set does not depend on how fast the broker hands over
retained lists: the requester waits for each expected device's retained list and falls back to the
provisioned one for a device whose list never came (a broker that lost its retained state, a device
that never ran), so such a device is named among the ``missing`` instead of silently left out. A
device that was offline answers when it returns (its receipt is retained; ``hdus-edge receipts``). The evidence file holds the order, every receipt exactly as it
travelled, and the certificates needed to check them, so anyone with the fleet admin's public key can
verify it offline (``verify_evidence``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.errors import ConfigError, HdusError
from hdus_edge.files import write_json
from hdus_edge.protocol import codec
from hdus_edge.protocol.codec import SignedMessage
from hdus_edge.protocol.crypto import (
    DeviceCertificate,
    SigningKey,
    TrustStore,
    VerifyKey,
)
from hdus_edge.protocol.listener import RetainedListener
from hdus_edge.protocol.messages import (
    Message,
    Receipt,
    UnlearnOrder,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles

logger = logging.getLogger(__name__)

EVIDENCE_FORMAT = 1


@dataclass(frozen=True)
class ReceiptRecord:
    """One verified receipt and when it reached the requester."""

    receipt: Receipt
    raw: bytes
    received_at: float
    received_mono: float = 0.0  # time.monotonic() at arrival, for latency figures

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "device_id": r.device_id,
            "removed_sha256": r.removed_sha256,
            "held": r.removed_sha256 is not None,
            "members_after": list(r.members_after),
            "at": r.at,
            "received_at": self.received_at,
            "signed": self.raw.hex(),
        }


@dataclass(frozen=True)
class UnlearnOutcome:
    """What a request achieved: receipts from holders, and who did not answer in time."""

    order: UnlearnOrder
    order_raw: bytes
    holders: tuple[str, ...]
    receipts: tuple[ReceiptRecord, ...]
    certificates: tuple[DeviceCertificate, ...]
    seconds: float
    published_mono: float = 0.0  # time.monotonic() when the order was handed to the broker
    fleet: str = ""  # the fleet's name: certificates are issued per fleet
    # Holders forgotten themselves while this order was out (another order, or their own leave),
    # with the signed order that forgot them: they owe no receipt, and the evidence says why.
    released: tuple[tuple[str, bytes], ...] = ()

    @property
    def latency_s(self) -> float | None:
        """Seconds from publishing the order to the last holder's receipt (None if incomplete)."""
        if not self.complete or not self.holders:
            return None
        arrivals = [r.received_mono for r in self.receipts if r.receipt.device_id in self.holders]
        return max(arrivals) - self.published_mono if arrivals else None

    @property
    def missing(self) -> tuple[str, ...]:
        """Holders that sent no receipt."""
        got = {r.receipt.device_id for r in self.receipts} | {d for d, _ in self.released}
        return tuple(h for h in self.holders if h not in got)

    @property
    def complete(self) -> bool:
        return not self.missing

    def evidence(self) -> dict[str, Any]:
        """The self-contained JSON evidence of this request."""
        signers = {r.receipt.device_id for r in self.receipts} | {self.order.issuer} | {d for d, _ in self.released}
        return {
            "format": EVIDENCE_FORMAT,
            "fleet": self.fleet,
            "request_id": self.order.request_id,
            "target": self.order.target,
            "issuer": self.order.issuer,
            "reason": self.order.reason,
            "issued_at": self.order.issued_at,
            "order": self.order_raw.hex(),
            "holders": list(self.holders),
            "receipts": [r.to_json() for r in sorted(self.receipts, key=lambda r: r.receipt.device_id)],
            "released": [{"device_id": d, "order": raw.hex()} for d, raw in self.released],
            "missing": list(self.missing),
            "complete": self.complete,
            "seconds": self.seconds,
            "certificates": [c.to_dict() for c in self.certificates if c.device_id in signers],
        }


class _Collector(RetainedListener):
    """Hellos, neighbour lists and orders (the fleet's state), and one request's receipts."""

    def __init__(self, trust: TrustStore, topics: Topics, request_id: str) -> None:
        super().__init__(trust, topics, "requester")
        self.request_id = request_id
        self.forgotten: dict[str, int] = {}  # device -> highest epoch a valid order forgot
        self.forgetting_orders: dict[str, bytes] = {}  # device -> that order, as signed
        self.receipts: dict[str, ReceiptRecord] = {}

    def on_verified(self, topic: str, signed: SignedMessage, msg: Message) -> None:
        if isinstance(msg, UnlearnOrder):
            if msg.epoch >= self.forgotten.get(msg.target, -1):
                self.forgotten[msg.target] = msg.epoch
                self.forgetting_orders[msg.target] = signed.raw
        elif isinstance(msg, Receipt) and msg.request_id == self.request_id:
            self.receipts.setdefault(msg.device_id, ReceiptRecord(msg, signed.raw, time.time(), time.monotonic()))

    def is_forgotten(self, device_id: str) -> bool:
        """True when a valid retained order forgot ``device_id``'s current incarnation."""
        epoch = self.forgotten.get(device_id)
        return epoch is not None and (device_id not in self.trust or epoch >= self.trust.epoch_of(device_id))


def request_unlearn(
    *,
    broker_url: str,
    fleet: str,
    admin_key: VerifyKey,
    signer: SigningKey,
    issuer: str,
    target: str,
    epoch: int,
    reason: str = "right to be forgotten",
    wait_s: float = 30.0,
    own_certificate: DeviceCertificate | None = None,
    settle_s: float = 0.3,
    tls: TlsFiles | None = None,
    client_id: str | None = None,
    expected: Mapping[str, tuple[str, ...]] | None = None,
) -> UnlearnOutcome:
    """Publish the order to forget ``target`` and collect receipts from every holder for ``wait_s``.

    ``expected`` (the admin's registry): device id -> provisioned neighbours of every provisioned,
    non-forgotten device. The requester then waits (at most ``min(2, wait_s / 2)`` s) for each one's
    retained neighbour list, and decides with the provisioned list for those whose list never came.
    Without it, holders are the devices whose retained lists arrived within a quiet window.
    """
    topics = Topics(fleet)
    trust = TrustStore(fleet, admin_key)
    if own_certificate is not None:
        trust.certify(own_certificate)
    order = UnlearnOrder(target, issuer, uuid.uuid4().hex, time.time(), reason, epoch)
    collector = _Collector(trust, topics, order.request_id)
    transport = MqttTransport(broker_url, client_id or f"{issuer}-req-{order.request_id[:12]}", handler=collector.handle,
                              clean_session=True, tls=tls)
    start = time.monotonic()
    try:
        transport.subscribe([*topics.fleet_state_filters(), topics.receipts_filter(order.request_id)])
        transport.connect(timeout=min(10.0, max(wait_s, 1.0)))
        if expected is None:
            collector.settle(settle_s, max_s=min(5.0, wait_s))
        else:
            wanted = set(expected) - {target}
            with collector.changed:
                # Retained lists come right after the subscription; a device whose list is not there
                # by then (never ran, or the broker lost it) is judged by its provisioned list.
                collector.changed.wait_for(lambda: wanted <= set(collector.memberships), min(2.0, wait_s / 2))
        with collector.changed:
            holders = decide_holders(target, {i: nbrs for i, (_, nbrs) in collector.memberships.items()},
                                     expected, collector.is_forgotten)
        raw = codec.encode(order, signer, issuer)
        sent_at = time.monotonic()
        if not transport.publish(topics.order(order), raw, retain=True, wait=True, timeout=min(10.0, wait_s)):
            logger.warning("requester: the broker did not confirm the order yet; it stays queued")
        deadline = start + wait_s

        def answered(h: str) -> bool:  # or forgotten meanwhile (several orders out at once)
            return h in collector.receipts or collector.is_forgotten(h)

        with collector.changed:
            collector.changed.wait_for(lambda: all(answered(h) for h in holders), max(0.0, deadline - time.monotonic()))
            receipts = tuple(collector.receipts.values())
            released = tuple((h, collector.forgetting_orders[h]) for h in holders
                             if h not in collector.receipts and collector.is_forgotten(h))
            certs = tuple(trust.certificates())
    finally:
        transport.close()
    return UnlearnOutcome(order, raw, holders, receipts, certs, time.monotonic() - start, sent_at, fleet, released)


def decide_holders(
    target: str,
    lists: Mapping[str, frozenset[str]],
    expected: Mapping[str, tuple[str, ...]] | None,
    is_forgotten: Any,
) -> tuple[str, ...]:
    """The devices that must answer an order about ``target``, sorted.

    ``lists`` are the verified retained neighbour lists; ``expected`` (the registry, when known)
    adds every provisioned device whose list did not arrive, judged by its provisioned neighbours.
    Devices forgotten by a valid order (``is_forgotten``) answer nothing, nor do those the registry
    no longer lists: a forgotten device's retained list outlives it, and its retained order can
    arrive after the lists the requester waited for.
    """
    chosen = {i for i, nbrs in lists.items() if target in nbrs and (expected is None or i in expected)}
    if expected is not None:
        chosen |= {i for i, nbrs in expected.items() if i not in lists and target in nbrs}
    return tuple(sorted(i for i in chosen if i != target and not is_forgotten(i)))


def collect_receipts(
    *, broker_url: str, fleet: str, admin_key: VerifyKey, request_id: str, wait_s: float = 2.0,
    tls: TlsFiles | None = None, client_id: str | None = None,
) -> dict[str, ReceiptRecord]:
    """The receipts the broker holds (retained) for ``request_id``, verified, by device id."""
    topics = Topics(fleet)
    collector = _Collector(TrustStore(fleet, admin_key), topics, request_id)
    transport = MqttTransport(broker_url, client_id or f"receipts-{uuid.uuid4().hex[:12]}", handler=collector.handle,
                              clean_session=True, tls=tls)
    try:
        transport.subscribe([topics.hello_filter(), topics.receipts_filter(request_id)])
        transport.connect(timeout=10.0)
        collector.settle(0.3, max_s=wait_s)
        with collector.changed:
            return dict(collector.receipts)
    finally:
        transport.close()


def save_evidence(outcome: UnlearnOutcome, path: Path) -> Path:
    """Write the evidence JSON atomically and return its path."""
    write_json(path, outcome.evidence())
    return path


def read_evidence(path: Path) -> dict[str, Any]:
    """An evidence file's JSON object; ``ConfigError`` (exit 2) when it cannot be read as one."""
    try:
        evidence = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read evidence {path}: {exc}") from None
    if not isinstance(evidence, dict):
        raise ConfigError(f"evidence {path} is not a JSON object")
    return evidence


def verify_evidence(evidence: dict[str, Any] | Path, admin_key: VerifyKey, fleet: str | None = None) -> list[str]:
    """Check an evidence file offline; return the problems found (empty when it all verifies).

    Verifies the order (signed by the admin or the target itself, and the summary fields equal to
    the signed ones) and every receipt: signed by a device whose certificate the fleet admin signed,
    answering this request about this target, one per device, and its summary equal to what was
    signed. ``fleet`` defaults to the evidence's own ``fleet`` field (certificates name their fleet,
    so a changed field fails them). Only the admin's public key is trusted; everything else in the
    file is checked against it.
    """
    return check_evidence(evidence, admin_key, fleet).problems


@dataclass(frozen=True)
class EvidenceCheck:
    """What an evidence file proves: the verified order and receipts (signed content only), and
    every problem found; ``verified`` when there is none."""

    order: UnlearnOrder | None
    receipts: tuple[Receipt, ...]
    problems: list[str]
    # Receipts whose signature verifies and that answer this request, whatever the file's summary of
    # them says (a viewer shows signed content; an auditor's verdict still counts the summary).
    signed: tuple[Receipt, ...] = ()
    # Holders a valid order forgot while this one was out: they owe no receipt.
    released: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return self.order is not None and not self.problems


# What a malformed record in an evidence file raises while it is opened: reported, never a crash.
BAD_RECORD = (HdusError, KeyError, TypeError, ValueError, AttributeError)


def evidence_trust(evidence: dict[str, Any], fleet: str, admin_key: VerifyKey, problems: list[str]) -> TrustStore:
    """The fleet admin's trust, with every certificate the evidence carries that the admin signed
    (each one that does not verify is added to ``problems``)."""
    trust = TrustStore(fleet, admin_key)
    for cert in evidence.get("certificates", []):
        try:
            trust.certify(DeviceCertificate.from_dict(cert))
        except BAD_RECORD as exc:
            who = cert.get("device_id") if isinstance(cert, dict) else None
            problems.append(f"certificate of {who!r}: {getattr(exc, 'message', exc)}")
    return trust


def open_signed(hex_text: Any, trust: TrustStore) -> Message:
    """One signed message an evidence file carries as hex, decoded and verified (raises ``BAD_RECORD``)."""
    return codec.verify(codec.decode(bytes.fromhex(hex_text)), trust)


def check_evidence(evidence: dict[str, Any] | Path, admin_key: VerifyKey, fleet: str | None = None) -> EvidenceCheck:
    """``verify_evidence`` with the verified order and receipts kept (see there for the checks)."""
    if isinstance(evidence, Path):
        evidence = read_evidence(evidence)
    problems: list[str] = []
    fleet = fleet or evidence.get("fleet")
    if not isinstance(fleet, str) or not fleet:
        return EvidenceCheck(None, (), ["the evidence names no fleet (pass the fleet's name)"])
    trust = evidence_trust(evidence, fleet, admin_key, problems)
    try:
        order = open_signed(evidence["order"], trust)
        if not isinstance(order, UnlearnOrder) or order.request_id != evidence["request_id"]:
            problems.append("the order is not this request's unlearn order")
            return EvidenceCheck(None, (), problems)
    except BAD_RECORD as exc:
        problems.append(f"order: {getattr(exc, 'message', exc)}")
        return EvidenceCheck(None, (), problems)
    for key, value in (("target", order.target), ("issuer", order.issuer), ("reason", order.reason),
                       ("issued_at", order.issued_at)):
        if evidence.get(key) != value:
            problems.append(f"order: the summary's {key} differs from the signed order")
    good: dict[str, Receipt] = {}
    signed: dict[str, Receipt] = {}
    for rec in evidence.get("receipts", []):
        who = rec.get("device_id") if isinstance(rec, dict) else None
        try:
            msg = open_signed(rec["signed"], trust)
        except BAD_RECORD as exc:
            problems.append(f"receipt of {who!r}: {getattr(exc, 'message', exc)}")
            continue
        if not isinstance(msg, Receipt) or msg.request_id != order.request_id or msg.target != order.target:
            problems.append(f"receipt of {who!r} answers another request")
        elif msg.device_id in signed:
            problems.append(f"receipt of {who!r}: a second receipt from the same device")
        else:
            signed[msg.device_id] = msg
            if (msg.device_id != who or msg.removed_sha256 != rec.get("removed_sha256")
                    or list(msg.members_after) != rec.get("members_after") or msg.at != rec.get("at")
                    or rec.get("held") != (msg.removed_sha256 is not None)):
                problems.append(f"receipt of {who!r}: the summary differs from the signed receipt")
            else:
                good[msg.device_id] = msg
    released: list[str] = []
    for rec in evidence.get("released", []):
        who = rec.get("device_id") if isinstance(rec, dict) else None
        try:
            other = open_signed(rec["order"], trust)
        except BAD_RECORD as exc:
            problems.append(f"release of {who!r}: {getattr(exc, 'message', exc)}")
            continue
        # It must be a valid order forgetting that very device (its current certificate's epoch).
        if (not isinstance(other, UnlearnOrder) or other.target != who or who == order.target
                or (who in trust and other.epoch < trust.epoch_of(who))):
            problems.append(f"release of {who!r}: the order does not forget that device")
        elif who in good:
            problems.append(f"release of {who!r}: it also sent a receipt")
        else:
            released.append(who)
    return EvidenceCheck(order, tuple(good[d] for d in sorted(good)), problems, tuple(signed[d] for d in sorted(signed)),
                         tuple(sorted(released)))
