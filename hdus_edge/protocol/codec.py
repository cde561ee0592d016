"""The only code that turns messages into bytes and back, and the one place that decides authority.

Envelope, version 1 (all integers big-endian)::

    b"HDUS" | version u8 | type u8 | sender_len u8 | sender (ASCII id)
    | header_len u32 | header (canonical JSON) | body_len u32 | body (ONNX; empty for control messages)
    | signature (64 bytes, Ed25519 over every byte before it)

``decode`` checks structure only and is strict: exact length, known version and type, header that is
canonical JSON with exactly the expected fields (re-encoding the decoded message must give the same
bytes, so one message has exactly one encoding), caps on every length. ``verify`` checks who signed and
whether they may say it. A receiver runs both; a message is usable only after ``verify`` returns.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hdus_edge.errors import (
    DecodeError,
    ProtocolError,
    SenderMismatchError,
    UnauthorizedError,
)
from hdus_edge.protocol import canonical, crypto
from hdus_edge.protocol.crypto import (
    DeviceCertificate,
    SigningKey,
    TrustStore,
    VerifyKey,
)
from hdus_edge.protocol.fields import ADMIN_ID, SIGNATURE_BYTES, check_signer_id
from hdus_edge.protocol.messages import (
    Hello,
    Message,
    NeighborList,
    Receipt,
    RevocationList,
    SeedEnvelope,
    SeedRetire,
    SwapReceipt,
    TombstoneDigest,
    UnlearnOrder,
    claimed_sender,
    sha256_hex,
)

logger = logging.getLogger(__name__)

MAGIC = b"HDUS"
VERSION = 1
DEFAULT_MAX_BYTES = 1 << 20  # a 4k-6k parameter seed is ~30 KB of ONNX; 1 MiB leaves room, stops floods
MAX_HEADER_BYTES = 256 * 1024  # a digest of 256 orders is the largest header (~230 KB of hex)
MAX_SENDER_BYTES = 64

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_MIN_SIZE = len(MAGIC) + 3 + 1 + 2 * _U32.size + SIGNATURE_BYTES


@dataclass(frozen=True)
class SignedMessage:
    """A decoded envelope: who says they sent it, the message, and what was signed. Not yet trusted."""

    sender: str
    msg: Message
    signed_bytes: bytes
    signature: bytes

    @property
    def raw(self) -> bytes:
        """The envelope exactly as it travelled (to store, forward or gossip)."""
        return self.signed_bytes + self.signature

    def __repr__(self) -> str:
        return f"SignedMessage(sender={self.sender!r}, msg={self.msg!r}, bytes={len(self.raw)})"


# --- per-type header conversion (x_to_header / x_from_header pairs) -------------------------


def _fields(header: Any, kind: str, names: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(header, dict):
        raise TypeError(f"{kind} header must be a JSON object")
    if set(header) != set(names):
        missing, extra = sorted(set(names) - set(header)), sorted(set(header) - set(names))
        raise ValueError(f"{kind} header fields wrong: missing {missing}, unexpected {extra}")
    return header


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a hex string")
    return bytes.fromhex(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a JSON list")
    return value


def _hello_to(m: Hello) -> dict[str, Any]:
    return {
        "device_id": m.device_id,
        "public_key": m.public_key.hex(),
        "certificate": m.certificate.to_dict(),
        "profile": m.profile,
        "main_arch": m.main_arch,
        "seed_arch": m.seed_arch,
    }


def _hello_from(h: Any, body: bytes) -> Hello:
    h = _fields(h, "hello", ("device_id", "public_key", "certificate", "profile", "main_arch", "seed_arch"))
    return Hello(
        device_id=h["device_id"],
        public_key=_hex(h["public_key"], "public_key"),
        certificate=DeviceCertificate.from_dict(h["certificate"]),
        profile=h["profile"],
        main_arch=h["main_arch"],
        seed_arch=h["seed_arch"],
    )


_SEED_FIELDS = ("owner", "to", "version", "sha256", "arch", "input_shape", "num_classes", "reference_sha256", "epoch")


def _seed_to(m: SeedEnvelope) -> dict[str, Any]:
    header = {name: getattr(m, name) for name in _SEED_FIELDS}
    header["input_shape"] = list(m.input_shape)
    return header


def _seed_from(h: Any, body: bytes) -> SeedEnvelope:
    h = dict(_fields(h, "seed", _SEED_FIELDS))
    h["input_shape"] = _list(h["input_shape"], "input_shape")
    return SeedEnvelope(onnx=body, **h)


def _neighbors_to(m: NeighborList) -> dict[str, Any]:
    return {"device_id": m.device_id, "neighbors": list(m.neighbors), "version": m.version}


def _neighbors_from(h: Any, body: bytes) -> NeighborList:
    h = _fields(h, "neighbor list", ("device_id", "neighbors", "version"))
    return NeighborList(h["device_id"], _list(h["neighbors"], "neighbors"), h["version"])


_ORDER_FIELDS = ("target", "issuer", "request_id", "issued_at", "reason", "epoch")


def _order_to(m: UnlearnOrder) -> dict[str, Any]:
    return {name: getattr(m, name) for name in _ORDER_FIELDS}


def _order_from(h: Any, body: bytes) -> UnlearnOrder:
    return UnlearnOrder(**_fields(h, "unlearn order", _ORDER_FIELDS))


_RECEIPT_FIELDS = ("request_id", "target", "device_id", "removed_sha256", "members_after", "at")


def _receipt_to(m: Receipt) -> dict[str, Any]:
    header = {name: getattr(m, name) for name in _RECEIPT_FIELDS}
    header["members_after"] = list(m.members_after)
    return header


def _receipt_from(h: Any, body: bytes) -> Receipt:
    h = dict(_fields(h, "receipt", _RECEIPT_FIELDS))
    h["members_after"] = _list(h["members_after"], "members_after")
    return Receipt(**h)


def _digest_to(m: TombstoneDigest) -> dict[str, Any]:
    return {"device_id": m.device_id, "orders": [order.hex() for order in m.orders]}


def _digest_from(h: Any, body: bytes) -> TombstoneDigest:
    h = _fields(h, "tombstone digest", ("device_id", "orders"))
    return TombstoneDigest(h["device_id"], [_hex(o, "digest order") for o in _list(h["orders"], "orders")])


def _revocations_to(m: RevocationList) -> dict[str, Any]:
    return {"version": m.version, "issued_at": m.issued_at, "revoked": [[d, e] for d, e in m.revoked],
            "orders": [order.hex() for order in m.orders]}


def _revocations_from(h: Any, body: bytes) -> RevocationList:
    h = _fields(h, "revocation list", ("version", "issued_at", "revoked", "orders"))
    revoked = [tuple(_list(entry, "revoked entry")) for entry in _list(h["revoked"], "revoked")]
    orders = [_hex(o, "revocation order") for o in _list(h["orders"], "orders")]
    return RevocationList(h["version"], h["issued_at"], tuple(revoked), tuple(orders))  # type: ignore[arg-type]
_RETIRE_FIELDS = ("owner", "request_id", "version", "sha256", "retired_sha256", "epoch", "issued_at", "reason")


def _retire_to(m: SeedRetire) -> dict[str, Any]:
    header = {name: getattr(m, name) for name in _RETIRE_FIELDS}
    header["retired_sha256"] = list(m.retired_sha256)
    return header


def _retire_from(h: Any, body: bytes) -> SeedRetire:
    h = dict(_fields(h, "seed retirement", _RETIRE_FIELDS))
    h["retired_sha256"] = _list(h["retired_sha256"], "retired_sha256")
    return SeedRetire(**h)


_SWAP_FIELDS = ("request_id", "owner", "device_id", "version", "held_sha256", "removed_sha256", "at")


def _swap_to(m: SwapReceipt) -> dict[str, Any]:
    return {name: getattr(m, name) for name in _SWAP_FIELDS}


def _swap_from(h: Any, body: bytes) -> SwapReceipt:
    return SwapReceipt(**_fields(h, "swap receipt", _SWAP_FIELDS))


@dataclass(frozen=True)
class _Kind:
    code: int
    cls: type
    to_header: Callable[[Any], dict[str, Any]]
    from_header: Callable[[Any, bytes], Any]
    has_body: bool = False


# Type codes are part of the wire format: never renumber, only append.
_KINDS = (
    _Kind(1, Hello, _hello_to, _hello_from),
    _Kind(2, SeedEnvelope, _seed_to, _seed_from, has_body=True),
    _Kind(3, NeighborList, _neighbors_to, _neighbors_from),
    _Kind(4, UnlearnOrder, _order_to, _order_from),
    _Kind(5, Receipt, _receipt_to, _receipt_from),
    _Kind(6, TombstoneDigest, _digest_to, _digest_from),
    _Kind(7, RevocationList, _revocations_to, _revocations_from),
    _Kind(8, SeedRetire, _retire_to, _retire_from),
    _Kind(9, SwapReceipt, _swap_to, _swap_from),
)
_BY_CODE = {k.code: k for k in _KINDS}
_BY_CLASS = {k.cls: k for k in _KINDS}


# --- encode / decode -------------------------------------------------------------------------


def _kind_of(msg: Message) -> _Kind:
    kind = _BY_CLASS.get(type(msg))
    if kind is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return kind


def encode(msg: Message, signing_key: SigningKey, sender_id: str) -> bytes:
    """Sign ``msg`` as ``sender_id`` (a device id, or ``"admin"`` with the admin key) and return the envelope."""
    kind = _kind_of(msg)
    sender = check_signer_id(sender_id).encode("ascii")
    header = canonical.dumps(kind.to_header(msg))
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(header)} bytes, more than {MAX_HEADER_BYTES}")
    body = msg.onnx if isinstance(msg, SeedEnvelope) else b""
    signed = b"".join(
        (
            MAGIC,
            _U8.pack(VERSION),
            _U8.pack(kind.code),
            _U8.pack(len(sender)),
            sender,
            _U32.pack(len(header)),
            header,
            _U32.pack(len(body)),
            body,
        )
    )
    return signed + signing_key.sign(signed)


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> SignedMessage:
    """Parse an envelope without trusting it; ``DecodeError`` on anything malformed or over ``max_bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(
            f"message of {len(data)} bytes exceeds the {max_bytes}-byte cap; it was not parsed",
            hint="raise the device's max message size if seeds this large are expected",
        )
    if len(data) < _MIN_SIZE:
        raise DecodeError(f"message of {len(data)} bytes is too short to be an envelope")
    if data[:4] != MAGIC:
        raise DecodeError("not an hdus envelope (bad magic)")
    version, code, sender_len = data[4], data[5], data[6]
    if version != VERSION:
        raise DecodeError(
            f"envelope version {version} is not supported (this build speaks {VERSION})",
            hint="run the same hdus-edge version on every device",
        )
    kind = _BY_CODE.get(code)
    if kind is None:
        raise DecodeError(f"unknown message type {code}")
    if not 1 <= sender_len <= MAX_SENDER_BYTES:
        raise DecodeError(f"sender id length {sender_len} is out of range")
    pos = 7
    sender_raw = data[pos : pos + sender_len]
    pos += sender_len
    try:
        sender = check_signer_id(sender_raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, TypeError):
        raise DecodeError(f"sender id {sender_raw!r} is not a valid id") from None
    header, pos = _take(data, pos, MAX_HEADER_BYTES, "header")
    body, pos = _take(data, pos, max_bytes, "body")
    if len(data) - pos != SIGNATURE_BYTES:
        raise DecodeError(f"envelope length is off by {len(data) - pos - SIGNATURE_BYTES} bytes")
    if body and not kind.has_body:
        raise DecodeError(f"a {kind.cls.__name__} carries no body, got {len(body)} bytes")
    try:
        msg = kind.from_header(canonical.loads(header), body)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"malformed {kind.cls.__name__}: {exc}") from None
    if canonical.dumps(kind.to_header(msg)) != header:
        raise DecodeError(f"{kind.cls.__name__} header is not in canonical form")
    if isinstance(msg, SeedEnvelope) and not msg.body_matches():
        raise DecodeError(f"seed body sha256 {sha256_hex(body)[:16]}... differs from its header {msg.sha256[:16]}...")
    return SignedMessage(sender=sender, msg=msg, signed_bytes=data[:pos], signature=data[pos:])


