"""The requester's side of forgetting samples: wait for the retirement, collect signed swap receipts, keep evidence.

``hdus-edge forget-samples`` retrains the device and exports a new seed version; the device's agent
publishes a signed ``SeedRetire`` (retained on ``devices/<id>/retire``) and the new seed. Holders are
the devices whose retained neighbour list names the device: each deletes the retired versions,
installs the new one and answers with a ``SwapReceipt`` signed by its own certified key. The
evidence file holds the retirement and every receipt exactly as they travelled, and the certificates
needed to check them, so anyone with the fleet admin's public key verifies it offline
(``verify_swap_evidence``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdus_edge.errors import HdusError, UnknownSenderError
from hdus_edge.files import write_json
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import DeviceCertificate, TrustStore, VerifyKey
from hdus_edge.protocol.messages import Hello, NeighborList, SeedRetire, SwapReceipt
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.request import (
    BAD_RECORD,
    evidence_trust,
    open_signed,
    read_evidence,
)

logger = logging.getLogger(__name__)

SWAP_EVIDENCE_FORMAT = 1
SWAP_KIND = "seed-retire"  # an evidence file's ``kind``: how ``hdus-edge verify`` tells it from an unlearn's
_MAX_UNVERIFIED = 10_000


@dataclass(frozen=True)
class SwapRecord:
    """One verified swap receipt and when it reached the requester."""

    receipt: SwapReceipt
    raw: bytes
    received_at: float
    received_mono: float

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {"device_id": r.device_id, "version": r.version, "held_sha256": r.held_sha256,
                "removed_sha256": r.removed_sha256, "at": r.at, "received_at": self.received_at,
                "signed": self.raw.hex()}


@dataclass(frozen=True)
class SwapOutcome:
    """What a retirement achieved: the holders' receipts, and who did not answer in time."""

    owner: str
    request_id: str
    retire: SeedRetire | None
    retire_raw: bytes
    holders: tuple[str, ...]
    receipts: tuple[SwapRecord, ...]
    certificates: tuple[DeviceCertificate, ...]
    seconds: float
    started_mono: float = 0.0
    fleet: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """Holders that sent no receipt holding the new version."""
        got = {r.receipt.device_id for r in self.receipts}
        return tuple(h for h in self.holders if h not in got)

    @property
    def complete(self) -> bool:
        return self.retire is not None and not self.missing

    @property
    def last_receipt_s(self) -> float | None:
        """Seconds from ``started_mono`` to the last holder's receipt (None if incomplete)."""
        if not self.complete:
            return None
        if not self.receipts:
            return 0.0
        return max(r.received_mono for r in self.receipts) - self.started_mono

    def evidence(self) -> dict[str, Any]:
        """The self-contained JSON evidence of this retirement."""
        r = self.retire
        signers = {rec.receipt.device_id for rec in self.receipts} | {self.owner}
        return {
            "format": SWAP_EVIDENCE_FORMAT,
            "kind": SWAP_KIND,
            "fleet": self.fleet,
            "request_id": self.request_id,
            "owner": self.owner,
            "version": r.version if r else None,
            "sha256": r.sha256 if r else None,
            "retired_sha256": list(r.retired_sha256) if r else [],
            "issued_at": r.issued_at if r else None,
            "retire": self.retire_raw.hex(),
            "holders": list(self.holders),
            "receipts": [rec.to_json() for rec in sorted(self.receipts, key=lambda x: x.receipt.device_id)],
            "missing": list(self.missing),
            "complete": self.complete,
            "seconds": self.seconds,
            "certificates": [c.to_dict() for c in self.certificates if c.device_id in signers],
        }


