"""The fleet as the admin sees it: broker messages + the admin dir in, a typed ``FleetSnapshot`` out (pure).

``build_snapshot`` trusts only what verifies with the fleet admin's key, exactly as a device does: every
message goes through the protocol's one codec (``codec.decode`` then ``codec.verify``) and must belong on
its topic (``Topics.check_matches``). A message that does not is listed as rejected with its reason (the
error's class name, as the agents count them) and its message, and changes nothing else; one whose
sender has not announced itself yet is listed as parked, as an agent parks it. Presence
(``online``/``offline``) is the transport's unsigned broker state and is shown as such.

What each field means:

- a device is ``forgotten`` when a verified unlearn order (retained on ``unlearn/<id>`` or carried in a
  device's tombstone digest) names it at an epoch at least its current one (the registry's, else its
  certificate's);
- its ``members`` are the neighbours whose verified seed for it the broker holds (holders clear their
  inbox copy of a forgotten seed, so this follows an unlearn); its own seed is the newest verified
  seed it published to anyone;
- a request's ``holders`` come from the admin's evidence file when there is one, else from the
  retained neighbour lists that name the target (as the requester computes them); a receipt's
  ``latency_s`` is its signed time minus the order's signed time (two clocks).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hdus_edge.errors import HdusError, ProtocolError, UnknownSenderError
from hdus_edge.protocol import codec
from hdus_edge.protocol import topics as kinds
from hdus_edge.protocol.crypto import TrustStore, VerifyKey
from hdus_edge.protocol.fields import ADMIN_ID, is_device_id
from hdus_edge.protocol.messages import (
    Hello,
    Receipt,
    RevocationList,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import PRESENCE_OFFLINE, PRESENCE_ONLINE

MAX_LISTED_REJECTIONS = 200  # the page lists this many; the counts by reason cover them all
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class BrokerMessage:
    """The latest payload the broker gave for one topic, and when it reached the dashboard.

    ``live`` is False for a retained copy handed over on subscribe (its arrival says nothing about
    when its author was last seen), True for a message published while the dashboard listened.
    """

    topic: str
    payload: bytes
    received_at: float
    live: bool = False


@dataclass(frozen=True)
class AdminView:
    """What the fleet admin's directory says (and, where given, the agents' own status files).

    ``registry``: ``devices.json`` (id -> profile, epoch, public key, ...); ``evidence``: the unlearn
    evidence files the admin saved; ``agent_status``: device id -> its agent's ``status.json``.
    """

    fleet: str
    admin_key: VerifyKey
    registry: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evidence: tuple[Mapping[str, Any], ...] = ()
    agent_status: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # admin-dir files that could not be read (shown, never fatal)


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    profile: str | None
    registered: bool  # in the admin's devices.json
    announced: bool  # a verified hello is on the broker
    online: bool | None  # presence; None when the broker holds none
    epoch: int | None
    forgotten: bool
    forgotten_by: str | None  # the request id that forgot it
    main_arch: str | None
    seed_arch: str | None
    seed_version: int | None
    seed_sha256: str | None
    neighbors: tuple[str, ...]
    members: tuple[str, ...]
    members_source: str  # "agent": its running agent's status file says so; "broker": the seeds the broker holds for it
    last_seen: float | None
    agent: Mapping[str, Any] | None  # counters from the agent's status.json, where the admin can read it


@dataclass(frozen=True)
class Edge:
    """``device`` lists ``neighbor``: it wants ``neighbor``'s seed; ``seeded`` when the broker holds it."""

    device: str
    neighbor: str
    seeded: bool


@dataclass(frozen=True)
class ReceiptRow:
    device_id: str
    removed_sha256: str | None
    held: bool
    members_after: tuple[str, ...]
    at: float
    latency_s: float | None
    sources: tuple[str, ...]  # "broker" and/or "evidence"


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    target: str | None
    issuer: str | None
    issued_at: float | None
    reason: str | None
    holders: tuple[str, ...]
    receipts: tuple[ReceiptRow, ...]
    missing: tuple[str, ...]
    complete: bool
    latency_s: float | None  # order -> last holder's receipt, when complete
    applied_by: tuple[str, ...]  # devices whose tombstone digest carries the order
    evidence_file: str | None


