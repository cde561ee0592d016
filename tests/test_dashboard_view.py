"""The dashboard's fleet view, pure: broker messages + the admin's registry in, a verified snapshot out.

No broker: messages are built and signed here, as devices and the admin would publish them. Each
attack test also runs with the check it relies on planted out, to show the test can fail.
"""

from __future__ import annotations

import pytest

from hdus_edge.dashboard.admin_files import read_admin_view
from hdus_edge.dashboard.fleet_view import (
    AdminView,
    BrokerMessage,
    FleetSnapshot,
    VerifyMemo,
    build_snapshot,
)
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, issue_certificate
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    Receipt,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir

FLEET = "lab"
T = Topics(FLEET)
ADMIN = SigningKey.from_seed(bytes([1]) * 32)
IDS = ("dev-0", "dev-1", "dev-2")
KEYS = {d: SigningKey.from_seed(bytes([10 + k]) * 32) for k, d in enumerate(IDS)}
CERTS = {d: issue_certificate(ADMIN, fleet=FLEET, device_id=d, public_key=KEYS[d].public_key, profile="raspberry-pi-4",
                              issued_at=1.0) for d in IDS}
STRANGER = SigningKey.from_seed(bytes([99]) * 32)
SEEDS = {d: f"onnx of {d}".encode() for d in IDS}
REGISTRY = {d: {"profile": "raspberry-pi-4", "epoch": 0, "public_key": KEYS[d].public_key.hex()} for d in IDS}


def msg(topic: str, message, key: SigningKey, sender: str, at: float = 100.0, live: bool = False) -> BrokerMessage:
    return BrokerMessage(topic, codec.encode(message, key, sender), at, live)


def seed(owner: str, to: str, version: int = 1, epoch: int = 0) -> SeedEnvelope:
    return SeedEnvelope.build(owner=owner, to=to, version=version, onnx=SEEDS[owner], arch="seed-cnn",
                              input_shape=(-1, 1, 8, 8), num_classes=10, reference_sha256="0" * 64, epoch=epoch)


def fleet_messages(ids=IDS) -> list[BrokerMessage]:
    """What the broker retains for a running complete-graph fleet of ``ids``."""
    out = []
    for d in ids:
        hello = Hello(d, KEYS[d].public_key.raw, CERTS[d], "raspberry-pi-4", "resnet-8", "seed-cnn")
        out.append(msg(T.hello(d), hello, KEYS[d], d))
        others = tuple(j for j in ids if j != d)
        out.append(msg(T.membership(d), NeighborList(d, others, 5), KEYS[d], d))
        out.append(BrokerMessage(T.presence(d), b"online", 100.0))
        for j in others:
            out.append(msg(T.seed(j, d), seed(d, j), KEYS[d], d))
    return out


def admin_view(**kw) -> AdminView:
    return AdminView(FLEET, ADMIN.public_key, kw.pop("registry", REGISTRY), **kw)


def snapshot(messages, **kw) -> FleetSnapshot:
    return build_snapshot(admin_view(**kw), messages, now=200.0)


def device(snap: FleetSnapshot, device_id: str):
    return next(d for d in snap.devices if d.device_id == device_id)


def forget(target: str, request_id: str = "r1", issued_at: float = 150.0, key=ADMIN, issuer="admin") -> list[BrokerMessage]:
    """The messages an unlearn of ``target`` leaves: the order, the holders' receipts, cleared seeds."""
    order = UnlearnOrder(target, issuer, request_id, issued_at, "test", 0)
    out = [msg(T.unlearn(target), order, key, issuer)]
    for h in IDS:
        if h != target:
            members = tuple(j for j in IDS if j not in (h, target))
            receipt = Receipt(request_id, target, h, seed(target, h).sha256, members, issued_at + 0.25)
            out.append(msg(T.receipt(request_id, h), receipt, KEYS[h], h, at=issued_at + 0.3, live=True))
    return out


def after_forgetting(target: str) -> list[BrokerMessage]:
    """A fleet after ``target`` was forgotten: its seeds and its neighbour list cleared off the broker."""
    kept = [m for m in fleet_messages()
            if not (m.topic.endswith("/" + target) and "/seeds/" in m.topic)
            and not m.topic.startswith(f"{T.root}/seeds/{target}/") and m.topic != T.membership(target)]
    return kept + forget(target)