@dataclass
class _SwapCollector:
    trust: TrustStore
    topics: Topics
    owner: str
    request_id: str
    memberships: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    retire: tuple[SeedRetire, bytes] | None = None
    receipts: dict[str, SwapRecord] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    unverified: list[tuple[str, bytes]] = field(default_factory=list)

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if codec.is_clear(payload):
            return
        with self.changed:
            self._take(topic, payload, retry=True)
            self.changed.notify_all()

    def _take(self, topic: str, payload: bytes, retry: bool) -> None:
        try:
            signed = codec.decode(payload)
            msg = codec.verify(signed, self.trust)
            self.topics.check_matches(topic, msg)
        except UnknownSenderError:
            if retry and len(self.unverified) < _MAX_UNVERIFIED:
                self.unverified.append((topic, payload))  # verifiable once its sender's hello arrives
            return
        except HdusError as exc:
            logger.info("requester: ignored %s: %s", topic, exc.message)
            return
        if isinstance(msg, Hello):
            try:
                self.trust.certify(msg.certificate)
            except HdusError:
                return
            pending, self.unverified = self.unverified, []
            for t, p in pending:
                self._take(t, p, retry=False)
        elif isinstance(msg, NeighborList):
            held = self.memberships.get(msg.device_id)
            if held is None or msg.version > held[0]:
                self.memberships[msg.device_id] = (msg.version, frozenset(msg.neighbors))
        elif isinstance(msg, SeedRetire) and msg.request_id == self.request_id:
            self.retire = (msg, signed.raw)
        elif isinstance(msg, SwapReceipt) and msg.request_id == self.request_id and msg.owner == self.owner:
            retire = self.retire[0] if self.retire else None
            # Only a receipt that holds the new version counts (an older one may still arrive first).
            if retire is None or (msg.version >= retire.version and msg.held_sha256 == retire.sha256):
                self.receipts[msg.device_id] = SwapRecord(msg, signed.raw, time.time(), time.monotonic())

    def holders(self) -> tuple[str, ...]:
        return tuple(sorted(i for i, (_, nbrs) in self.memberships.items() if self.owner in nbrs and i != self.owner))


def collect_swap(
    *,
    broker_url: str,
    fleet: str,
    admin_key: VerifyKey,
    owner: str,
    request_id: str,
    wait_s: float = 30.0,
    settle_s: float = 0.3,
    started_mono: float | None = None,
    own_certificate: DeviceCertificate | None = None,
) -> SwapOutcome:
    """Wait up to ``wait_s`` for ``owner``'s retirement ``request_id`` and every holder's swap receipt."""
    topics = Topics(fleet)
    trust = TrustStore(fleet, admin_key)
    if own_certificate is not None:
        trust.certify(own_certificate)
    collector = _SwapCollector(trust, topics, owner, request_id)
    transport = MqttTransport(broker_url, f"{owner}-swap-{uuid.uuid4().hex[:12]}", handler=collector.handle,
                              clean_session=True)
    start = time.monotonic()
    started_mono = start if started_mono is None else started_mono
    try:
        transport.subscribe([topics.hello_filter(), f"{topics.root}/membership/+", topics.retire(owner),
                             topics.receipts_filter(request_id)])
        transport.connect(timeout=min(10.0, max(wait_s, 1.0)))
        time.sleep(min(settle_s, wait_s))  # the retained hellos and lists arrive first
        deadline = start + wait_s

        def done() -> bool:
            if collector.retire is None:
                return False
            return all(h in collector.receipts for h in collector.holders())

        with collector.changed:
            collector.changed.wait_for(done, max(0.0, deadline - time.monotonic()))
            retire = collector.retire
            holders = collector.holders()
            receipts = tuple(r for r in collector.receipts.values()
                             if retire is not None and r.receipt.version >= retire[0].version
                             and r.receipt.held_sha256 == retire[0].sha256)
            certs = tuple(trust.certificates())
    finally:
        transport.close()
    return SwapOutcome(owner, request_id, retire[0] if retire else None, retire[1] if retire else b"", holders,
                       receipts, certs, time.monotonic() - start, started_mono, fleet)


def save_swap_evidence(outcome: SwapOutcome, folder: Path) -> Path:
    """Write ``<folder>/<request_id>.json`` atomically and return its path."""
    path = Path(folder) / f"{outcome.request_id}.json"
    write_json(path, outcome.evidence())
    return path


