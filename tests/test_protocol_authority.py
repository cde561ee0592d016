"""Who may say what: the unlearn authority matrix, sender mismatches, seed epochs, hellos, digests."""

import pytest

from hdus_edge.errors import (
    DecodeError,
    SenderMismatchError,
    SignatureError,
    UnauthorizedError,
    UnknownSenderError,
)
from hdus_edge.protocol.codec import decode, encode, open_digest, verify
from hdus_edge.protocol.crypto import SigningKey, TrustStore, issue_certificate
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    Receipt,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
)

ADMIN = SigningKey.from_seed(bytes([1]) * 32)
A = SigningKey.from_seed(bytes([2]) * 32)
B = SigningKey.from_seed(bytes([3]) * 32)
STRANGER = SigningKey.from_seed(bytes([4]) * 32)  # never certified
CERT_A = issue_certificate(ADMIN, fleet="lab", device_id="a", public_key=A.public_key, epoch=2, issued_at=1.0)
CERT_B = issue_certificate(ADMIN, fleet="lab", device_id="b", public_key=B.public_key, epoch=0, issued_at=1.0)
KEYS = {"a": A, "b": B, "admin": ADMIN, "u": STRANGER}


def _trust() -> TrustStore:
    trust = TrustStore("lab", ADMIN.public_key)
    trust.certify(CERT_A)
    trust.certify(CERT_B)
    return trust


def _send(msg, key: SigningKey, sender: str, trust: TrustStore | None = None, **kw):
    return verify(decode(encode(msg, key, sender)), trust or _trust(), **kw)


def _order(target: str, issuer: str, epoch: int = 0) -> UnlearnOrder:
    return UnlearnOrder(target, issuer, "req-1", 100.0, "user asked", epoch)


# --- the unlearn authority matrix --------------------------------------------------------------
# signer (key used, sender id on the envelope) x order (issuer field, target)

MATRIX = [
    # the target itself
    ("a", "a", "a", "a", None),  # a forgets itself
    ("a", "a", "a", "b", UnauthorizedError),  # a orders b forgotten
    # the admin
    ("admin", "admin", "admin", "a", None),
    ("admin", "admin", "admin", "b", None),
    # another certified device
    ("b", "b", "b", "a", UnauthorizedError),  # b orders a forgotten under its own name
    ("b", "b", "a", "a", SenderMismatchError),  # b signs an order that claims a issued it
    ("b", "a", "a", "a", SignatureError),  # b's signature presented as a's
    ("b", "admin", "admin", "a", SignatureError),  # b's signature presented as the admin's
    ("b", "b", "b", "b", None),  # b forgets itself
    # an unknown key
    ("u", "u", "u", "u", UnknownSenderError),  # unknown forgets itself
    ("u", "u", "u", "a", UnknownSenderError),  # unknown orders a forgotten
    ("u", "a", "a", "a", SignatureError),  # unknown key claiming to be a
    ("u", "admin", "admin", "a", SignatureError),  # unknown key claiming to be the admin
    ("a", "admin", "admin", "b", SignatureError),  # a device key claiming to be the admin
]


@pytest.mark.parametrize(("key", "sender", "issuer", "target", "error"), MATRIX)
def test_unlearn_authority_matrix(key, sender, issuer, target, error):
    # Prepare
    epoch = {"a": 2, "b": 0}.get(target, 0)
    order = UnlearnOrder(target, issuer, "req-1", 100.0, "", epoch)
    raw = encode(order, KEYS[key], sender)
    # Execute / Assert
    if error is None:
        assert verify(decode(raw), _trust()) == order
    else:
        with pytest.raises(error):
            verify(decode(raw), _trust())


def test_admin_cannot_be_a_target():
    with pytest.raises(ValueError, match="reserved"):
        UnlearnOrder("admin", "admin", "req-1", 1.0, "", 0)


def test_self_order_may_cover_past_epochs_but_not_future_ones():
    assert _send(_order("a", "a", epoch=1), A, "a").epoch == 1
    assert _send(_order("a", "a", epoch=2), A, "a").epoch == 2
    with pytest.raises(UnauthorizedError, match="epoch"):
        _send(_order("a", "a", epoch=3), A, "a")
    assert _send(_order("a", "admin", epoch=9), ADMIN, "admin").epoch == 9  # the admin decides freely


# --- every message speaks only for its signer ---------------------------------------------------


def _seed(owner="a", to="b", epoch=2, version=1):
    return SeedEnvelope.build(
        owner=owner, to=to, version=version, onnx=b"onnx-bytes", arch="seed", input_shape=(-1, 64),
        num_classes=10, reference_sha256="0" * 64, epoch=epoch,
    )  # fmt: skip


CLAIMS_A = [
    _seed(owner="a"),
    NeighborList("a", ("b",), 4),
    Receipt("req-1", "b", "a", None, ("a",), 5.0),
    TombstoneDigest("a", ()),
]


