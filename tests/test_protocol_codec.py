"""The envelope codec: round trips for every message kind, and no altered byte ever verifies."""

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdus_edge.errors import DecodeError, ProtocolError
from hdus_edge.protocol import canonical
from hdus_edge.protocol.codec import (
    DEFAULT_MAX_BYTES,
    MAGIC,
    MAX_HEADER_BYTES,
    decode,
    encode,
    is_clear,
    verify,
)
from hdus_edge.protocol.crypto import SigningKey, TrustStore, issue_certificate
from hdus_edge.protocol.fields import ID_PATTERN, NAME_PATTERN
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    Receipt,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
    sha256_hex,
)

ADMIN = SigningKey.from_seed(bytes([1]) * 32)
KEYS = {f"d{k}": SigningKey.from_seed(bytes([10 + k]) * 32) for k in range(3)}
CERTS = {
    d: issue_certificate(ADMIN, fleet="lab", device_id=d, public_key=k.public_key, epoch=0, issued_at=5.0)
    for d, k in KEYS.items()
}


def _trust() -> TrustStore:
    trust = TrustStore("lab", ADMIN.public_key)
    for cert in CERTS.values():
        trust.certify(cert)
    return trust


TRUST = _trust()

# --- strategies ------------------------------------------------------------------------------

any_id = st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda s: s != "admin")
name = st.from_regex(NAME_PATTERN, fullmatch=True)
sha = st.binary(min_size=32, max_size=32).map(bytes.hex)
counter = st.integers(0, 2**63 - 1)
seconds = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
text = st.text(max_size=200)
shape = st.lists(st.one_of(st.just(-1), st.integers(1, 2**31 - 1)), min_size=1, max_size=8).map(tuple)


def _others(owner: str):
    return st.lists(any_id.filter(lambda d: d != owner), unique=True, max_size=6).map(tuple)


@st.composite
def hellos(draw, device=any_id):
    device_id = draw(device)
    key = SigningKey.from_seed(draw(st.binary(min_size=32, max_size=32)))
    cert = issue_certificate(
        ADMIN,
        fleet=draw(any_id),
        device_id=device_id,
        public_key=key.public_key,
        epoch=draw(counter),
        profile=draw(name),
        issued_at=draw(seconds),
    )
    return Hello(device_id, key.public_key.raw, cert, draw(name), draw(name), draw(name))


@st.composite
def seeds(draw, owner=any_id, epoch=counter):
    return SeedEnvelope.build(
        owner=draw(owner),
        to=draw(any_id),
        version=draw(st.integers(1, 2**63 - 1)),
        onnx=draw(st.binary(max_size=3000)),
        arch=draw(name),
        input_shape=draw(shape),
        num_classes=draw(st.integers(1, 2**20)),
        reference_sha256=draw(sha),
        epoch=draw(epoch),
    )


@st.composite
def neighbor_lists(draw, device=any_id):
    device_id = draw(device)
    return NeighborList(device_id, draw(_others(device_id)), draw(counter))


@st.composite
def orders(draw, target=any_id):
    t = draw(target)
    issuer = draw(st.one_of(st.just(t), st.just("admin"), any_id))
    return UnlearnOrder(t, issuer, draw(any_id), draw(seconds), draw(text), draw(counter))


@st.composite
def receipts(draw, device=any_id):
    target = draw(any_id)
    return Receipt(draw(any_id), target, draw(device), draw(st.none() | sha), draw(_others(target)), draw(seconds))


@st.composite
def digests(draw, device=any_id):
    return TombstoneDigest(draw(device), draw(st.lists(st.binary(max_size=300), max_size=5)))


any_message = st.one_of(hellos(), seeds(), neighbor_lists(), orders(), receipts(), digests())


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=any_message, sender=st.one_of(any_id, st.just("admin")))
def test_every_message_roundtrips(msg, sender):
    # Prepare
    key = KEYS["d0"]
    # Execute
    raw = encode(msg, key, sender)
    signed = decode(raw)
    # Assert
    assert signed.msg == msg
    assert signed.sender == sender
    assert signed.raw == raw
    assert signed.signed_bytes[:4] == MAGIC
    assert encode(signed.msg, key, sender) == raw  # one message, one encoding (Ed25519 is deterministic)


# --- tampering never verifies ----------------------------------------------------------------

d_author = st.sampled_from(sorted(KEYS))


@st.composite
def verifiable(draw):
    """A message that verifies under TRUST as it was sent, plus its envelope."""
    author = draw(d_author)
    msg = draw(
        st.one_of(
            seeds(owner=st.just(author), epoch=st.just(0)),
            neighbor_lists(device=st.just(author)),
            orders(target=st.just(author)).map(
                lambda o: UnlearnOrder(o.target, o.target, o.request_id, o.issued_at, o.reason, 0)
            ),
            receipts(device=st.just(author)),
            digests(device=st.just(author)),
            st.just(Hello(author, KEYS[author].public_key.raw, CERTS[author], "pi-4", "mnv2-s", "seed-4k")),
        )
    )
    return msg, author, encode(msg, KEYS[author], author)


@settings(max_examples=300, deadline=None)
@given(case=verifiable(), data=st.data())
def test_any_single_bit_flip_is_rejected(case, data):
    # Prepare
    msg, author, raw = case
    assert verify(decode(raw), TRUST) == msg  # the untouched envelope is fine
    bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    # Execute / Assert: a structural error or a failed check, never a message
    with pytest.raises(ProtocolError):
        verify(decode(bytes(flipped)), TRUST)


@settings(max_examples=100, deadline=None)
@given(case=verifiable(), data=st.data())
def test_truncation_and_extension_are_decode_errors(case, data):
    _, _, raw = case
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(DecodeError):
        decode(raw[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=70), label="extra")
    with pytest.raises(DecodeError):
        decode(raw + extra)