@dataclass(frozen=True)
class Rejection:
    topic: str
    reason: str
    detail: str
    received_at: float


@dataclass(frozen=True)
class FleetSnapshot:
    fleet: str
    generated_at: float
    devices: tuple[DeviceRow, ...]
    edges: tuple[Edge, ...]
    requests: tuple[RequestRow, ...]
    rejected: tuple[Rejection, ...]
    parked: tuple[Rejection, ...]
    reasons: Mapping[str, int]  # rejections seen by the dashboard, by reason
    agent_reasons: Mapping[str, Mapping[str, int]]  # device -> its agent's rejections by reason
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON of ``/api/fleet.json`` and of every pushed update."""
        out = asdict(self)
        out["rejected_total"] = len(self.rejected)
        out["rejected"] = out["rejected"][:MAX_LISTED_REJECTIONS]
        return out


class VerifyMemo:
    """Remembers decode and verify outcomes between snapshots, so an unchanged message is checked once.

    A 100-device fleet keeps ~10k retained seeds on the broker; checking them all again on every change
    took seconds, past the page's one-second promise. Decoding depends on the bytes only; verifying on
    the bytes, the recipient and the trust (every certificate held), so verified outcomes are kept for
    one trust state and dropped when it changes. After each snapshot only the entries it used are kept,
    so the memo is bounded by what the broker holds. Outcomes are the same as without it: a memo entry
    is the value or the ``ProtocolError`` the codec gave for exactly these inputs.
    """

    def __init__(self) -> None:
        self._tables: dict[str, dict[Any, Any]] = {"hello": {}, "verify": {}, "digest": {}, "evidence": {}}
        self._used: dict[str, dict[Any, Any]] = {name: {} for name in self._tables}
        self._trust_state: tuple[Any, ...] | None = None

    def call(self, table: str, key: Any, compute: Any) -> Any:
        """``compute()``'s value for ``key`` (its ``ProtocolError`` re-raised), computed at most once."""
        held = self._tables[table]
        if key in held:
            outcome = held[key]
        else:
            try:
                outcome = compute()
            except ProtocolError as exc:
                outcome = exc
            held[key] = outcome
        self._used[table][key] = outcome
        if isinstance(outcome, ProtocolError):
            raise outcome
        return outcome

    def trust_is(self, state: tuple[Any, ...]) -> None:
        """Forget verified outcomes unless the trust is ``state`` (the certificates held) as before."""
        if state != self._trust_state:
            self._trust_state = state
            self._tables["verify"].clear()
            self._tables["digest"].clear()

    def done(self) -> None:
        """End of one snapshot: keep only what it used."""
        self._tables, self._used = self._used, {name: {} for name in self._tables}


@dataclass
class _Verified:
    topic: str
    msg: Any
    received_at: float
    live: bool


@dataclass(frozen=True)
class _SeedSummary:
    """A verified seed's header: what the view needs, without the ONNX bytes (the memo keeps thousands)."""

    owner: str
    to: str
    version: int
    sha256: str
    arch: str
    epoch: int

    @classmethod
    def of(cls, env: SeedEnvelope) -> _SeedSummary:
        return cls(env.owner, env.to, env.version, env.sha256, env.arch, env.epoch)