def verify_swap_evidence(evidence: dict[str, Any] | Path, admin_key: VerifyKey, fleet: str | None = None) -> list[str]:
    """Check a swap evidence file offline; return the problems found (empty when it all verifies).

    The retirement must be signed by its owner, every receipt by a certified holder answering this
    request about this owner and holding exactly the new version; a file that claims to be complete
    must have a receipt from every holder it names. ``fleet`` defaults to the one the file names.
    """
    return _check_swap_evidence(_read(evidence), admin_key, fleet)[0]


def audit_swap_evidence(path: Path, admin_key: VerifyKey, fleet: str | None = None) -> dict[str, Any]:
    """What a saved swap evidence file proves, offline, trusting only the fleet admin's public key
    (``hdus-edge verify``). Reported fields come from the signed retirement and receipts only;
    ``complete``: every holder the requester listed sent a verified receipt."""
    evidence = _read(path)
    problems, retire, receipts = _check_swap_evidence(evidence, admin_key, fleet)
    holders = [h for h in evidence.get("holders", []) if isinstance(h, str)]
    got = {r.device_id for r in receipts}
    return {
        "file": str(path), "kind": SWAP_KIND, "fleet": fleet or evidence.get("fleet"),
        "verified": not problems, "complete": not problems and all(h in got for h in holders),
        "request_id": retire.request_id if retire else None, "owner": retire.owner if retire else None,
        "version": retire.version if retire else None, "sha256": retire.sha256 if retire else None,
        "retired_sha256": list(retire.retired_sha256) if retire else [],
        "issued_at": retire.issued_at if retire else None, "reason": retire.reason if retire else None,
        "holders": holders, "missing": [h for h in holders if h not in got],
        "receipts": [{"device_id": r.device_id, "at": r.at, "version": r.version, "held_sha256": r.held_sha256,
                      "removed_sha256": r.removed_sha256} for r in receipts],
        "problems": problems,
    }


def _read(evidence: dict[str, Any] | Path) -> dict[str, Any]:
    return evidence if isinstance(evidence, dict) else read_evidence(evidence)


def _check_swap_evidence(evidence: dict[str, Any], admin_key: VerifyKey,
                         fleet: str | None) -> tuple[list[str], SeedRetire | None, list[SwapReceipt]]:
    problems: list[str] = []
    fleet = fleet or evidence.get("fleet")
    if not isinstance(fleet, str):
        return ["the evidence names no fleet (give --fleet)"], None, []
    trust = evidence_trust(evidence, fleet, admin_key, problems)
    try:
        retire = open_signed(evidence["retire"], trust)
    except BAD_RECORD as exc:
        return problems + [f"retirement: {getattr(exc, 'message', exc)}"], None, []
    if (not isinstance(retire, SeedRetire) or retire.request_id != evidence.get("request_id")
            or retire.owner != evidence.get("owner") or retire.sha256 != evidence.get("sha256")):
        return problems + ["the retirement is not this request's"], None, []
    verified: dict[str, SwapReceipt] = {}
    for rec in evidence.get("receipts", []):
        who = rec.get("device_id") if isinstance(rec, dict) else None
        try:
            msg = open_signed(rec["signed"], trust)
        except BAD_RECORD as exc:
            problems.append(f"receipt of {who!r}: {getattr(exc, 'message', exc)}")
            continue
        if not isinstance(msg, SwapReceipt) or msg.request_id != retire.request_id or msg.owner != retire.owner:
            problems.append(f"receipt of {who!r} answers another request")
        elif msg.device_id != who or msg.held_sha256 != rec.get("held_sha256") or msg.version != rec.get("version"):
            problems.append(f"receipt of {who!r}: the summary differs from the signed receipt")
        elif msg.held_sha256 != retire.sha256 or msg.version < retire.version:
            problems.append(f"receipt of {who!r}: it holds version {msg.version}, not the new version {retire.version}")
        elif msg.removed_sha256 is not None and msg.removed_sha256 not in retire.retired_sha256:
            problems.append(f"receipt of {who!r}: it removed a version the retirement does not name")
        else:
            verified[msg.device_id] = msg
    if evidence.get("complete") and set(evidence.get("holders", [])) - set(verified):
        problems.append("the file claims to be complete but some holders have no valid receipt")
    return problems, retire, [verified[d] for d in sorted(verified)]
