"""Rules for the fields that travel: device ids, request ids, hashes, counters, times, names.

Every check raises ``TypeError`` (wrong Python type) or ``ValueError`` (right type, bad value): building a
message with a bad field is a programming error. The codec turns both into ``DecodeError`` for bytes that
came from the wire, so the rules live here once.

Ids are also MQTT topic segments and file names in the seed store, hence the strict pattern: no ``/``,
``+``, ``#``, no leading dot, at most 64 characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

ADMIN_ID = "admin"
"""Sender id of the fleet admin. Reserved: no device may take it."""

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

MAX_COUNTER = 2**63 - 1  # fits a signed 64-bit integer everywhere (SQLite, JSON readers, C)
MAX_TEXT = 1024
MAX_MEMBERS = 1024
MAX_DIMS = 8
MAX_DIM = 2**31 - 1
MAX_CLASSES = 2**20
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    return value


def is_device_id(value: object) -> bool:
    """True when ``value`` is a valid device id (the admin id is not one)."""
    return isinstance(value, str) and value != ADMIN_ID and ID_PATTERN.fullmatch(value) is not None


def check_device_id(value: object, what: str = "device id") -> str:
    """Return ``value`` when it is a valid device id, else raise."""
    value = _check_str(value, what)
    if value == ADMIN_ID:
        raise ValueError(f"{what} {value!r} is reserved for the fleet admin")
    if ID_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} must match {ID_PATTERN.pattern} (no '/', '+', '#')")
    return value


def check_signer_id(value: object, what: str = "sender id") -> str:
    """Return ``value`` when it names a device or the admin, else raise."""
    if value == ADMIN_ID:
        return ADMIN_ID
    return check_device_id(value, what)


def check_request_id(value: object, what: str = "request id") -> str:
    """Return ``value`` when it is a valid request id (same alphabet as device ids), else raise."""
    value = _check_str(value, what)
    if ID_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} must match {ID_PATTERN.pattern}")
    return value


def check_fleet(value: object) -> str:
    """Return ``value`` when it is a valid fleet name (a topic segment), else raise."""
    return check_request_id(value, "fleet name")


def check_name(value: object, what: str) -> str:
    """Return ``value`` when it is a valid short name (architecture, profile), else raise."""
    value = _check_str(value, what)
    if NAME_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} must match {NAME_PATTERN.pattern}")
    return value


def check_text(value: object, what: str, max_len: int = MAX_TEXT) -> str:
    """Return ``value`` when it is a str of at most ``max_len`` characters, else raise."""
    value = _check_str(value, what)
    if len(value) > max_len:
        raise ValueError(f"{what} has {len(value)} characters, more than {max_len}")
    return value


def check_sha256(value: object, what: str = "sha256") -> str:
    """Return ``value`` when it is 64 lowercase hex digits, else raise."""
    value = _check_str(value, what)
    if SHA256_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} must be 64 lowercase hex digits, got {value[:80]!r}")
    return value


def check_counter(value: object, what: str, minimum: int = 0) -> int:
    """Return ``value`` when it is an int in [minimum, 2**63 - 1] (bools refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, got {type(value).__name__}")
    if not minimum <= value <= MAX_COUNTER:
        raise ValueError(f"{what} must lie in [{minimum}, {MAX_COUNTER}], got {value}")
    return value


def check_time(value: object, what: str) -> float:
    """Return ``value`` as float when it is a finite, non-negative number of seconds, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{what} must be finite and >= 0, got {value}")
    return value


def check_bytes(value: object, what: str, length: int | None = None) -> bytes:
    """Return ``value`` when it is ``bytes`` (of ``length`` when given), else raise."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(value)}")
    return value


def check_device_ids(value: object, what: str, exclude: str | None = None) -> tuple[str, ...]:
    """Return ``value`` as a tuple of distinct device ids (not ``exclude``), else raise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of device ids, got {type(value).__name__}")
    ids = tuple(value)
    if len(ids) > MAX_MEMBERS:
        raise ValueError(f"{what} lists {len(ids)} devices, more than {MAX_MEMBERS}")
    for device in ids:
        check_device_id(device, f"{what} entry")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} lists a device twice")
    if exclude is not None and exclude in ids:
        raise ValueError(f"{what} must not list {exclude!r} itself")
    return ids


def check_shape(value: object, what: str = "input shape") -> tuple[int, ...]:
    """Return ``value`` as a tuple of dims, each -1 (dynamic) or in [1, 2**31 - 1], else raise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of ints, got {type(value).__name__}")
    dims = tuple(value)
    if not 1 <= len(dims) <= MAX_DIMS:
        raise ValueError(f"{what} must have 1 to {MAX_DIMS} dims, got {len(dims)}")
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"{what} dims must be int, got {type(dim).__name__}")
        if dim != -1 and not 1 <= dim <= MAX_DIM:
            raise ValueError(f"{what} dims must be -1 (dynamic) or in [1, {MAX_DIM}], got {dim}")
    return dims