def build_snapshot(
    admin: AdminView, messages: Sequence[BrokerMessage], now: float | None = None, memo: VerifyMemo | None = None
) -> FleetSnapshot:
    """The fleet view of ``messages`` (the broker's latest payload per topic) checked with ``admin``'s trust.

    Never raises for anything a message or an evidence file holds: such input becomes a rejection.
    ``memo`` (kept by the caller from one snapshot to the next) saves checking unchanged messages again.
    """
    memo = memo or VerifyMemo()
    topics = Topics(admin.fleet)
    trust = TrustStore(admin.fleet, admin.admin_key)
    rejected: list[Rejection] = []
    parked: list[Rejection] = []
    presence: dict[str, tuple[bool, BrokerMessage]] = {}
    pending: list[tuple[str, BrokerMessage]] = []
    hellos: dict[str, _Verified] = {}

    def refuse(m: BrokerMessage, exc: Exception, into: list[Rejection] | None = None) -> None:
        detail = exc.message if isinstance(exc, HdusError) else str(exc)
        (rejected if into is None else into).append(
            Rejection(m.topic[-200:], type(exc).__name__, detail[:_DETAIL_CHARS], m.received_at))

    def check(m: BrokerMessage, recipient: str | None = None) -> Any:
        # decode -> verify signer and authority -> belongs on its topic; a seed is kept without its ONNX.
        msg = codec.verify(codec.decode(m.payload), trust, recipient=recipient)
        topics.check_matches(m.topic, msg)
        return _SeedSummary.of(msg) if isinstance(msg, SeedEnvelope) else msg

    # 1. Topics: ours, and of a known kind; presence is plain text.
    for m in sorted(messages, key=lambda m: m.topic):
        if codec.is_clear(m.payload):
            continue
        device = topics.parse_presence(m.topic)
        if device is not None:
            if m.payload in (PRESENCE_ONLINE, PRESENCE_OFFLINE):
                presence[device] = (m.payload == PRESENCE_ONLINE, m)
            else:
                refuse(m, ProtocolError(f"presence must be 'online' or 'offline', got {len(m.payload)} other bytes"))
            continue
        try:
            pending.append((topics.parse(m.topic).kind, m))
        except ProtocolError as exc:
            refuse(m, exc)

    # 2. Hellos: certificates the admin signed become the trust every other message is checked with.
    for kind, m in pending:
        if kind != kinds.HELLO:
            continue
        try:
            # Checked against the admin's key alone: the outcome never depends on the trust held.
            msg = memo.call("hello", (m.topic, m.payload), lambda m=m: check(m))
            assert isinstance(msg, Hello)
            trust.certify(msg.certificate)
        except ProtocolError as exc:
            refuse(m, exc)
            continue
        hellos[msg.device_id] = _Verified(m.topic, msg, m.received_at, m.live)

    # 3. Everything else, with that trust.
    memo.trust_is(tuple(trust.certificates()))
    verified: dict[str, list[_Verified]] = defaultdict(list)
    for kind, m in pending:
        if kind == kinds.HELLO:
            continue
        try:
            recipient = topics.parse(m.topic).to if kind == kinds.SEED else None
            msg = memo.call("verify", (m.topic, m.payload), lambda m=m, to=recipient: check(m, to))
        except UnknownSenderError as exc:
            refuse(m, exc, parked)
            continue
        except ProtocolError as exc:
            refuse(m, exc)
            continue
        verified[kind].append(_Verified(m.topic, msg, m.received_at, m.live))

    def current_epoch(device: str) -> int:
        entry = admin.registry.get(device)
        if isinstance(entry, Mapping) and isinstance(entry.get("epoch"), int):
            return int(entry["epoch"])
        return trust.epoch_of(device) if device in trust else 0

    # 4. Orders: retained ones, and those the devices' digests carry (each verified on its own authority).
    orders: dict[str, UnlearnOrder] = {}
    applied_by: dict[str, set[str]] = defaultdict(set)
    for v in verified[kinds.UNLEARN]:
        orders[v.msg.request_id] = v.msg
    for v in verified[kinds.TOMBSTONES]:
        digest: TombstoneDigest = v.msg
        accepted, bad = memo.call("digest", digest, lambda d=digest: codec.open_digest(d, trust))
        for signed_order in accepted:
            order = signed_order.msg
            orders.setdefault(order.request_id, order)
            applied_by[order.request_id].add(digest.device_id)
        for index, exc in bad:
            refuse(BrokerMessage(f"{v.topic} [order {index}]", b"", v.received_at), exc)
    evidence = _read_evidence(admin, refuse, memo)
    for rid, e in evidence.items():
        orders.setdefault(rid, e.order)
    forgotten_by: dict[str, UnlearnOrder] = {}
    for order in sorted(orders.values(), key=lambda o: (o.issued_at, o.request_id)):
        if order.epoch >= current_epoch(order.target):
            forgotten_by.setdefault(order.target, order)

    # 5. Neighbour lists and seeds.
    neighbors = {v.msg.device_id: tuple(v.msg.neighbors) for v in verified[kinds.MEMBERSHIP]}
    inbox: dict[str, set[str]] = defaultdict(set)
    own_seed: dict[str, _SeedSummary] = {}
    for v in verified[kinds.SEED]:
        env: _SeedSummary = v.msg
        order = forgotten_by.get(env.owner)
        if order is not None and env.epoch <= order.epoch:
            refuse(BrokerMessage(v.topic, b"", v.received_at),
                   ProtocolError(f"seed of {env.owner!r} is still on the broker after request {order.request_id} forgot it"))
            continue
        if env.owner not in neighbors.get(env.to, (env.owner,)):
            continue  # offered but not wanted: the recipient does not list the owner (any more)
        inbox[env.to].add(env.owner)
        held = own_seed.get(env.owner)
        if held is None or env.version > held.version:
            own_seed[env.owner] = env

    # 6. Receipts, evidence, requests.
    requests = _requests(orders, evidence, verified[kinds.RECEIPT], neighbors, forgotten_by, applied_by, refuse)

    # 7. Devices.
    last_seen: dict[str, float] = {}

    def seen(device: str, at: float) -> None:
        last_seen[device] = max(at, last_seen.get(device, 0.0))

    for group in verified.values():
        for v in group:
            if v.live:
                seen(_author(v.msg), v.received_at)
            if isinstance(v.msg, Receipt):
                seen(v.msg.device_id, v.msg.at)
    for device, (_, m) in presence.items():
        if m.live:
            seen(device, m.received_at)
    for device, v in hellos.items():
        if v.live:
            seen(device, v.received_at)
    ids = sorted(set(admin.registry) | set(hellos) | set(neighbors) | set(presence))
    devices = []
    for device in ids:
        reg = admin.registry.get(device)
        reg = reg if isinstance(reg, Mapping) else None
        hello = hellos[device].msg if device in hellos else None
        order = forgotten_by.get(device)
        seed = own_seed.get(device)
        status = admin.agent_status.get(device)
        members, members_source = _members(device, order is not None, inbox, forgotten_by, status,
                                           presence.get(device, (None,))[0])
        devices.append(DeviceRow(
            device_id=device,
            profile=(hello.profile if hello else None) or (str(reg.get("profile")) if reg and reg.get("profile") else None),
            registered=reg is not None,
            announced=hello is not None,
            online=presence[device][0] if device in presence else None,
            epoch=current_epoch(device) if (reg is not None or hello is not None) else None,
            forgotten=order is not None,
            forgotten_by=order.request_id if order else None,
            main_arch=hello.main_arch if hello else None,
            seed_arch=seed.arch if seed else (hello.seed_arch if hello else None),
            seed_version=seed.version if seed else None,
            seed_sha256=seed.sha256 if seed else None,
            neighbors=neighbors.get(device, ()),
            members=members,
            members_source=members_source,
            last_seen=last_seen.get(device),
            agent=_agent_counters(status),
        ))
    edges = tuple(
        Edge(i, j, j in inbox.get(i, ()) and i not in forgotten_by and j not in forgotten_by)
        for i in sorted(neighbors) for j in neighbors[i]
    )
    agent_reasons = {r.device_id: dict(r.agent["reasons"]) for r in devices
                     if r.agent and isinstance(r.agent.get("reasons"), Mapping)}
    memo.done()
    return FleetSnapshot(
        fleet=admin.fleet,
        generated_at=time.time() if now is None else now,
        devices=tuple(devices),
        edges=edges,
        requests=requests,
        rejected=tuple(rejected),
        parked=tuple(parked),
        reasons=dict(sorted(Counter(r.reason for r in rejected).items())),
        agent_reasons=agent_reasons,
        problems=admin.problems,
    )