def _take(data: bytes, pos: int, cap: int, what: str) -> tuple[bytes, int]:
    if len(data) < pos + _U32.size:
        raise DecodeError(f"envelope truncated before the {what} length")
    (length,) = _U32.unpack_from(data, pos)
    pos += _U32.size
    if length > cap:
        raise DecodeError(f"{what} of {length} bytes exceeds the {cap}-byte cap")
    if len(data) < pos + length + SIGNATURE_BYTES:
        raise DecodeError(f"envelope truncated inside the {what}")
    return data[pos : pos + length], pos + length


def is_clear(payload: bytes) -> bool:
    """True for an empty payload: MQTT's way of clearing a retained topic (not a message; never decode it)."""
    return len(payload) == 0


# --- verify: who signed, and may they say it ---------------------------------------------------


def verify(signed: SignedMessage, trust: TrustStore, *, recipient: str | None = None) -> Message:
    """Return the message when its signer is certified, the signature holds and the signer may say it.

    Raises ``UnknownSenderError`` (signer not certified), ``SignatureError`` (bytes not signed by the
    sender's key), ``SenderMismatchError`` (the message claims another author than the signer),
    ``UnauthorizedError`` (policy: an unlearn order from neither the target nor the admin, a seed with
    an epoch other than its owner's certified one, a seed for another ``recipient``), ``DecodeError``
    (seed body does not match its hash). A ``Hello`` is checked against the certificate it carries;
    the caller then adds that certificate with ``trust.certify``.
    """
    msg = signed.msg
    if isinstance(msg, Hello):
        key = _hello_key(msg, trust)
    else:
        key = trust.key_for(signed.sender)
    crypto.verify(key, signed.signed_bytes, signed.signature)
    claimed = claimed_sender(msg)
    if claimed != signed.sender:
        raise SenderMismatchError(
            f"{type(msg).__name__} claims {claimed!r} as author but was signed by {signed.sender!r}",
            hint="a device may only speak for itself",
        )
    if isinstance(msg, UnlearnOrder):
        _check_order(msg, trust)
    elif isinstance(msg, SeedEnvelope):
        _check_seed(msg, trust, recipient)
    elif isinstance(msg, SeedRetire):
        _check_retire(msg, trust)
    return msg


