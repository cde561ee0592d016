"""Hostile protocol envelopes, built from a valid one: what a certified-but-malicious device, or
anyone who can flip bits on the wire, could send.

The envelope layout is the codec's (``hdus_edge.protocol.codec``)::

    b"HDUS" | version u8 | type u8 | sender_len u8 | sender | header_len u32 | header | body_len u32 | body | signature

Two families:

- **Re-signed** field mutants (``field-missing``, ``wrong-type``, ``oversized``, ``extra-field``):
  the header is decoded, one field is changed, and the envelope is signed again with the sender's own
  key, so only the decoder's strictness stands between them and the agent.
- **Unsigned** bit flips by region (``flip-framing``, ``flip-header``, ``flip-body``,
  ``flip-signature``): the signature no longer matches the bytes, or the framing no longer parses.

Every mutant must be rejected; a receiver that acts on one has made a false accept.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from typing import Any

from hdus_edge.protocol.codec import MAGIC
from hdus_edge.protocol.crypto import SigningKey

_U32 = struct.Struct(">I")
SIGNATURE_BYTES = 64
# One value of every JSON type; a field gets each one whose type differs from its own.
_TYPED_VALUES: tuple[tuple[str, Any], ...] = (
    ("null", None), ("bool", True), ("int", 1), ("float", 1.5), ("str", "x"), ("list", []), ("object", {}),
)


@dataclass(frozen=True)
class EnvelopeMutant:
    """One hostile envelope: what was changed (``region``, ``name``) and the bytes."""

    name: str
    region: str
    data: bytes

    def __repr__(self) -> str:
        return f"EnvelopeMutant({self.name!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class Parts:
    """An envelope taken apart (no checks beyond the framing)."""

    version: int
    code: int
    sender: bytes
    header: bytes
    body: bytes
    signature: bytes

    def regions(self) -> dict[str, tuple[int, int]]:
        """Byte ranges [start, end) of each region in the assembled envelope."""
        framing_end = len(MAGIC) + 3
        sender = (framing_end, framing_end + len(self.sender))
        header = (sender[1] + 4, sender[1] + 4 + len(self.header))
        body = (header[1] + 4, header[1] + 4 + len(self.body))
        return {
            "framing": (0, framing_end),
            "sender": sender,
            "header-length": (sender[1], sender[1] + 4),
            "header": header,
            "body-length": (header[1], header[1] + 4),
            "body": body,
            "signature": (body[1], body[1] + SIGNATURE_BYTES),
        }


def split(envelope: bytes) -> Parts:
    """Take a well-framed envelope apart; ``ValueError`` when the framing does not parse."""
    if envelope[:4] != MAGIC or len(envelope) < 7:
        raise ValueError("not an envelope")
    version, code, sender_len = envelope[4], envelope[5], envelope[6]
    pos = 7
    sender = envelope[pos : pos + sender_len]
    pos += sender_len
    (hlen,) = _U32.unpack_from(envelope, pos)
    header = envelope[pos + 4 : pos + 4 + hlen]
    pos += 4 + hlen
    (blen,) = _U32.unpack_from(envelope, pos)
    body = envelope[pos + 4 : pos + 4 + blen]
    pos += 4 + blen
    signature = envelope[pos:]
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError("envelope length is off")
    return Parts(version, code, sender, header, body, signature)


def assemble(
    code: int,
    sender: str | bytes,
    header: bytes,
    body: bytes,
    key: SigningKey | None,
    *,
    version: int = 1,
) -> bytes:
    """Frame and sign (``key``) arbitrary header bytes; ``key=None`` appends 64 zero bytes."""
    sender_raw = sender.encode("ascii") if isinstance(sender, str) else sender
    signed = b"".join((MAGIC, bytes([version, code, len(sender_raw)]), sender_raw,
                       _U32.pack(len(header)), header, _U32.pack(len(body)), body))
    return signed + (key.sign(signed) if key is not None else bytes(SIGNATURE_BYTES))


def canonical_json(value: Any) -> bytes:
    """The codec's canonical JSON (sorted keys, no spaces, ASCII), for any JSON value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def resign(envelope: bytes, header: Any, key: SigningKey, *, body: bytes | None = None) -> bytes:
    """The same envelope with another header (a JSON value) and body, signed again by ``key``."""
    p = split(envelope)
    return assemble(p.code, p.sender, canonical_json(header), p.body if body is None else body, key, version=p.version)


