"""Ed25519 keys, key files, certificates and the trust store."""

import os
import stat
from dataclasses import replace

import pytest

from hdus_edge.errors import (
    ConfigError,
    KeyFileError,
    ReplayError,
    SignatureError,
    UnauthorizedError,
    UnknownSenderError,
)
from hdus_edge.protocol.crypto import (
    SigningKey,
    TrustStore,
    VerifyKey,
    issue_certificate,
    load_certificate,
    load_signing_key,
    load_verify_key,
    save_certificate,
    save_signing_key,
    save_verify_key,
    sign,
    verify,
    verify_certificate,
)

ADMIN = SigningKey.from_seed(bytes([1]) * 32)
DEV_A = SigningKey.from_seed(bytes([2]) * 32)
DEV_B = SigningKey.from_seed(bytes([3]) * 32)


def _cert(device_id="a", key=DEV_A, epoch=0, fleet="lab", admin=ADMIN):
    return issue_certificate(
        admin, fleet=fleet, device_id=device_id, public_key=key.public_key, epoch=epoch, profile="pi-4", issued_at=10.0
    )


# --- keys ------------------------------------------------------------------------------------


def test_from_seed_is_deterministic_and_distinct():
    assert SigningKey.from_seed(bytes([2]) * 32).public_key == DEV_A.public_key
    assert DEV_A.public_key != DEV_B.public_key
    assert SigningKey.generate().public_key != SigningKey.generate().public_key


def test_sign_verify_and_tamper():
    sig = sign(DEV_A, b"hello")
    verify(DEV_A.public_key, b"hello", sig)
    with pytest.raises(SignatureError):
        verify(DEV_A.public_key, b"hellO", sig)
    with pytest.raises(SignatureError):
        verify(DEV_B.public_key, b"hello", sig)
    with pytest.raises(SignatureError):
        verify(DEV_A.public_key, b"hello", sig[:-1])


def test_repr_never_shows_the_secret():
    assert DEV_A.seed().hex() not in repr(DEV_A)
    assert "SigningKey" in repr(DEV_A)


def test_verify_key_checks_length():
    with pytest.raises(ValueError):
        VerifyKey(b"short")
    assert VerifyKey.from_hex(DEV_A.public_key.hex()) == DEV_A.public_key


# --- key files -------------------------------------------------------------------------------


def test_private_key_file_roundtrip_with_0600(tmp_path):
    path = tmp_path / "keys" / "device.key"
    save_signing_key(DEV_A, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_signing_key(path).public_key == DEV_A.public_key
    assert [p.name for p in path.parent.iterdir()] == ["device.key"]  # no temp file left


def test_private_key_file_is_not_overwritten(tmp_path):
    path = tmp_path / "device.key"
    save_signing_key(DEV_A, path)
    with pytest.raises(KeyFileError, match="already exists"):
        save_signing_key(DEV_B, path)
    save_signing_key(DEV_B, path, overwrite=True)
    assert load_signing_key(path).public_key == DEV_B.public_key


def test_private_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "device.key"
    save_signing_key(DEV_A, path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(path)


def test_private_key_as_hex(tmp_path):
    path = tmp_path / "device.key"
    path.write_text(DEV_B.seed().hex() + "\n")
    os.chmod(path, 0o600)
    assert load_signing_key(path).public_key == DEV_B.public_key


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"ab" * 31, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"\xff" * 64],
)
def test_malformed_private_key_file(tmp_path, content):
    path = tmp_path / "device.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError) as info:
        load_signing_key(path)
    assert isinstance(info.value, ConfigError) and str(path) in str(info.value)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_signing_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="does not exist"):
        load_verify_key(tmp_path / "nope.pub")