def _hello_key(msg: Hello, trust: TrustStore) -> VerifyKey:
    cert = msg.certificate
    crypto.verify_certificate(trust.admin_key, cert, trust.fleet)
    if cert.device_id != msg.device_id or cert.public_key != msg.public_key:
        raise SenderMismatchError(
            f"hello from {msg.device_id!r} carries a certificate for {cert.device_id!r} / another key",
            hint="a device must present its own certificate",
        )
    return cert.verify_key


def _check_order(order: UnlearnOrder, trust: TrustStore) -> None:
    if order.issuer == ADMIN_ID:
        return
    if order.issuer != order.target:
        raise UnauthorizedError(
            f"{order.issuer!r} may not order {order.target!r} forgotten",
            hint="only the device itself or the fleet admin can issue an unlearn order",
        )
    # A device may forget its own past incarnations, never pre-empt a future one.
    held = trust.epoch_of(order.target)
    if order.epoch > held:
        raise UnauthorizedError(f"{order.target!r} ordered epoch {order.epoch} forgotten, but its epoch is {held}")


def _check_seed(seed: SeedEnvelope, trust: TrustStore, recipient: str | None) -> None:
    if not seed.body_matches():
        raise DecodeError(f"seed body of {seed.owner!r} does not match its sha256")
    held = trust.epoch_of(seed.owner)
    # Without this a forgotten device could sign a seed with a higher epoch and slip past its tombstone.
    if seed.epoch != held:
        raise UnauthorizedError(
            f"seed of {seed.owner!r} claims epoch {seed.epoch}, but {seed.owner!r} is certified at epoch {held}"
        )
    if recipient is not None and seed.to != recipient:
        raise UnauthorizedError(f"seed of {seed.owner!r} is addressed to {seed.to!r}, not {recipient!r}")


