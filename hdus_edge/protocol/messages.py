"""The messages devices exchange: small frozen dataclasses, validated on construction, no bytes handling.

Every field is checked in ``__post_init__`` (``TypeError``/``ValueError`` for a bad value), so a message
object that exists is well formed; the codec relies on that and turns those errors into ``DecodeError``
for bytes off the wire. Sequences are normalised to tuples so messages stay hashable.

Who may sign what is the codec's business (``codec.verify``); the field that names the claimed sender is
given by ``claimed_sender``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Union

from hdus_edge.protocol.crypto import DeviceCertificate
from hdus_edge.protocol.fields import (
    ADMIN_ID,
    MAX_CLASSES,
    MAX_MEMBERS,
    PUBLIC_KEY_BYTES,
    check_bytes,
    check_counter,
    check_device_id,
    check_device_ids,
    check_name,
    check_request_id,
    check_sha256,
    check_shape,
    check_signer_id,
    check_text,
    check_time,
)

MAX_DIGEST_ORDERS = 256
MAX_NESTED_ORDER_BYTES = 4096


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of ``data`` (the seed hash format everywhere)."""
    return hashlib.sha256(data).hexdigest()


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields (list -> tuple, int -> float) this way.
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Hello:
    """A device announces itself: id, key, the admin's certificate over them, profile and model archs."""

    device_id: str
    public_key: bytes
    certificate: DeviceCertificate
    profile: str
    main_arch: str
    seed_arch: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        check_bytes(self.public_key, "public key", PUBLIC_KEY_BYTES)
        if not isinstance(self.certificate, DeviceCertificate):
            raise TypeError(f"certificate must be a DeviceCertificate, got {type(self.certificate).__name__}")
        check_name(self.profile, "profile")
        check_name(self.main_arch, "main arch")
        check_name(self.seed_arch, "seed arch")


@dataclass(frozen=True)
class SeedEnvelope:
    """A seed model for one neighbour: header fields plus the ONNX bytes (the body).

    ``version`` goes up with every new seed of ``owner``; ``epoch`` is the owner's certified epoch;
    ``input_shape`` dims are -1 where dynamic (the batch); ``reference_sha256`` names the reference set
    the seed was distilled on.
    """

    owner: str
    to: str
    version: int
    sha256: str
    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    reference_sha256: str
    epoch: int
    onnx: bytes

    def __post_init__(self) -> None:
        check_device_id(self.owner, "seed owner")
        check_device_id(self.to, "seed recipient")
        check_counter(self.version, "seed version", minimum=1)
        check_sha256(self.sha256, "seed sha256")
        check_name(self.arch, "seed arch")
        _set(self, "input_shape", check_shape(self.input_shape))
        check_counter(self.num_classes, "num_classes", minimum=1)
        if self.num_classes > MAX_CLASSES:
            raise ValueError(f"num_classes must be at most {MAX_CLASSES}, got {self.num_classes}")
        check_sha256(self.reference_sha256, "reference sha256")
        check_counter(self.epoch, "seed epoch")
        check_bytes(self.onnx, "seed onnx")

    @classmethod
    def build(
        cls,
        *,
        owner: str,
        to: str,
        version: int,
        onnx: bytes,
        arch: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        reference_sha256: str,
        epoch: int,
    ) -> SeedEnvelope:
        """An envelope whose ``sha256`` is computed from ``onnx``."""
        return cls(owner, to, version, sha256_hex(onnx), arch, input_shape, num_classes, reference_sha256, epoch, onnx)

    def body_matches(self) -> bool:
        """True when ``sha256`` is the hash of ``onnx``."""
        return sha256_hex(self.onnx) == self.sha256

    def __repr__(self) -> str:
        # Never dump the ONNX bytes into a log line.
        return (
            f"SeedEnvelope(owner={self.owner!r}, to={self.to!r}, version={self.version}, epoch={self.epoch}, "
            f"sha256={self.sha256[:16]}..., arch={self.arch!r}, bytes={len(self.onnx)})"
        )