def test_a_running_fleet_shows_every_device_its_seed_members_and_the_graph():
    snap = snapshot(fleet_messages())
    assert [d.device_id for d in snap.devices] == list(IDS)
    d0 = device(snap, "dev-0")
    assert (d0.online, d0.epoch, d0.forgotten, d0.profile, d0.main_arch) == (True, 0, False, "raspberry-pi-4", "resnet-8")
    assert (d0.seed_version, d0.seed_sha256) == (1, seed("dev-0", "dev-1").sha256)
    assert d0.members == ("dev-1", "dev-2") and d0.neighbors == ("dev-1", "dev-2")
    assert len(snap.edges) == 6 and all(e.seeded for e in snap.edges)
    assert snap.rejected == () and snap.parked == () and snap.requests == ()
    assert d0.last_seen is None  # retained copies say nothing about when a device was last seen


def test_an_unlearn_shows_the_target_forgotten_and_every_holders_receipt_with_its_latency():
    snap = snapshot(after_forgetting("dev-2"))
    d2 = device(snap, "dev-2")
    assert d2.forgotten and d2.forgotten_by == "r1" and d2.members == () and d2.seed_version is None
    assert device(snap, "dev-0").members == ("dev-1",) and device(snap, "dev-1").members == ("dev-0",)
    [req] = snap.requests
    assert (req.target, req.issuer, req.holders, req.missing, req.complete) == ("dev-2", "admin", ("dev-0", "dev-1"), (), True)
    assert [(r.device_id, r.held, r.members_after, r.sources) for r in req.receipts] == [
        ("dev-0", True, ("dev-1",), ("broker",)), ("dev-1", True, ("dev-0",), ("broker",))]
    assert req.receipts[0].latency_s == pytest.approx(0.25) and req.latency_s == pytest.approx(0.25)
    assert device(snap, "dev-0").last_seen == pytest.approx(150.3)  # its receipt arrived live
    edges = {(e.device, e.neighbor): e.seeded for e in snap.edges}
    assert edges[("dev-0", "dev-2")] is False and edges[("dev-0", "dev-1")] is True
    assert snap.rejected == ()


def test_a_holder_without_a_receipt_is_listed_missing():
    messages = [m for m in after_forgetting("dev-2") if m.topic != T.receipt("r1", "dev-1")]
    [req] = snapshot(messages).requests
    assert req.missing == ("dev-1",) and not req.complete and req.latency_s is None


def test_malformed_and_foreign_messages_are_rejected_with_a_reason_and_change_nothing():
    junk = [
        BrokerMessage(T.hello("dev-9"), b"\x00not an envelope", 1.0),
        BrokerMessage(T.membership("dev-0") + "/extra", b"HDUS", 1.0),
        BrokerMessage(T.presence("dev-1"), b"<script>alert(1)</script>", 1.0),
        BrokerMessage(f"{T.root}/<img src=x onerror=alert(1)>", b"junk", 1.0),
        BrokerMessage(T.unlearn("dev-1"), b"HDUS" + bytes(200), 1.0),
    ]
    clean = snapshot(fleet_messages())
    snap = snapshot(fleet_messages() + junk)
    assert len(snap.rejected) == 5 and set(snap.reasons) == {"DecodeError", "ProtocolError"}
    assert {r.topic for r in snap.rejected} == {m.topic for m in junk}
    assert all(r.detail for r in snap.rejected)
    assert snap.devices == clean.devices and snap.edges == clean.edges and snap.requests == ()


def test_forged_messages_are_rejected_and_a_device_cannot_order_another_forgotten():
    forged_seed = seed("dev-1", "dev-0", version=7)
    attacks = [
        msg(T.unlearn("dev-2"), UnlearnOrder("dev-2", "dev-1", "r9", 150.0, "x", 0), KEYS["dev-1"], "dev-1"),  # own key
        msg(T.seed("dev-0", "dev-1"), forged_seed, STRANGER, "dev-1"),  # a stranger signs as dev-1
        msg(T.membership("dev-1"), NeighborList("dev-0", ("dev-1",), 9), KEYS["dev-0"], "dev-0"),  # on another's topic
    ]
    messages = {m.topic: m for m in fleet_messages()}
    messages.update({m.topic: m for m in attacks})
    snap = snapshot(list(messages.values()))
    assert not device(snap, "dev-2").forgotten
    assert device(snap, "dev-1").seed_version is None or device(snap, "dev-1").seed_version == 1
    assert {r.reason for r in snap.rejected} == {"UnauthorizedError", "SignatureError", "DecodeError"}
    assert device(snap, "dev-0").members == ("dev-2",)  # the forged seed replaced the real one: not a member