@pytest.mark.parametrize("msg", CLAIMS_A, ids=lambda m: type(m).__name__)
def test_each_message_verifies_from_its_author(msg):
    assert _send(msg, A, "a") == msg


@pytest.mark.parametrize("msg", CLAIMS_A, ids=lambda m: type(m).__name__)
def test_a_message_for_a_signed_by_b_is_a_sender_mismatch(msg):
    with pytest.raises(SenderMismatchError):
        _send(msg, B, "b")


@pytest.mark.parametrize("msg", CLAIMS_A, ids=lambda m: type(m).__name__)
def test_a_message_for_a_signed_by_the_admin_is_a_sender_mismatch(msg):
    with pytest.raises(SenderMismatchError):
        _send(msg, ADMIN, "admin")


@pytest.mark.parametrize("msg", CLAIMS_A, ids=lambda m: type(m).__name__)
def test_b_signing_as_a_fails_the_signature(msg):
    with pytest.raises(SignatureError):
        _send(msg, B, "a")


def test_neighbor_list_signed_by_another_device():
    with pytest.raises(SenderMismatchError, match="claims 'a'"):
        _send(NeighborList("a", ("b",), 1), B, "b")


# --- seeds -------------------------------------------------------------------------------------


def test_seed_epoch_must_be_the_owners_certified_epoch():
    # A forgotten device must not dodge its tombstone by claiming a newer epoch.
    with pytest.raises(UnauthorizedError, match="epoch 3"):
        _send(_seed(epoch=3), A, "a")
    with pytest.raises(UnauthorizedError, match="epoch 1"):
        _send(_seed(epoch=1), A, "a")


def test_seed_for_another_recipient():
    assert _send(_seed(to="b"), A, "a", recipient="b").to == "b"
    with pytest.raises(UnauthorizedError, match="addressed"):
        _send(_seed(to="b"), A, "a", recipient="c")


def test_seed_epoch_follows_readmission():
    trust = _trust()
    trust.certify(issue_certificate(ADMIN, fleet="lab", device_id="a", public_key=A.public_key, epoch=3, issued_at=2.0))
    assert _send(_seed(epoch=3), A, "a", trust).epoch == 3
    with pytest.raises(UnauthorizedError):
        _send(_seed(epoch=2), A, "a", trust)


# --- hello -------------------------------------------------------------------------------------


def _hello(device="a", key=A, cert=CERT_A):
    return Hello(device, key.public_key.raw, cert, "pi-4", "mnv2-s", "seed-4k")


def test_hello_from_an_uncertified_device_verifies_by_its_certificate():
    trust = TrustStore("lab", ADMIN.public_key)  # knows nobody yet
    msg = _send(_hello(), A, "a", trust)
    assert trust.certify(msg.certificate) is True and trust.key_for("a") == A.public_key


def test_hello_with_a_forged_or_foreign_certificate():
    forged = issue_certificate(STRANGER, fleet="lab", device_id="u", public_key=STRANGER.public_key, issued_at=1.0)
    with pytest.raises(SignatureError):
        _send(_hello("u", STRANGER, forged), STRANGER, "u")
    foreign = issue_certificate(ADMIN, fleet="other", device_id="a", public_key=A.public_key, issued_at=1.0)
    with pytest.raises(UnauthorizedError, match="fleet"):
        _send(_hello(cert=foreign), A, "a")


def test_hello_with_someone_elses_certificate():
    # b presents a's certificate: the key in the certificate is a's, so b cannot sign for it ...
    with pytest.raises(SignatureError):
        _send(_hello("a", A, CERT_A), B, "a")
    # ... and b's own certificate does not cover the id "a" or a's key.
    with pytest.raises(SenderMismatchError):
        _send(_hello("a", A, CERT_B), B, "a")
    with pytest.raises(SenderMismatchError):
        _send(_hello("a", B, CERT_B), B, "b")


# --- digests -----------------------------------------------------------------------------------


def test_digest_orders_are_verified_one_by_one():
    good_admin = encode(_order("b", "admin"), ADMIN, "admin")
    good_self = encode(_order("a", "a", epoch=2), A, "a")
    forged = encode(_order("b", "a"), A, "a")  # a may not forget b
    not_an_order = encode(NeighborList("a", (), 1), A, "a")
    garbage = b"HDUS\x01garbage"
    digest = _send(TombstoneDigest("a", (good_admin, forged, not_an_order, good_self, garbage)), A, "a")
    accepted, rejected = open_digest(digest, _trust())
    assert [s.raw for s in accepted] == [good_admin, good_self]
    assert [(i, type(e)) for i, e in rejected] == [(1, UnauthorizedError), (2, DecodeError), (4, DecodeError)]