def test_every_truncation_of_a_seed_is_a_decode_error():
    env = SeedEnvelope.build(
        owner="d0", to="d1", version=1, onnx=bytes(range(256)), arch="seed", input_shape=(-1, 64),
        num_classes=10, reference_sha256="0" * 64, epoch=0,
    )  # fmt: skip
    raw = encode(env, KEYS["d0"], "d0")
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:cut])


# --- malformed envelopes, each signed validly so only the structure is wrong ------------------


def _envelope(code: int, header: bytes, body: bytes = b"", sender: bytes = b"d0", version: int = 1) -> bytes:
    signed = (
        MAGIC
        + bytes([version, code, len(sender)])
        + sender
        + struct.pack(">I", len(header))
        + header
        + struct.pack(">I", len(body))
        + body
    )
    return signed + KEYS["d0"].sign(signed)


NEIGHBORS = {"device_id": "d0", "neighbors": ["d1"], "version": 3}


def test_the_helper_builds_a_valid_envelope():
    msg = verify(decode(_envelope(3, canonical.dumps(NEIGHBORS))), TRUST)
    assert msg == NeighborList("d0", ("d1",), 3)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "too short"),
        (b"XXXX" + _envelope(3, canonical.dumps(NEIGHBORS))[4:], "magic"),
        (_envelope(3, canonical.dumps(NEIGHBORS), version=2), "version 2"),
        (_envelope(99, canonical.dumps(NEIGHBORS)), "unknown message type"),
        (_envelope(3, canonical.dumps(NEIGHBORS), sender=b"d/0"), "sender id"),
        (_envelope(3, canonical.dumps(NEIGHBORS), sender=b""), "sender id length"),
        (_envelope(3, b"{not json"), "malformed"),
        (_envelope(3, json.dumps(NEIGHBORS).encode()), "canonical"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "version": 3.0})), "must be int"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "version": True})), "must be int"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "version": -1})), "must lie in"),
        (_envelope(3, canonical.dumps({"device_id": "d0", "version": 3})), "missing"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "extra": 1})), "unexpected"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "neighbors": "d1"})), "list"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "neighbors": ["d1", "d1"]})), "twice"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "neighbors": ["d0"]})), "itself"),
        (_envelope(3, canonical.dumps({**NEIGHBORS, "neighbors": ["d+"]})), "must match"),
        (_envelope(3, canonical.dumps([1, 2])), "JSON object"),
        (_envelope(3, b'{"device_id":NaN}'), "NaN"),
        (_envelope(3, canonical.dumps(NEIGHBORS), body=b"x"), "carries no body"),
        (_envelope(4, canonical.dumps({"target": "admin", "issuer": "admin", "request_id": "r",
                                       "issued_at": 1.0, "reason": "", "epoch": 0})), "reserved"),  # fmt: skip
    ],
)
def test_malformed_envelopes_are_decode_errors(raw, match):
    with pytest.raises(DecodeError, match=match):
        decode(raw)


def test_seed_body_must_match_its_hash():
    env = SeedEnvelope.build(
        owner="d0", to="d1", version=1, onnx=b"onnx", arch="seed", input_shape=(-1, 64), num_classes=10,
        reference_sha256="0" * 64, epoch=0,
    )  # fmt: skip
    good = {
        "owner": "d0", "to": "d1", "version": 1, "sha256": sha256_hex(b"onnx"), "arch": "seed",
        "input_shape": [-1, 64], "num_classes": 10, "reference_sha256": "0" * 64, "epoch": 0,
    }  # fmt: skip
    assert decode(_envelope(2, canonical.dumps(good), body=b"onnx")).msg == env
    with pytest.raises(DecodeError, match="sha256"):
        decode(_envelope(2, canonical.dumps(good), body=b"onnX"))


def test_size_caps():
    env = SeedEnvelope.build(
        owner="d0", to="d1", version=1, onnx=b"x" * 5000, arch="seed", input_shape=(-1, 64), num_classes=10,
        reference_sha256="0" * 64, epoch=0,
    )  # fmt: skip
    raw = encode(env, KEYS["d0"], "d0")
    assert decode(raw, max_bytes=len(raw)).msg == env
    with pytest.raises(DecodeError, match="cap"):
        decode(raw, max_bytes=len(raw) - 1)
    # A header length field far beyond the cap is refused before anything is read.
    huge = bytearray(_envelope(3, canonical.dumps(NEIGHBORS)))
    huge[9:13] = struct.pack(">I", MAX_HEADER_BYTES + 1)
    with pytest.raises(DecodeError, match="header of"):
        decode(bytes(huge))
    assert DEFAULT_MAX_BYTES >= 1 << 20


def test_encode_refuses_bad_sender_and_non_messages():
    with pytest.raises(ValueError):
        encode(NeighborList("d0", (), 1), KEYS["d0"], "d0/x")
    with pytest.raises(TypeError):
        encode({"device_id": "d0"}, KEYS["d0"], "d0")  # type: ignore[arg-type]


def test_cleared_retained_payload_is_not_a_message():
    assert is_clear(b"") and not is_clear(b"HDUS")
    with pytest.raises(DecodeError):
        decode(b"")


def test_seed_repr_hides_the_bytes():
    env = SeedEnvelope.build(
        owner="d0", to="d1", version=1, onnx=b"SECRETBYTES" * 10, arch="seed", input_shape=(-1, 64),
        num_classes=10, reference_sha256="0" * 64, epoch=0,
    )  # fmt: skip
    assert "SECRETBYTES" not in repr(env) and "SECRETBYTES" not in repr(decode(encode(env, KEYS["d0"], "d0")))
