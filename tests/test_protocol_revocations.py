"""The admin's revocation list and the leave topic: wire format, who may sign, where they belong."""

from __future__ import annotations

import pytest

from hdus_edge.errors import DecodeError, SenderMismatchError, SignatureError
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, TrustStore, issue_certificate
from hdus_edge.protocol.messages import RevocationList, UnlearnOrder
from hdus_edge.protocol.topics import Topics

ADMIN = SigningKey.from_seed(b"a" * 32)
DEV = SigningKey.from_seed(b"d" * 32)
T = Topics("lab")


def _trust() -> TrustStore:
    trust = TrustStore("lab", ADMIN.public_key)
    trust.certify(issue_certificate(ADMIN, fleet="lab", device_id="dev-2", public_key=DEV.public_key))
    return trust


def _order(issuer: str = "admin") -> tuple[UnlearnOrder, bytes]:
    order = UnlearnOrder("dev-2", issuer, "r" * 32, 1.0, "gone", 0)
    return order, codec.encode(order, ADMIN if issuer == "admin" else DEV, issuer)


def test_revocation_list_round_trips_and_only_the_admin_may_sign_it():
    _, raw = _order()
    rl = RevocationList(3, 2.0, (("dev-2", 0), ("dev-1", 4)), (raw,))
    data = codec.encode(rl, ADMIN, "admin")
    back = codec.verify(codec.decode(data), _trust())
    assert back == rl and back.revoked == (("dev-1", 4), ("dev-2", 0)) and back.revoked_epoch("dev-2") == 0
    T.check_matches(T.revocations(), back)
    # A device cannot publish a list in its own name, nor pass one off as the admin's.
    with pytest.raises(SenderMismatchError):
        codec.verify(codec.decode(codec.encode(rl, DEV, "dev-2")), _trust())
    with pytest.raises(SignatureError):
        codec.verify(codec.decode(codec.encode(rl, DEV, "admin")), _trust())
    tampered = bytearray(data)
    tampered[-70] ^= 1
    with pytest.raises((SignatureError, DecodeError)):
        codec.verify(codec.decode(bytes(tampered)), _trust())
    with pytest.raises(DecodeError):
        T.check_matches(T.unlearn("dev-2"), back)


def test_revocation_list_rejects_malformed_entries():
    with pytest.raises(ValueError, match="once"):
        RevocationList(1, 0.0, (("dev-2", 0), ("dev-2", 1)), ())
    with pytest.raises(ValueError):
        RevocationList(0, 0.0, (), ())  # versions start at 1
    with pytest.raises(ValueError):
        RevocationList(1, 0.0, (("admin", 0),), ())


def test_leave_topic_carries_only_the_devices_own_order():
    admin_order, _ = _order("admin")
    own, _ = _order("dev-2")
    assert T.order(admin_order) == T.unlearn("dev-2") and T.order(own) == T.leave("dev-2")
    assert T.parse(T.leave("dev-2")).kind == "unlearn" and T.parse(T.leave("dev-2")).self_issued
    T.check_matches(T.leave("dev-2"), own)
    T.check_matches(T.unlearn("dev-2"), own)  # the admin relays a device's own order there
    with pytest.raises(DecodeError):
        T.check_matches(T.leave("dev-2"), admin_order)
    assert f"{T.root}/leave/+" in T.subscriptions("dev-1", []) and T.revocations() in T.subscriptions("dev-1", [])


def test_revoked_device_is_refused_not_parked():
    from hdus_edge.errors import RevokedError, UnknownSenderError

    trust = _trust()
    trust.revoke("dev-2", 0)
    with pytest.raises(RevokedError):
        trust.key_for("dev-2")
    assert not issubclass(RevokedError, UnknownSenderError)  # the agent parks unknown senders; never these