def _members(device: str, forgotten: bool, inbox: Mapping[str, set[str]], forgotten_by: Mapping[str, UnlearnOrder],
             status: Mapping[str, Any] | None, online: bool | None) -> tuple[tuple[str, ...], str]:
    """Whose seeds ``device`` runs: its running agent's own word when the admin can read it, else what
    the broker holds for it (a seed the agent refused, e.g. for a wrong reference set, is on the broker
    but not in its ensemble)."""
    if forgotten:
        return (), "broker"
    listed = status.get("members") if isinstance(status, Mapping) else None
    if online and isinstance(status, Mapping) and status.get("connected") is True and isinstance(listed, list) \
            and all(is_device_id(m) for m in listed):
        return tuple(sorted(listed)), "agent"
    return tuple(sorted(j for j in inbox.get(device, ()) if j not in forgotten_by)), "broker"


def _author(msg: Any) -> str:
    if isinstance(msg, _SeedSummary):
        return msg.owner
    if isinstance(msg, UnlearnOrder):
        return msg.issuer
    if isinstance(msg, RevocationList):
        return ADMIN_ID  # only the admin signs the revocation list
    return msg.device_id


def _agent_counters(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not isinstance(status, Mapping) or not isinstance(status.get("counters"), Mapping):
        return None
    counters = status["counters"]
    keep = {k: v for k, v in counters.items() if isinstance(v, int) and not isinstance(v, bool)}
    reasons = counters.get("reasons")
    if isinstance(reasons, Mapping):
        keep["reasons"] = {str(k): v for k, v in reasons.items() if isinstance(v, int)}
    parked = status.get("parked")
    if isinstance(parked, dict) and isinstance(parked.get("messages"), int):
        keep["parked"] = parked["messages"]
    keep["updated_at"] = status.get("updated_at") if isinstance(status.get("updated_at"), (int, float)) else None
    return keep


@dataclass(frozen=True)
class _Evidence:
    """A saved evidence file, as far as it verifies: the signed order and the signed receipts in it."""

    order: UnlearnOrder
    holders: tuple[str, ...]
    receipts: tuple[Receipt, ...]
    file: str | None


def _read_evidence(admin: AdminView, refuse: Callable[[BrokerMessage, Exception], None],
                   memo: VerifyMemo) -> dict[str, _Evidence]:
    """Evidence files by request id; every field shown comes from a signed message that verified.

    An evidence file carries its own certificates, so its outcome depends on its content alone: the
    memo keeps it (keyed by the content) across snapshots and trust changes.
    """
    out: dict[str, _Evidence] = {}
    for ev in admin.evidence:
        rid = ev.get("request_id") if isinstance(ev, Mapping) else None
        if not isinstance(rid, str):
            continue
        where = BrokerMessage(f"evidence {str(ev.get('file', rid))[-150:]}", b"", 0.0)
        try:
            key = json.dumps(ev, sort_keys=True, default=str)
            out[rid] = memo.call("evidence", key, lambda ev=ev: _open_evidence(ev, admin))
        except ProtocolError as exc:
            refuse(where, exc)
    return out


def _open_evidence(ev: Mapping[str, Any], admin: AdminView) -> _Evidence:
    from hdus_edge.unlearn.request import check_evidence

    try:
        check = check_evidence(dict(ev), admin.admin_key, admin.fleet)
    except (HdusError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"unreadable evidence: {exc}") from None
    if check.order is None:  # no verified order: the file forgets nobody
        raise ProtocolError("; ".join(check.problems)[:_DETAIL_CHARS])
    # Only what was signed is shown: the verified order and receipts, whatever the summary says.
    order = check.order
    receipts = list(check.signed)
    holders = ev.get("holders") if isinstance(ev.get("holders"), list) else []
    return _Evidence(order, tuple(sorted(h for h in holders if isinstance(h, str))), tuple(receipts),
                     str(ev["file"]) if "file" in ev else None)


def _requests(
    orders: Mapping[str, UnlearnOrder],
    evidence: Mapping[str, _Evidence],
    receipts: Sequence[_Verified],
    neighbors: Mapping[str, tuple[str, ...]],
    forgotten_by: Mapping[str, UnlearnOrder],
    applied_by: Mapping[str, set[str]],
    refuse: Callable[[BrokerMessage, Exception], None],
) -> tuple[RequestRow, ...]:
    by_request: dict[str, dict[str, ReceiptRow]] = defaultdict(dict)
    for rid, e in evidence.items():
        for r in e.receipts:
            by_request[rid][r.device_id] = ReceiptRow(r.device_id, r.removed_sha256, r.removed_sha256 is not None,
                                                      r.members_after, r.at, None, ("evidence",))
    for v in receipts:
        receipt: Receipt = v.msg
        order = orders.get(receipt.request_id)
        target = order.target if order else None
        if target is not None and receipt.target != target:
            refuse(BrokerMessage(v.topic, b"", v.received_at),
                   ProtocolError(f"receipt of {receipt.device_id!r} names target {receipt.target!r}, "
                                 f"but request {receipt.request_id} forgets {target!r}"))
            continue
        held = by_request[receipt.request_id].get(receipt.device_id)
        sources = ("broker", *held.sources) if held else ("broker",)
        by_request[receipt.request_id][receipt.device_id] = ReceiptRow(
            receipt.device_id, receipt.removed_sha256, receipt.removed_sha256 is not None, receipt.members_after,
            receipt.at, None, tuple(sorted(set(sources))))
    rows = []
    for rid in sorted(set(orders) | set(by_request)):
        order = orders.get(rid)  # evidence orders are among them; None: receipts whose order is gone
        e = evidence.get(rid)
        target = order.target if order else None
        if e is not None:
            holders = e.holders
        elif target is not None:
            holders = tuple(sorted(i for i, nbrs in neighbors.items()
                                   if target in nbrs and i != target and i not in forgotten_by))
        else:
            holders = ()
        got = {}
        for device, r in by_request.get(rid, {}).items():
            latency = r.at - order.issued_at if order else None
            got[device] = ReceiptRow(r.device_id, r.removed_sha256, r.held, r.members_after, r.at, latency, r.sources)
        missing = tuple(h for h in holders if h not in got)
        latencies = [got[h].latency_s for h in holders if h in got and got[h].latency_s is not None]
        rows.append(RequestRow(
            request_id=rid,
            target=target if target else next((r.target for r in _receipts_of(receipts, rid)), None),
            issuer=order.issuer if order else None,
            issued_at=order.issued_at if order else None,
            reason=order.reason if order else None,
            holders=holders,
            receipts=tuple(got[d] for d in sorted(got)),
            missing=missing,
            complete=not missing and bool(got or not holders),
            latency_s=max(latencies) if latencies and not missing else None,
            applied_by=tuple(sorted(applied_by.get(rid, ()))),
            evidence_file=e.file if e else None,
        ))
    rows.sort(key=lambda r: (r.issued_at or 0.0, r.request_id), reverse=True)
    return tuple(rows)



def _receipts_of(receipts: Sequence[_Verified], request_id: str) -> list[Receipt]:
    return [v.msg for v in receipts if v.msg.request_id == request_id]