def test_planted_bug_a_view_that_skips_verification_would_show_the_forged_unlearn(monkeypatch):
    forged = msg(T.unlearn("dev-2"), UnlearnOrder("dev-2", "dev-1", "r9", 150.0, "x", 0), KEYS["dev-1"], "dev-1")
    monkeypatch.setattr(codec, "verify", lambda signed, trust, recipient=None: signed.msg)
    snap = snapshot(fleet_messages() + [forged])
    assert device(snap, "dev-2").forgotten  # the assertion above would fail on this view


def test_messages_from_an_unannounced_sender_are_parked_not_rejected():
    ghost_key = SigningKey.from_seed(bytes([50]) * 32)
    parked = msg(T.membership("dev-7"), NeighborList("dev-7", ("dev-0",), 1), ghost_key, "dev-7")
    snap = snapshot(fleet_messages() + [parked])
    assert [(p.topic, p.reason) for p in snap.parked] == [(parked.topic, "UnknownSenderError")]
    assert snap.rejected == ()


def test_a_forgotten_seed_still_on_the_broker_is_flagged():
    messages = after_forgetting("dev-2") + [msg(T.seed("dev-0", "dev-2"), seed("dev-2", "dev-0"), KEYS["dev-2"], "dev-2")]
    snap = snapshot(messages)
    assert device(snap, "dev-0").members == ("dev-1",)
    assert [r.topic for r in snap.rejected] == [T.seed("dev-0", "dev-2")]


def test_a_readmitted_device_is_not_forgotten_by_an_order_for_its_old_epoch():
    registry = {**REGISTRY, "dev-2": {**REGISTRY["dev-2"], "epoch": 1}}
    snap = snapshot(after_forgetting("dev-2"), registry=registry)
    assert not device(snap, "dev-2").forgotten


def test_orders_carried_only_in_a_tombstone_digest_still_count():
    order = codec.encode(UnlearnOrder("dev-2", "admin", "r5", 120.0, "gossip", 0), ADMIN, "admin")
    digest = msg(T.tombstones("dev-0"), TombstoneDigest("dev-0", (order,)), KEYS["dev-0"], "dev-0")
    snap = snapshot(fleet_messages() + [digest])
    assert device(snap, "dev-2").forgotten
    [req] = snap.requests
    assert req.request_id == "r5" and req.applied_by == ("dev-0",)


def test_evidence_supplies_holders_and_tampered_evidence_receipts_do_not_count():
    order_raw = codec.encode(UnlearnOrder("dev-2", "admin", "r1", 150.0, "test", 0), ADMIN, "admin")
    receipts = []
    for h in ("dev-0", "dev-1"):
        r = Receipt("r1", "dev-2", h, seed("dev-2", h).sha256, (), 150.5)
        raw = codec.encode(r, KEYS[h], h)
        if h == "dev-1":
            raw = raw[:-1] + bytes([raw[-1] ^ 1])  # a flipped signature bit
        receipts.append({"device_id": h, "removed_sha256": r.removed_sha256, "members_after": [], "at": 150.5,
                         "signed": raw.hex()})
    evidence = {"request_id": "r1", "target": "dev-2", "issuer": "admin", "issued_at": 150.0, "reason": "test",
                "order": order_raw.hex(), "holders": ["dev-0", "dev-1"], "receipts": receipts,
                "certificates": [CERTS[h].to_dict() for h in ("dev-0", "dev-1")], "file": "/admin/evidence/r1.json"}
    snap = snapshot([], evidence=(evidence,))
    [req] = snap.requests
    assert [r.device_id for r in req.receipts] == ["dev-0"] and req.missing == ("dev-1",)
    assert req.receipts[0].sources == ("evidence",) and req.evidence_file == "/admin/evidence/r1.json"


