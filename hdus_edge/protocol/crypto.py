"""Ed25519 keys, device certificates and the trust store: who may say what.

The fleet admin holds one signing key. At provisioning it signs a ``DeviceCertificate`` binding a device
id to that device's public key and an ``epoch`` (bumped each time the admin re-admits a forgotten
device). A device trusts exactly the admin's public key plus the certificates that verify under it
(``TrustStore``); the codec asks the trust store for the key of every sender.

Key files: private keys are written as unencrypted PKCS#8 PEM with mode 0600 (loading refuses a file
that group or others can read, like ssh); public keys as one line of hex. Both loaders also accept the
other format (raw 32-byte hex for a private key, SubjectPublicKeyInfo PEM for a public key).
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hdus_edge.errors import (
    KeyFileError,
    ReplayError,
    RevokedError,
    SignatureError,
    UnauthorizedError,
    UnknownSenderError,
)
from hdus_edge.files import atomic_write
from hdus_edge.protocol import canonical
from hdus_edge.protocol.fields import (
    ADMIN_ID,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    check_bytes,
    check_counter,
    check_device_id,
    check_fleet,
    check_name,
    check_time,
)

logger = logging.getLogger(__name__)

SEED_BYTES = 32
_CERT_DOMAIN = b"hdus-edge device certificate v1\n"  # keeps a certificate signature from passing as anything else


# --- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key: 32 raw bytes. Hashable, so it can key a dict."""

    raw: bytes

    def __post_init__(self) -> None:
        check_bytes(self.raw, "public key", PUBLIC_KEY_BYTES)

    @classmethod
    def from_hex(cls, text: str) -> VerifyKey:
        """Parse 64 hex digits; raise ``ValueError`` otherwise."""
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raise ValueError("public key must be 64 hex digits") from None
        return cls(raw)

    def hex(self) -> str:
        """The key as 64 lowercase hex digits."""
        return self.raw.hex()

    @property
    def fingerprint(self) -> str:
        """A short id for logs: the first 16 hex digits of sha256(raw)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise ``SignatureError`` unless ``signature`` is this key's signature over ``data``."""
        verify(self, data, signature)

    def __repr__(self) -> str:
        return f"VerifyKey({self.fingerprint})"


class SigningKey:
    """An Ed25519 private key. ``repr`` never shows the secret."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = VerifyKey(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the operating system's randomness."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key for a 32-byte seed: same seed, same key (for reproducible simulations)."""
        check_bytes(seed, "key seed", SEED_BYTES)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> VerifyKey:
        """The matching public key."""
        return self._public

    def seed(self) -> bytes:
        """The 32 secret bytes (for saving; handle with care)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.fingerprint})"


def sign(key: SigningKey, data: bytes) -> bytes:
    """Sign ``data`` with ``key``; return the 64-byte signature."""
    return key.sign(data)


def verify(public_key: VerifyKey, data: bytes, signature: bytes) -> None:
    """Raise ``SignatureError`` unless ``signature`` is ``public_key``'s signature over ``data``."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"a signature must be {SIGNATURE_BYTES} bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key.raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"signature does not verify under key {public_key.fingerprint}",
            hint="the message was altered in transit or signed by another key; it was ignored",
        ) from None


# --- key files -------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path} already exists", hint="refusing to overwrite a key; move it away first")
    atomic_write(path, data, mode=mode)


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{what} file {path} does not exist", hint="run 'hdus-edge provision' to create keys"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > 16384:
        raise KeyFileError(f"{what} file {path} is {len(data)} bytes; a key file is well under 1 KiB")
    return data