def test_public_key_file_hex_and_pem(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = tmp_path / "admin.pub"
    save_verify_key(ADMIN.public_key, path)
    assert path.read_text().strip() == ADMIN.public_key.hex()
    assert load_verify_key(path) == ADMIN.public_key
    pem = Ed25519PublicKey.from_public_bytes(DEV_A.public_key.raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "a.pem").write_bytes(pem)
    assert load_verify_key(tmp_path / "a.pem") == DEV_A.public_key
    (tmp_path / "bad.pub").write_text("zz" * 32)
    with pytest.raises(KeyFileError):
        load_verify_key(tmp_path / "bad.pub")


# --- certificates ----------------------------------------------------------------------------


def test_certificate_verifies_and_any_field_change_breaks_it():
    cert = _cert()
    verify_certificate(ADMIN.public_key, cert, "lab")
    for changed in (
        replace(cert, device_id="b"),
        replace(cert, public_key=DEV_B.public_key.raw),
        replace(cert, epoch=1),
        replace(cert, profile="pi-5"),
        replace(cert, issued_at=11.0),
        replace(cert, fleet="other"),
    ):
        with pytest.raises(SignatureError):
            verify_certificate(ADMIN.public_key, changed)


def test_certificate_from_another_admin_or_fleet():
    with pytest.raises(SignatureError):
        verify_certificate(ADMIN.public_key, _cert(admin=DEV_B))
    with pytest.raises(UnauthorizedError, match="fleet"):
        verify_certificate(ADMIN.public_key, _cert(fleet="other"), "lab")


def test_certificate_file_roundtrip(tmp_path):
    cert = _cert()
    save_certificate(cert, tmp_path / "device.cert")
    assert load_certificate(tmp_path / "device.cert") == cert
    (tmp_path / "bad.cert").write_text('{"fleet": "lab"}')
    with pytest.raises(KeyFileError, match="malformed"):
        load_certificate(tmp_path / "bad.cert")


def test_certificate_rejects_bad_fields():
    with pytest.raises(ValueError):
        _cert(device_id="a/b")
    with pytest.raises(ValueError):
        _cert(device_id="admin")
    with pytest.raises(ValueError):
        _cert(epoch=-1)


# --- trust store -----------------------------------------------------------------------------


def test_trust_store_certifies_only_admin_signed():
    trust = TrustStore("lab", ADMIN.public_key)
    with pytest.raises(SignatureError):
        trust.certify(_cert(admin=DEV_B))
    assert "a" not in trust
    with pytest.raises(UnknownSenderError):
        trust.key_for("a")
    assert trust.certify(_cert()) is True
    assert trust.key_for("a") == DEV_A.public_key
    assert trust.device_for_key(DEV_A.public_key) == "a"
    assert trust.key_for("admin") == ADMIN.public_key
    assert trust.device_for_key(ADMIN.public_key) == "admin"
    with pytest.raises(UnknownSenderError):
        trust.device_for_key(DEV_B.public_key)


def test_trust_store_readmission_replaces_and_old_epochs_are_replays():
    trust = TrustStore("lab", ADMIN.public_key)
    trust.certify(_cert(epoch=0))
    assert trust.certify(_cert(epoch=0)) is False  # the same certificate again
    assert trust.certify(_cert(key=DEV_B, epoch=1)) is True
    assert trust.key_for("a") == DEV_B.public_key and trust.epoch_of("a") == 1
    with pytest.raises(UnknownSenderError):
        trust.device_for_key(DEV_A.public_key)  # the old key is no longer bound
    with pytest.raises(ReplayError):
        trust.certify(_cert(epoch=0))
    with pytest.raises(ReplayError):
        trust.certify(_cert(key=DEV_A, epoch=1))  # same epoch, different key


def test_trust_store_refuses_shared_keys_other_fleets_and_the_admin_key():
    trust = TrustStore("lab", ADMIN.public_key)
    trust.certify(_cert("a", DEV_A))
    with pytest.raises(UnauthorizedError, match="already certified"):
        trust.certify(_cert("b", DEV_A))
    with pytest.raises(UnauthorizedError):
        trust.certify(_cert("b", DEV_B, fleet="other"))
    with pytest.raises(UnauthorizedError):
        trust.certify(_cert("b", ADMIN))
    assert trust.devices() == ["a"]
    assert [c.device_id for c in trust.certificates()] == ["a"]