def _check_retire(retire: SeedRetire, trust: TrustStore) -> None:
    held = trust.epoch_of(retire.owner)
    # Only the current incarnation speaks for its seeds, as with the seeds themselves.
    if retire.epoch != held:
        raise UnauthorizedError(
            f"retirement by {retire.owner!r} claims epoch {retire.epoch}, but {retire.owner!r} is certified at epoch {held}"
        )


def open_digest(
    digest: TombstoneDigest, trust: TrustStore, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[SignedMessage], list[tuple[int, ProtocolError]]]:
    """Decode and verify every order in a (verified) digest on its own authority.

    Returns (accepted orders, [(index, error)] for the rest): a bad entry never spoils the good ones.
    """
    return open_orders(digest.orders, trust, f"digest from {digest.device_id}", max_bytes)


def open_orders(
    orders: tuple[bytes, ...], trust: TrustStore, source: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[SignedMessage], list[tuple[int, ProtocolError]]]:
    """Decode and verify encoded unlearn orders (a digest's or a revocation list's), each on its own authority."""
    accepted: list[SignedMessage] = []
    rejected: list[tuple[int, ProtocolError]] = []
    for index, raw in enumerate(orders):
        try:
            signed = decode(raw, max_bytes)
            if not isinstance(signed.msg, UnlearnOrder):
                raise DecodeError(f"entry {index} is a {type(signed.msg).__name__}, not an unlearn order")
            verify(signed, trust)
        except ProtocolError as exc:
            logger.warning("%s: entry %d rejected: %s", source, index, exc)
            rejected.append((index, exc))
            continue
        accepted.append(signed)
    return accepted, rejected