def save_signing_key(key: SigningKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600; refuse to overwrite unless ``overwrite``."""
    pem = key._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(Path(path), pem, 0o600, overwrite)


def load_signing_key(path: Path) -> SigningKey:
    """Read a private key file (PKCS#8 PEM or 64 hex digits); ``KeyFileError`` when unusable."""
    path = Path(path)
    data = _read_key_file(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"private key file {path} is readable by others (mode {mode:04o})", hint=f"run: chmod 600 {path}"
        )
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"private key file {path} is not a readable unencrypted PEM key: {exc}") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyFileError(f"private key file {path} holds a {type(loaded).__name__}, not an Ed25519 key")
        return SigningKey(loaded)
    try:
        seed = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != SEED_BYTES:
        raise KeyFileError(f"private key file {path} is neither PEM nor 64 hex digits")
    return SigningKey.from_seed(seed)


def save_verify_key(key: VerifyKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``key`` as one line of hex, mode 0644."""
    _write_private(Path(path), (key.hex() + "\n").encode("ascii"), 0o644, overwrite)


def load_verify_key(path: Path) -> VerifyKey:
    """Read a public key file (64 hex digits or SubjectPublicKeyInfo PEM); ``KeyFileError`` when unusable."""
    path = Path(path)
    data = _read_key_file(path, "public key")
    if data.strip().startswith(b"-----BEGIN"):
        try:
            loaded = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"public key file {path} is not a readable PEM key: {exc}") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise KeyFileError(f"public key file {path} holds a {type(loaded).__name__}, not an Ed25519 key")
        return VerifyKey(loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    try:
        return VerifyKey.from_hex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"public key file {path} is neither PEM nor 64 hex digits") from None


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCertificate:
    """The admin's statement: in ``fleet``, device ``device_id`` at ``epoch`` owns ``public_key``.

    ``epoch`` starts at 0 and goes up by one each time the admin re-admits the device after it was
    forgotten; seeds and orders carry it so that old tombstones keep refusing old incarnations.
    """

    fleet: str
    device_id: str
    public_key: bytes
    epoch: int
    profile: str
    issued_at: float
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        check_fleet(self.fleet)
        check_device_id(self.device_id)
        check_bytes(self.public_key, "certificate public key", PUBLIC_KEY_BYTES)
        check_counter(self.epoch, "certificate epoch")
        check_name(self.profile, "certificate profile")
        object.__setattr__(self, "issued_at", check_time(self.issued_at, "certificate issued_at"))
        check_bytes(self.signature, "certificate signature")

    @property
    def verify_key(self) -> VerifyKey:
        """The certified public key."""
        return VerifyKey(self.public_key)

    def signed_payload(self) -> bytes:
        """The exact bytes the admin signs: a domain tag plus the canonical JSON of every other field."""
        body = self.to_dict()
        del body["signature"]
        return _CERT_DOMAIN + canonical.dumps(body)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (bytes as hex)."""
        return {
            "fleet": self.fleet,
            "device_id": self.device_id,
            "public_key": self.public_key.hex(),
            "epoch": self.epoch,
            "profile": self.profile,
            "issued_at": self.issued_at,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceCertificate:
        """Inverse of ``to_dict``; raise ``ValueError``/``TypeError`` on missing, extra or bad fields."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a certificate must be a JSON object, got {type(data).__name__}")
        expected = {"fleet", "device_id", "public_key", "epoch", "profile", "issued_at", "signature"}
        if set(data) != expected:
            missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
            raise ValueError(f"certificate fields wrong: missing {missing}, unexpected {extra}")
        for name in ("public_key", "signature"):
            if not isinstance(data[name], str):
                raise TypeError(f"certificate {name} must be a hex string")
        try:
            public_key, signature = bytes.fromhex(data["public_key"]), bytes.fromhex(data["signature"])
        except ValueError:
            raise ValueError("certificate public_key/signature must be hex") from None
        return cls(
            fleet=data["fleet"],
            device_id=data["device_id"],
            public_key=public_key,
            epoch=data["epoch"],
            profile=data["profile"],
            issued_at=data["issued_at"],
            signature=signature,
        )


def issue_certificate(
    admin_key: SigningKey,
    *,
    fleet: str,
    device_id: str,
    public_key: VerifyKey,
    epoch: int = 0,
    profile: str = "generic-x86_64",
    issued_at: float | None = None,
) -> DeviceCertificate:
    """Sign a certificate binding ``device_id`` to ``public_key`` at ``epoch`` (admin side)."""
    unsigned = DeviceCertificate(
        fleet=fleet,
        device_id=device_id,
        public_key=public_key.raw,
        epoch=epoch,
        profile=profile,
        issued_at=time.time() if issued_at is None else issued_at,
    )
    return replace(unsigned, signature=admin_key.sign(unsigned.signed_payload()))


def verify_certificate(admin_key: VerifyKey, cert: DeviceCertificate, fleet: str | None = None) -> None:
    """Raise ``SignatureError`` unless the admin signed ``cert``; ``UnauthorizedError`` for another fleet."""
    if fleet is not None and cert.fleet != fleet:
        raise UnauthorizedError(
            f"certificate of {cert.device_id!r} is for fleet {cert.fleet!r}, not {fleet!r}",
            hint="provision the device for this fleet",
        )
    try:
        verify(admin_key, cert.signed_payload(), cert.signature)
    except SignatureError:
        raise SignatureError(
            f"certificate of {cert.device_id!r} (epoch {cert.epoch}) is not signed by this fleet's admin",
            hint="re-provision the device with the fleet admin key",
        ) from None


def save_certificate(cert: DeviceCertificate, path: Path, *, overwrite: bool = True) -> None:
    """Write ``cert`` as canonical JSON (mode 0644)."""
    _write_private(Path(path), canonical.dumps(cert.to_dict()) + b"\n", 0o644, overwrite)


def load_certificate(path: Path) -> DeviceCertificate:
    """Read a certificate file; ``KeyFileError`` when missing or malformed (the signature is not checked)."""
    data = _read_key_file(Path(path), "certificate")
    try:
        return DeviceCertificate.from_dict(canonical.loads(data.strip()))
    except (TypeError, ValueError) as exc:
        raise KeyFileError(f"certificate file {path} is malformed: {exc}") from None


# --- trust store -----------------------------------------------------------------------------


class TrustStore:
    """The keys a device trusts: the admin's, plus every certificate the admin signed (pure, no I/O).

    One certificate per device id, the highest epoch wins; a key belongs to at most one device.
    """

    def __init__(self, fleet: str, admin_key: VerifyKey) -> None:
        self.fleet = check_fleet(fleet)
        if not isinstance(admin_key, VerifyKey):
            raise TypeError(f"admin_key must be a VerifyKey, got {type(admin_key).__name__}")
        self.admin_key = admin_key
        self._certs: dict[str, DeviceCertificate] = {}
        self._by_key: dict[bytes, str] = {}
        self._revoked: dict[str, int] = {}  # device -> highest revoked epoch (the admin's revocation list)

    def certify(self, cert: DeviceCertificate) -> bool:
        """Verify ``cert`` and hold it; return True when it changed what is held, False for a repeat.

        Raises ``SignatureError`` (not the admin's), ``UnauthorizedError`` (other fleet, key already
        bound to another device, or the admin's own key), ``ReplayError`` (older epoch than held, or a
        different certificate at the same epoch).
        """
        verify_certificate(self.admin_key, cert, self.fleet)
        if self.is_revoked(cert.device_id, cert.epoch):
            raise RevokedError(
                f"certificate of {cert.device_id!r} at epoch {cert.epoch} was revoked by the fleet admin",
                hint="a forgotten device must be re-admitted with a new epoch ('hdus-edge readmit')",
            )
        if cert.public_key == self.admin_key.raw:
            raise UnauthorizedError(f"certificate of {cert.device_id!r} binds the admin's own key")
        owner = self._by_key.get(cert.public_key)
        if owner is not None and owner != cert.device_id:
            raise UnauthorizedError(
                f"key {VerifyKey(cert.public_key).fingerprint} is already certified for {owner!r}",
                hint="every device needs its own key pair",
            )
        held = self._certs.get(cert.device_id)
        if held is not None:
            if held == cert:
                return False
            if cert.epoch <= held.epoch:
                raise ReplayError(
                    f"certificate of {cert.device_id!r} at epoch {cert.epoch} is not newer than the held "
                    f"epoch {held.epoch}",
                    hint="re-admission needs a certificate with a higher epoch",
                )
            del self._by_key[held.public_key]
        self._certs[cert.device_id] = cert
        self._by_key[cert.public_key] = cert.device_id
        logger.info("certified %s at epoch %d (key %s)", cert.device_id, cert.epoch, cert.verify_key.fingerprint)
        return True

    def key_for(self, device_id: str) -> VerifyKey:
        """The certified key of ``device_id``, or the admin key for ``"admin"``; ``UnknownSenderError`` otherwise."""
        if device_id == ADMIN_ID:
            return self.admin_key
        cert = self._certs.get(device_id)
        if cert is None:
            self._raise_if_revoked(device_id)
            raise UnknownSenderError(
                f"no certificate held for device {device_id!r}",
                hint="the device must publish its hello (with the admin's certificate) first",
            )
        return cert.verify_key

    def device_for_key(self, public_key: VerifyKey) -> str:
        """The device id certified for ``public_key`` (``"admin"`` for the admin key), else ``UnknownSenderError``."""
        if public_key == self.admin_key:
            return ADMIN_ID
        device = self._by_key.get(public_key.raw)
        if device is None:
            raise UnknownSenderError(f"key {public_key.fingerprint} is not certified in fleet {self.fleet!r}")
        return device

    def revoke(self, device_id: str, epoch: int) -> bool:
        """Revoke every certificate of ``device_id`` up to ``epoch``; True when that changed what is held.

        A held certificate at or below ``epoch`` is dropped, so the device's messages are refused with
        ``RevokedError`` (never parked as from an unknown sender); a re-admitted epoch stays certifiable.
        """
        check_device_id(device_id)
        check_counter(epoch, "revoked epoch")
        if self._revoked.get(device_id, -1) >= epoch:
            return False
        self._revoked[device_id] = epoch
        held = self._certs.get(device_id)
        if held is not None and held.epoch <= epoch:
            del self._certs[device_id]
            self._by_key.pop(held.public_key, None)
        logger.info("revoked %s up to epoch %d", device_id, epoch)
        return True

    def is_revoked(self, device_id: str, epoch: int) -> bool:
        """True when the certificate of ``device_id`` at ``epoch`` was revoked."""
        return self._revoked.get(device_id, -1) >= epoch

    def _raise_if_revoked(self, device_id: str) -> None:
        if device_id in self._revoked:
            raise RevokedError(
                f"device {device_id!r} was revoked by the fleet admin (epochs <= {self._revoked[device_id]})",
                hint="a forgotten device must be re-admitted with a new epoch",
            )

    def certificate_for(self, device_id: str) -> DeviceCertificate | None:
        """The held certificate of ``device_id``, or None."""
        return self._certs.get(device_id)

    def epoch_of(self, device_id: str) -> int:
        """The certified epoch of ``device_id``; ``UnknownSenderError`` when not certified."""
        cert = self._certs.get(device_id)
        if cert is None:
            self._raise_if_revoked(device_id)
            raise UnknownSenderError(f"no certificate held for device {device_id!r}")
        return cert.epoch

    def devices(self) -> list[str]:
        """Certified device ids, sorted."""
        return sorted(self._certs)

    def certificates(self) -> list[DeviceCertificate]:
        """Held certificates sorted by device id (to persist and reload via ``certify``)."""
        return [self._certs[d] for d in sorted(self._certs)]

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._certs