def _oversized(value: Any) -> list[tuple[str, Any]]:
    """Values far past every cap, shaped like ``value``."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [("int-2^64", 2**64), ("int-negative", -1)]
    if isinstance(value, float):
        return [("float-infinity", float("inf")), ("float-negative", -1.0)]  # JSON "Infinity": not canonical
    if isinstance(value, str):
        return [("str-100k", "a" * 100_000), ("str-2k", "a" * 2048)]
    if isinstance(value, list):
        return [("list-5k", [f"d{k}" for k in range(5000)]), ("list-nested", [[[[]]]])]
    if isinstance(value, dict):
        return [("object-extra", {**value, "extra": "a" * 1000})]
    return []


def field_mutants(envelope: bytes, key: SigningKey, kind: str) -> list[EnvelopeMutant]:
    """Every header field missing, of every wrong JSON type, and oversized; plus an extra field and
    non-canonical spacing: each signed again by ``key`` (the sender's own key)."""
    p = split(envelope)
    header = json.loads(p.header)
    out: list[EnvelopeMutant] = []
    for name in sorted(header):
        rest = {k: v for k, v in header.items() if k != name}
        out.append(EnvelopeMutant(f"{kind}/missing:{name}", "field-missing", resign(envelope, rest, key)))
        original = header[name]
        for type_name, value in _TYPED_VALUES:
            if type(value) is type(original) or (value is None and original is None):
                continue
            changed = {**header, name: value}
            out.append(EnvelopeMutant(f"{kind}/type:{name}={type_name}", "wrong-type", resign(envelope, changed, key)))
        for label, value in _oversized(original):
            changed = {**header, name: value}
            out.append(EnvelopeMutant(f"{kind}/oversized:{name}={label}", "oversized", resign(envelope, changed, key)))
    out.append(EnvelopeMutant(f"{kind}/extra-field", "extra-field", resign(envelope, {**header, "zz": 1}, key)))
    spaced = json.dumps(header, sort_keys=True).encode("ascii")  # ", " and ": ": not canonical
    out.append(EnvelopeMutant(f"{kind}/non-canonical", "non-canonical",
                              assemble(p.code, p.sender, spaced, p.body, key, version=p.version)))
    out.append(EnvelopeMutant(f"{kind}/header-not-object", "wrong-type", resign(envelope, [header], key)))
    deep = b"[" * 100_000 + b"]" * 100_000
    out.append(EnvelopeMutant(f"{kind}/header-deep-nesting", "oversized",
                              assemble(p.code, p.sender, deep[:200_000], p.body, key, version=p.version)))
    out.append(EnvelopeMutant(f"{kind}/header-not-utf8", "wrong-type",
                              assemble(p.code, p.sender, b"\xff\xfe{}", p.body, key, version=p.version)))
    if p.code != 2:  # control messages carry no body
        out.append(EnvelopeMutant(f"{kind}/unexpected-body", "oversized", resign(envelope, header, key, body=b"x" * 64)))
    else:  # a seed body that no longer matches its hash
        out.append(EnvelopeMutant(f"{kind}/body-swapped", "body", resign(envelope, header, key, body=p.body[::-1])))
    out.append(EnvelopeMutant(f"{kind}/unknown-version", "framing",
                              assemble(p.code, p.sender, p.header, p.body, key, version=2)))
    out.append(EnvelopeMutant(f"{kind}/unknown-type", "framing",
                              assemble(99, p.sender, p.header, p.body, key, version=p.version)))
    return out


def flip_mutants(envelope: bytes, rng: random.Random, per_region: int = 8,
                 regions: tuple[str, ...] = ("framing", "header-length", "header", "body-length", "body", "signature"),
                 ) -> list[EnvelopeMutant]:
    """``per_region`` single- or multi-bit flips in each named region, not re-signed.

    The ``sender`` region is left out by default: a flipped sender id can name an uncertified
    device, which a receiver parks until that device's hello (no rejection to count yet).
    """
    p = split(envelope)
    spans = p.regions()
    out = []
    for region in regions:
        start, end = spans[region]
        if end <= start:
            continue
        for k in range(per_region):
            buf = bytearray(envelope)
            flips = 1 if k % 2 == 0 else rng.randint(2, 8)
            where = []
            for _ in range(flips):
                pos = rng.randrange(start, end)
                buf[pos] ^= 1 << rng.randrange(8)
                where.append(pos)
            if bytes(buf) == envelope:  # two flips cancelled out
                buf[start] ^= 1
            out.append(EnvelopeMutant(f"flip-{region}@{','.join(map(str, where))}", f"flip-{region}", bytes(buf)))
    return out


def truncation_mutants(envelope: bytes, rng: random.Random, count: int = 8) -> list[EnvelopeMutant]:
    """The envelope cut short at ``count`` random lengths, and extended by a few bytes."""
    cuts = sorted({0, 1, len(envelope) - 1, *(rng.randrange(1, len(envelope)) for _ in range(count))})
    out = [EnvelopeMutant(f"truncated@{n}", "truncated", envelope[:n]) for n in cuts if n > 0]
    out.append(EnvelopeMutant("extended+1", "truncated", envelope + b"\x00"))
    out.append(EnvelopeMutant("extended+64", "truncated", envelope + rng.randbytes(64)))
    return out