def test_agent_counters_and_members_are_shown_where_a_status_file_is_given():
    # dev-0's agent refused dev-2's seed (say, a wrong reference set): the broker still holds it.
    status = {"device_id": "dev-0", "parked": {"messages": 2, "bytes": 200}, "updated_at": 1.0, "connected": True, "members": ["dev-1"],
              "counters": {"accepted": 2, "rejected": 3, "reasons": {"SignatureError": 3}}}
    snap = snapshot(fleet_messages(), agent_status={"dev-0": status})
    assert device(snap, "dev-0").agent["parked"] == 2 and device(snap, "dev-0").agent["rejected"] == 3
    assert snap.agent_reasons == {"dev-0": {"SignatureError": 3}}
    assert device(snap, "dev-1").agent is None
    assert (device(snap, "dev-0").members, device(snap, "dev-0").members_source) == (("dev-1",), "agent")
    assert (device(snap, "dev-1").members, device(snap, "dev-1").members_source) == (("dev-0", "dev-2"), "broker")
    # A status file of an agent that is not running says nothing about the ensemble now.
    offline = [m if m.topic != T.presence("dev-0") else BrokerMessage(m.topic, b"offline", 1.0) for m in fleet_messages()]
    snap = snapshot(offline, agent_status={"dev-0": status})
    assert device(snap, "dev-0").members_source == "broker"


def test_the_json_caps_the_listed_rejections_but_counts_them_all():
    junk = [BrokerMessage(T.hello(f"x{k}"), b"junk", 1.0) for k in range(250)]
    doc = snapshot(junk).to_json()
    assert doc["rejected_total"] == 250 and len(doc["rejected"]) == 200 and doc["reasons"] == {"DecodeError": 250}


def test_a_registry_id_that_is_no_device_id_is_a_problem_line(tmp_path):
    admin = AdminDir(tmp_path / "admin")
    admin.root.mkdir()
    admin.registry_file.write_text('{"dev-0": {"epoch": 0}, "../x/#": {"epoch": 0}}')
    view = read_admin_view(admin, FLEET, ADMIN.public_key)
    assert list(view.registry) == ["dev-0"] and "invalid device id" in view.problems[0]


def test_a_corrupt_registry_or_evidence_file_is_a_problem_line_not_a_crash(tmp_path):
    admin = AdminDir(tmp_path / "admin")
    admin.root.mkdir()
    admin.registry_file.write_text("{not json")
    admin.evidence_dir.mkdir()
    (admin.evidence_dir / "bad.json").write_text("[1, 2")
    view = read_admin_view(admin, FLEET, ADMIN.public_key)
    assert view.registry == {} and len(view.problems) == 2
    snap = build_snapshot(view, fleet_messages())
    assert len(snap.devices) == 3 and len(snap.problems) == 2