@dataclass(frozen=True)
class NeighborList:
    """``device_id``'s current neighbours; ``version`` goes up with every change."""

    device_id: str
    neighbors: tuple[str, ...]
    version: int

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        _set(self, "neighbors", check_device_ids(self.neighbors, "neighbors", exclude=self.device_id))
        check_counter(self.version, "neighbor list version")


@dataclass(frozen=True)
class UnlearnOrder:
    """Forget ``target``: every holder deletes its seeds of epoch <= ``epoch`` and refuses them afterwards.

    Valid when signed by ``target`` itself or by the admin (``issuer`` = ``"admin"``).
    """

    target: str
    issuer: str
    request_id: str
    issued_at: float
    reason: str
    epoch: int

    def __post_init__(self) -> None:
        check_device_id(self.target, "unlearn target")
        check_signer_id(self.issuer, "unlearn issuer")
        check_request_id(self.request_id)
        _set(self, "issued_at", check_time(self.issued_at, "issued_at"))
        check_text(self.reason, "reason")
        check_counter(self.epoch, "unlearn epoch")


@dataclass(frozen=True)
class Receipt:
    """``device_id`` applied ``request_id``: it removed ``removed_sha256`` (None: it held none)."""

    request_id: str
    target: str
    device_id: str
    removed_sha256: str | None
    members_after: tuple[str, ...]
    at: float

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        check_device_id(self.target, "receipt target")
        check_device_id(self.device_id)
        if self.removed_sha256 is not None:
            check_sha256(self.removed_sha256, "removed sha256")
        _set(self, "members_after", check_device_ids(self.members_after, "members_after", exclude=self.target))
        _set(self, "at", check_time(self.at, "receipt time"))


@dataclass(frozen=True)
class TombstoneDigest:
    """Gossip of the unlearn orders ``device_id`` has applied, so a device that was away catches up.

    Carries the original signed orders (encoded envelopes), not claims about them: a receiver verifies
    each one on its own authority (``codec.open_digest``), so a digest can never forge an unlearn.
    """

    device_id: str
    orders: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if isinstance(self.orders, (bytes, str)):
            raise TypeError("orders must be a sequence of encoded orders")
        orders = tuple(self.orders)
        if len(orders) > MAX_DIGEST_ORDERS:
            raise ValueError(f"a digest carries at most {MAX_DIGEST_ORDERS} orders, got {len(orders)}")
        for order in orders:
            check_bytes(order, "digest order")
            if len(order) > MAX_NESTED_ORDER_BYTES:
                raise ValueError(f"a digest order is {len(order)} bytes, more than {MAX_NESTED_ORDER_BYTES}")
        _set(self, "orders", orders)


@dataclass(frozen=True)
class RevocationList:
    """The admin's list of revoked certificates: ``(device_id, epoch)`` = every epoch <= ``epoch`` is revoked.

    Retained on one topic and signed by the admin only, so a device that missed an unlearn order still
    refuses a forgotten device's certificate. ``orders`` carries the signed orders that forgot them
    (verified on their own authority, as in a digest), so such a device also deletes what it holds.
    ``version`` goes up with every new list; a device keeps the highest it saw.
    """

    version: int
    issued_at: float
    revoked: tuple[tuple[str, int], ...]
    orders: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_counter(self.version, "revocation list version", minimum=1)
        _set(self, "issued_at", check_time(self.issued_at, "revocation list issued_at"))
        if isinstance(self.revoked, (bytes, str)) or isinstance(self.orders, (bytes, str)):
            raise TypeError("revoked and orders must be sequences")
        revoked = []
        for entry in self.revoked:
            if isinstance(entry, (bytes, str)) or len(tuple(entry)) != 2:
                raise ValueError("a revoked entry is [device_id, epoch]")
            device, epoch = tuple(entry)
            revoked.append((check_device_id(device, "revoked device"), check_counter(epoch, "revoked epoch")))
        if len(revoked) > MAX_MEMBERS or len({d for d, _ in revoked}) != len(revoked):
            raise ValueError(f"a revocation list names each device once, at most {MAX_MEMBERS}")
        _set(self, "revoked", tuple(sorted(revoked)))
        orders = tuple(self.orders)
        if len(orders) > MAX_DIGEST_ORDERS:
            raise ValueError(f"a revocation list carries at most {MAX_DIGEST_ORDERS} orders, got {len(orders)}")
        for order in orders:
            check_bytes(order, "revocation order")
            if len(order) > MAX_NESTED_ORDER_BYTES:
                raise ValueError(f"a revocation order is {len(order)} bytes, more than {MAX_NESTED_ORDER_BYTES}")
        _set(self, "orders", orders)

    def revoked_epoch(self, device_id: str) -> int | None:
        """The highest revoked epoch of ``device_id``, or None when it is not revoked."""
        return dict(self.revoked).get(device_id)


