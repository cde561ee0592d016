"""``hdus-edge verify``: an auditor checks saved evidence offline with only the admin's public key.

Evidence is built here exactly as the requester builds it (signed order, receipts as they travelled,
certificates), then tampered with as an attacker would: a byte of a receipt changed, a receipt
signed by a key the admin never certified, a receipt copied from another request, a summary that
says something the signature does not. Each is refused with its reason (exit 1); the genuine file
verifies (exit 0) and the output says what each receipt attests.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid

import pytest

from hdus_edge.cli.app import run
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, issue_certificate, save_verify_key
from hdus_edge.protocol.messages import Receipt, UnlearnOrder
from hdus_edge.unlearn.request import ReceiptRecord, UnlearnOutcome

FLEET = "audit"
ADMIN = SigningKey.from_seed(b"\x01" * 32)
KEYS = {d: SigningKey.from_seed(bytes([k + 2]) * 32) for k, d in enumerate(("d0", "d1", "d2"))}
CERTS = {d: issue_certificate(ADMIN, fleet=FLEET, device_id=d, public_key=k.public_key, issued_at=1.0)
         for d, k in KEYS.items()}
SEED_SHA = "ab" * 32


def _receipt(request_id: str, device: str, key: SigningKey | None = None, target: str = "d2") -> ReceiptRecord:
    msg = Receipt(request_id, target, device, SEED_SHA, tuple(sorted({"d0", "d1"} - {device})), 1_700_000_100.0)
    return ReceiptRecord(msg, codec.encode(msg, key or KEYS[device], device), time.time())


def _outcome(receipts=None, holders=("d0", "d1")) -> tuple[UnlearnOutcome, str]:
    order = UnlearnOrder("d2", "admin", uuid.uuid4().hex, 1_700_000_000.0, "audit test", 0)
    recs = tuple(receipts(order.request_id) if receipts else (_receipt(order.request_id, d) for d in holders))
    outcome = UnlearnOutcome(order, codec.encode(order, ADMIN, "admin"), tuple(holders), recs,
                             tuple(CERTS[d] for d in ("d0", "d1")), 0.1, 0.0, FLEET)
    return outcome, order.request_id


def _verify(tmp_path, evidence: dict, key=ADMIN.public_key) -> tuple[int, dict]:
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(evidence))
    pub = tmp_path / "admin.pub"
    save_verify_key(key, pub, overwrite=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(["verify", str(path), "--admin-pub", str(pub), "--json"])
    return code, json.loads(out.getvalue())


def test_genuine_evidence_verifies_and_says_what_each_receipt_attests(tmp_path):
    # Prepare
    outcome, request_id = _outcome()
    # Execute
    code, report = _verify(tmp_path, outcome.evidence())
    # Assert
    assert code == 0 and report["verified"] and report["complete"] and report["problems"] == []
    assert (report["request_id"], report["target"], report["issuer"]) == (request_id, "d2", "admin")
    assert [(r["device_id"], r["removed_sha256"], r["members_after"], r["at"]) for r in report["receipts"]] == [
        ("d0", SEED_SHA, ["d1"], 1_700_000_100.0), ("d1", SEED_SHA, ["d0"], 1_700_000_100.0)]


def test_the_admin_key_given_as_hex_works_and_a_wrong_admin_key_refuses(tmp_path):
    outcome, _ = _outcome()
    path = tmp_path / "e.json"
    path.write_text(json.dumps(outcome.evidence()))
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(["verify", str(path), "--admin-pub", ADMIN.public_key.hex()]) == 0
    code, report = _verify(tmp_path, outcome.evidence(), key=SigningKey.from_seed(b"\x09" * 32).public_key)
    assert code == 1 and not report["verified"] and report["receipts"] == []


def test_a_changed_byte_in_a_receipt_is_refused(tmp_path):
    evidence = _outcome()[0].evidence()
    signed = bytearray(bytes.fromhex(evidence["receipts"][1]["signed"]))
    signed[len(signed) // 2] ^= 0x01
    evidence["receipts"][1]["signed"] = bytes(signed).hex()
    code, report = _verify(tmp_path, evidence)
    assert code == 1 and not report["verified"]
    assert [p for p in report["problems"] if p.startswith("receipt of 'd1'")], report["problems"]
    assert [r["device_id"] for r in report["receipts"]] == ["d0"]  # only what verified is attested


def test_a_receipt_from_an_uncertified_key_is_refused(tmp_path):
    # Prepare: an impostor signs d1's receipt with its own key and ships a certificate it signed itself.
    impostor = SigningKey.from_seed(b"\x07" * 32)
    outcome, _ = _outcome(lambda rid: (_receipt(rid, "d0"), _receipt(rid, "d1", key=impostor)))
    evidence = outcome.evidence()
    forged = issue_certificate(impostor, fleet=FLEET, device_id="d1", public_key=impostor.public_key, issued_at=1.0)
    evidence["certificates"] = [CERTS["d0"].to_dict(), forged.to_dict()]
    # Execute
    code, report = _verify(tmp_path, evidence)
    # Assert
    assert code == 1 and not report["complete"] and report["missing"] == ["d1"]
    assert any(p.startswith("certificate of 'd1'") for p in report["problems"]), report["problems"]
    assert any(p.startswith("receipt of 'd1'") for p in report["problems"]), report["problems"]


def test_a_receipt_copied_from_another_request_is_refused(tmp_path):
    other, _ = _outcome()
    evidence = _outcome()[0].evidence()
    evidence["receipts"][0] = other.evidence()["receipts"][0]
    code, report = _verify(tmp_path, evidence)
    assert code == 1 and "receipt of 'd0' answers another request" in report["problems"]


@pytest.mark.parametrize("field, value", [("removed_sha256", "cd" * 32), ("members_after", ["d1", "d2"]),
                                          ("device_id", "d1")])
def test_a_summary_that_differs_from_the_signed_receipt_is_refused(tmp_path, field, value):
    evidence = _outcome()[0].evidence()
    evidence["receipts"][0][field] = value
    code, report = _verify(tmp_path, evidence)
    assert code == 1 and any("differs from the signed receipt" in p or "second receipt" in p
                             for p in report["problems"]), report["problems"]


def test_a_changed_order_summary_and_a_missing_holder_are_refused(tmp_path):
    evidence = _outcome()[0].evidence()
    evidence["target"] = "d0"
    code, report = _verify(tmp_path, evidence)
    assert code == 1 and "order: the summary's target differs from the signed order" in report["problems"]
    evidence = _outcome(holders=("d0", "d1"), receipts=lambda rid: (_receipt(rid, "d0"),))[0].evidence()
    code, report = _verify(tmp_path, evidence)
    assert code == 1 and report["verified"] and not report["complete"] and report["missing"] == ["d1"]


def test_an_unreadable_file_is_a_usage_error(tmp_path):
    (tmp_path / "e.json").write_text("not json")
    assert run(["verify", str(tmp_path / "e.json"), "--admin-pub", ADMIN.public_key.hex()]) == 2