def test_the_memo_changes_no_outcome_and_rechecks_when_the_trust_changes(monkeypatch):
    memo = VerifyMemo()
    hello_1 = next(m for m in fleet_messages() if m.topic == T.hello("dev-1"))
    early = [m for m in after_forgetting("dev-2") if m.topic != T.hello("dev-1")]
    # dev-1's hello is not there yet: its list, seeds and receipt are parked, with or without the memo.
    without = snapshot(early)
    assert build_snapshot(admin_view(), early, now=200.0, memo=memo) == without
    assert build_snapshot(admin_view(), early, now=200.0, memo=memo) == without
    assert len(without.parked) >= 3
    # Then it arrives: the same memo must check the parked messages again with the new trust.
    later = early + [hello_1]
    assert build_snapshot(admin_view(), later, now=200.0, memo=memo) == snapshot(later)
    assert build_snapshot(admin_view(), later, now=200.0, memo=memo).parked == ()
    # And an unchanged message is not verified again.
    calls = []
    real = codec.verify
    monkeypatch.setattr(codec, "verify", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    build_snapshot(admin_view(), later, now=200.0, memo=memo)
    assert calls == []


def _evidence(target: str = "dev-2", request_id: str = "r1", key: SigningKey = ADMIN) -> dict:
    order_raw = codec.encode(UnlearnOrder(target, "admin", request_id, 150.0, "test", 0), key, "admin")
    receipt = Receipt(request_id, target, "dev-0", seed(target, "dev-0").sha256, ("dev-1",), 150.5)
    return {"request_id": request_id, "target": target, "issuer": "admin", "issued_at": 150.0, "reason": "test",
            "order": order_raw.hex(), "holders": ["dev-0"],
            "receipts": [{"device_id": "dev-0", "removed_sha256": receipt.removed_sha256, "members_after": ["dev-1"],
                          "at": 150.5, "signed": codec.encode(receipt, KEYS["dev-0"], "dev-0").hex()}],
            "certificates": [CERTS["dev-0"].to_dict()]}


def test_evidence_fields_shown_come_from_its_signed_order_and_receipts():
    ev = {**_evidence(), "target": "dev-1", "issued_at": 1.0}  # the unsigned summary lies
    ev["receipts"][0] = {**ev["receipts"][0], "members_after": ["dev-9"], "at": 999.0}
    snap = snapshot(fleet_messages(), evidence=(ev,))
    [req] = snap.requests
    assert (req.target, req.issued_at) == ("dev-2", 150.0)
    assert (req.receipts[0].members_after, req.receipts[0].at) == (("dev-1",), 150.5)
    # The broker lost the order: the evidence alone still shows dev-2 forgotten.
    assert device(snap, "dev-2").forgotten and not device(snap, "dev-1").forgotten


def test_evidence_with_a_forged_order_is_rejected_and_forgets_nobody():
    forged = _evidence(key=STRANGER)
    snap = snapshot(fleet_messages(), evidence=({**forged, "file": "/admin/evidence/r1.json"},))
    assert snap.requests == () and not device(snap, "dev-2").forgotten
    assert [(r.topic, r.reason) for r in snap.rejected] == [("evidence /admin/evidence/r1.json", "ProtocolError")]


def test_a_receipt_for_another_target_than_its_request_is_rejected():
    messages = after_forgetting("dev-2")
    lie = Receipt("r1", "dev-1", "dev-0", None, (), 151.0)  # dev-0 answers r1 about dev-1
    messages = [m for m in messages if m.topic != T.receipt("r1", "dev-0")]
    messages.append(msg(T.receipt("r1", "dev-0"), lie, KEYS["dev-0"], "dev-0"))
    snap = snapshot(messages)
    [req] = snap.requests
    assert req.missing == ("dev-0",) and [r.topic for r in snap.rejected] == [T.receipt("r1", "dev-0")]


def test_evidence_is_verified_once_while_its_content_stays_the_same(monkeypatch):
    memo = VerifyMemo()
    ev = _evidence()
    first = build_snapshot(admin_view(evidence=(ev,)), fleet_messages(), now=200.0, memo=memo)
    calls = []
    real = codec.verify
    monkeypatch.setattr(codec, "verify", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = build_snapshot(admin_view(evidence=(ev,)), fleet_messages(), now=200.0, memo=memo)
    assert again == first and calls == []
    changed = {**ev, "holders": ["dev-0", "dev-1"]}
    later = build_snapshot(admin_view(evidence=(changed,)), fleet_messages(), now=200.0, memo=memo)
    assert calls and later.requests[0].missing == ("dev-1",)


def test_the_admins_retained_revocation_list_renders_and_is_not_a_device():
    # Regression: the list (retained by 'hdus-edge unlearn' since revocation at the broker) has no
    # device_id; the view crashed on it, and the page stopped following the fleet.
    from hdus_edge.protocol.messages import RevocationList

    order = UnlearnOrder("dev-2", "admin", "r1", 150.0, "test", 0)
    rl = RevocationList(1, 151.0, (("dev-2", 0),), (codec.encode(order, ADMIN, "admin"),))
    # Live, as it arrives when the admin revokes while the page is open (retained ones count as well).
    snap = snapshot([*fleet_messages(), msg(T.revocations(), rl, ADMIN, "admin", at=151.0, live=True)])
    assert sorted(d.device_id for d in snap.devices) == sorted(IDS)
    assert not [r for r in snap.rejected if "revocations" in r.topic]