MAX_RETIRED = 64


@dataclass(frozen=True)
class SeedRetire:
    """``owner`` retires every seed version below ``version``: holders delete them and refuse them forever.

    Sent when the owner forgot samples (``hdus-edge forget-samples``): the old versions carry the
    forgotten samples' influence. ``sha256`` names the new version that replaces them (a holder
    answers with a ``SwapReceipt`` once it holds it); ``retired_sha256`` the versions it retires.
    Valid only when signed by ``owner`` at its certified ``epoch``.
    """

    owner: str
    request_id: str
    version: int
    sha256: str
    retired_sha256: tuple[str, ...]
    epoch: int
    issued_at: float
    reason: str

    def __post_init__(self) -> None:
        check_device_id(self.owner, "seed owner")
        check_request_id(self.request_id)
        check_counter(self.version, "retiring version", minimum=2)
        check_sha256(self.sha256, "new seed sha256")
        if isinstance(self.retired_sha256, (str, bytes)):
            raise TypeError("retired_sha256 must be a sequence of sha256 hex strings")
        retired = tuple(self.retired_sha256)
        if len(retired) > MAX_RETIRED:
            raise ValueError(f"a retirement names at most {MAX_RETIRED} versions, got {len(retired)}")
        for digest in retired:
            check_sha256(digest, "retired sha256")
        if self.sha256 in retired:
            raise ValueError("a retirement cannot retire the version that replaces the old ones")
        _set(self, "retired_sha256", retired)
        check_counter(self.epoch, "seed epoch")
        _set(self, "issued_at", check_time(self.issued_at, "issued_at"))
        check_text(self.reason, "reason")


@dataclass(frozen=True)
class SwapReceipt:
    """``device_id`` applied retirement ``request_id`` of ``owner``'s old seed versions.

    It holds no version of ``owner`` below the retiring one; it now holds ``version`` with
    ``held_sha256`` (None: none of ``owner``'s seeds), and deleted ``removed_sha256`` (None: it held
    no retired version when the retirement arrived).
    """

    request_id: str
    owner: str
    device_id: str
    version: int
    held_sha256: str | None
    removed_sha256: str | None
    at: float

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        check_device_id(self.owner, "seed owner")
        check_device_id(self.device_id)
        if self.owner == self.device_id:
            raise ValueError("a device does not send itself a swap receipt")
        check_counter(self.version, "held version")
        for name in ("held_sha256", "removed_sha256"):
            if getattr(self, name) is not None:
                check_sha256(getattr(self, name), name)
        _set(self, "at", check_time(self.at, "receipt time"))


Message = Union[Hello, SeedEnvelope, NeighborList, UnlearnOrder, Receipt, TombstoneDigest, RevocationList,
                SeedRetire, SwapReceipt]
MESSAGE_TYPES: tuple[type, ...] = (Hello, SeedEnvelope, NeighborList, UnlearnOrder, Receipt, TombstoneDigest,
                                   RevocationList, SeedRetire, SwapReceipt)


def claimed_sender(msg: Message) -> str:
    """The id the message claims as its author; the signer must be exactly this id."""
    if isinstance(msg, (Hello, NeighborList, Receipt, TombstoneDigest, SwapReceipt)):
        return msg.device_id
    if isinstance(msg, (SeedEnvelope, SeedRetire)):
        return msg.owner
    if isinstance(msg, UnlearnOrder):
        return msg.issuer
    if isinstance(msg, RevocationList):
        return ADMIN_ID
    raise TypeError(f"not a protocol message: {type(msg).__name__}")
