"""On-disk layout of a fleet admin directory and of a device's state directory.

Admin directory (kept by whoever runs the fleet; holds the admin private key)::

    fleet.toml            what every device agrees on (name, broker, input shape, classes, lam, ...)
    keys/admin.key        Ed25519 private key, mode 0600
    keys/admin.pub        its public key (hex), copied to every device
    devices.json          provisioned devices: id -> profile, epoch, public key, issued_at

Device state directory (one per device; ``hdus-edge provision`` creates it)::

    device.toml           device id, profile, broker override, neighbours
    fleet.toml            copy of the fleet config
    keys/device.key       the device's Ed25519 private key, mode 0600
    keys/device.cert.json the admin's certificate over the device key
    keys/admin.pub        the fleet admin's public key (the root of trust)
    models/               main.pt / seed.pt checkpoints, main.onnx / seed.onnx, seed.json (version)
    store/                the seed store (neighbours' seeds, tombstones, audit log)
    outbox/               the MQTT outbox (messages not yet acknowledged)
    status.json           written by the running agent: members, seeds, connection
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hdus_edge.config import (
    DeviceConfig,
    DeviceSection,
    FleetConfig,
    Profile,
    load_device_config,
    load_fleet_config,
    load_profile,
    to_toml,
    validate_fleet,
)
from hdus_edge.errors import ConfigError, StateDirError
from hdus_edge.files import atomic_write, write_json
from hdus_edge.protocol.crypto import (
    DeviceCertificate,
    SigningKey,
    VerifyKey,
    issue_certificate,
    load_certificate,
    load_signing_key,
    load_verify_key,
    save_certificate,
    save_signing_key,
    save_verify_key,
)
from hdus_edge.protocol.fields import check_device_id

logger = logging.getLogger(__name__)

STATE_ENV = "HDUS_STATE_DIR"
ADMIN_ENV = "HDUS_ADMIN_DIR"


def read_json(path: Path, what: str) -> Any:
    """Read JSON, turning a missing or corrupt file into ``StateDirError``."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StateDirError(f"{what} {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StateDirError(f"{what} {path} is corrupt: {exc}") from None


def user_device_id(value: str, what: str = "device id") -> str:
    """``value`` when it is a valid device id, else ``ConfigError`` (ids are topic segments and file names)."""
    try:
        return check_device_id(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {what} {value!r}: {exc}", hint="use letters, digits, '.', '_' or '-' (at most 64)") from None


# --- admin -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminDir:
    """A fleet admin directory."""

    root: Path

    @property
    def fleet_file(self) -> Path:
        return self.root / "fleet.toml"

    @property
    def key_file(self) -> Path:
        return self.root / "keys" / "admin.key"

    @property
    def pub_file(self) -> Path:
        return self.root / "keys" / "admin.pub"

    @property
    def registry_file(self) -> Path:
        return self.root / "devices.json"

    @property
    def reference_file(self) -> Path:
        """The fleet's reference set (``reference.npz``), copied to every device at provisioning."""
        return self.root / "reference.npz"

    @property
    def evidence_dir(self) -> Path:
        """Evidence of the unlearn requests the admin issued (one JSON file per request)."""
        return self.root / "evidence"

    @property
    def tls_dir(self) -> Path:
        """``keys/tls/``: the admin's TLS client certificate (``ca.crt``, ``client.crt``, ``client.key``)."""
        return self.root / "keys" / "tls"

    @property
    def broker_access_file(self) -> Path:
        """``keys/broker.json`` (0600): the admin's broker login and the broker folder, from ``broker-config``."""
        return self.root / "keys" / "broker.json"

    @property
    def revocations_file(self) -> Path:
        """``revocations.json``: the revoked certificates and their orders (the signed list's source)."""
        return self.root / "revocations.json"

    def broker_access(self) -> dict[str, Any] | None:
        """``{"url": ..., "broker_dir": ...}`` when ``broker-config`` wrote one, else None."""
        if not self.broker_access_file.exists():
            return None
        data = read_json(self.broker_access_file, "broker access")
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise StateDirError(f"broker access {self.broker_access_file} is corrupt", hint="run 'hdus-edge broker-config' again")
        return data

    def broker_url(self) -> str:
        """The admin's broker login: ``keys/broker.json``'s URL when present, else the fleet's broker."""
        access = self.broker_access()
        return access["url"] if access is not None else self.fleet().fleet.broker

    def broker_urls(self) -> list[str]:
        """Every broker whose logins the admin manages: ``broker_url()`` first, then each other broker
        of a bridged layout (``keys/broker.json``'s ``brokers``; ``broker-config --bridge``)."""
        access = self.broker_access()
        first = self.broker_url()
        others = [b["url"] for b in (access or {}).get("brokers", []) if isinstance(b, dict) and b.get("url") != first]
        return [first, *others]

    def fleet(self) -> FleetConfig:
        """The fleet config (``StateDirError`` when this is not an admin dir)."""
        if not self.fleet_file.exists():
            raise StateDirError(
                f"{self.root} is not a fleet admin directory (no fleet.toml)",
                hint="run 'hdus-edge fleet init' first, or pass the right --admin-dir",
            )
        return load_fleet_config(self.fleet_file)

    def key(self) -> SigningKey:
        """The admin's private key."""
        return load_signing_key(self.key_file)

    def registry(self) -> dict[str, dict[str, Any]]:
        """Provisioned devices by id."""
        if not self.registry_file.exists():
            return {}
        data = read_json(self.registry_file, "device registry")
        if not isinstance(data, dict):
            raise StateDirError(f"device registry {self.registry_file} is corrupt: not an object")
        return data


def init_fleet(root: Path, fleet: FleetConfig, *, key: SigningKey | None = None) -> AdminDir:
    """Create an admin directory: admin key pair and fleet config. Refuses to overwrite one."""
    validate_fleet(fleet, "fleet")
    admin = AdminDir(Path(root))
    if admin.fleet_file.exists():
        raise ConfigError(f"{admin.root} already holds a fleet ({admin.fleet_file})", hint="use another --admin-dir")
    key = key or SigningKey.generate()
    admin.root.mkdir(parents=True, exist_ok=True)
    save_signing_key(key, admin.key_file)
    save_verify_key(key.public_key, admin.pub_file)
    atomic_write(admin.fleet_file, to_toml(fleet).encode())
    write_json(admin.registry_file, {})
    return admin


# --- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateDir:
    """A device's state directory."""

    root: Path

    @property
    def device_file(self) -> Path:
        return self.root / "device.toml"

    @property
    def fleet_file(self) -> Path:
        return self.root / "fleet.toml"

    @property
    def key_file(self) -> Path:
        return self.root / "keys" / "device.key"

    @property
    def cert_file(self) -> Path:
        return self.root / "keys" / "device.cert.json"

    @property
    def admin_pub_file(self) -> Path:
        return self.root / "keys" / "admin.pub"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def outbox_dir(self) -> Path:
        return self.root / "outbox"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def seed_info_file(self) -> Path:
        return self.models / "seed.json"

    @property
    def reference_file(self) -> Path:
        """The fleet's reference set; ``distill`` reads only this (never the device's own data)."""
        return self.root / "reference.npz"

    @property
    def main_checkpoint(self) -> Path:
        """``models/main.pt``: the trained main model (arch, input shape, classes, state_dict)."""
        return self.models / "main.pt"

    @property
    def seed_checkpoint(self) -> Path:
        """``models/seed.pt``: the distilled seed model (arch, input shape, classes, state_dict)."""
        return self.models / "seed.pt"

    @property
    def evidence_dir(self) -> Path:
        """Evidence of the unlearn requests this device issued (``hdus-edge leave``)."""
        return self.root / "evidence"

    @property
    def tls_dir(self) -> Path:
        """``keys/tls/``: the device's TLS client certificate (``ca.crt``, ``client.crt``, ``client.key``)."""
        return self.root / "keys" / "tls"

    @property
    def train_data_file(self) -> Path:
        """``data/train.npz``: the training set of record (``train``, ``forget-samples``, ``train --add``)."""
        return self.root / "data" / "train.npz"

    @property
    def forgotten_samples_file(self) -> Path:
        """``data/forgotten.json``: ids of samples forgotten on this device (ids only, never data)."""
        return self.root / "data" / "forgotten.json"

    @property
    def manifest_file(self) -> Path:
        """``models/manifest.json``: the sample ids the main model in ``main.pt`` was trained on."""
        return self.models / "manifest.json"

    @property
    def retire_file(self) -> Path:
        """``models/retire.json``: the seed version that retires every older one (the agent publishes it)."""
        return self.models / "retire.json"

    @property
    def store_lock_file(self) -> Path:
        """The seed store's lock file: held (flock) while an agent has the store open."""
        return self.store_dir / ".lock"

    def agent_running(self) -> bool:
        """True while another process (the agent) holds this device's seed store open.

        Probes the store's flock with a shared, non-blocking lock and releases it at once; it never
        opens the store, so it is safe next to a running agent.
        """
        if not self.store_lock_file.exists():
            return False
        try:
            fd = os.open(self.store_lock_file, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def read_status(self) -> dict[str, Any] | None:
        """The agent's last ``status.json`` (None when no agent ever wrote one; ``StateDirError`` if corrupt)."""
        if not self.status_file.exists():
            return None
        data = read_json(self.status_file, "agent status")
        if not isinstance(data, dict):
            raise StateDirError(f"agent status {self.status_file} is corrupt: not an object")
        return data

    def check(self) -> None:
        """Raise ``StateDirError`` naming the first missing piece of a provisioned device."""
        if not self.root.is_dir():
            raise StateDirError(f"state directory {self.root} does not exist")
        for path in (self.device_file, self.fleet_file, self.key_file, self.cert_file, self.admin_pub_file):
            if not path.exists():
                raise StateDirError(f"{self.root} is not a provisioned device: {path.relative_to(self.root)} is missing")

    def device(self) -> DeviceConfig:
        self.check()
        return load_device_config(self.device_file)

    def fleet(self) -> FleetConfig:
        self.check()
        return load_fleet_config(self.fleet_file)

    def profile(self) -> Profile:
        return load_profile(self.device().device.profile)

    def key(self) -> SigningKey:
        return load_signing_key(self.key_file)

    def certificate(self) -> DeviceCertificate:
        return load_certificate(self.cert_file)

    def admin_key(self) -> VerifyKey:
        return load_verify_key(self.admin_pub_file)

    def set_neighbors(self, neighbors: tuple[str, ...]) -> DeviceConfig:
        """Persist a new neighbour list (validated ids, sorted, without self)."""
        cfg = self.device()
        clean = tuple(sorted({check_device_id(n) for n in neighbors} - {cfg.device.id}))
        new = replace(cfg, neighbors=clean)
        atomic_write(self.device_file, to_toml(new).encode())
        return new

    def model_bytes(self, name: str) -> bytes:
        """``models/<name>`` bytes, or ``StateDirError`` saying which step makes it."""
        path = self.models / name
        if not path.exists():
            step = {"main.onnx": "export", "seed.onnx": "export", "main.pt": "train", "seed.pt": "distill"}.get(name, "export")
            raise StateDirError(f"{path} is missing", hint=f"run 'hdus-edge {step}' for this device first")
        return path.read_bytes()

    def seed_version(self) -> int:
        """The version of the exported seed (0 before the first export)."""
        if not self.seed_info_file.exists():
            return 0
        info = read_json(self.seed_info_file, "seed info")
        return int(info.get("version", 0))


def provision_device(
    admin: AdminDir,
    state_root: Path,
    device_id: str,
    profile: str,
    *,
    neighbors: tuple[str, ...] = (),
    broker: str = "",
    key: SigningKey | None = None,
) -> StateDir:
    """Create a device: key pair, the admin's certificate, device config, empty state dir.

    Refuses a device id the fleet already has.
    """
    check_device_id(device_id)
    fleet = admin.fleet()
    registry = admin.registry()
    if device_id in registry:
        raise ConfigError(
            f"device '{device_id}' is already provisioned in fleet '{fleet.fleet.name}'",
            hint="choose another --device-id (a forgotten device comes back with 'hdus-edge readmit')",
        )
    return _create_device(admin, state_root, device_id, profile, 0, neighbors, broker, key)


def readmit_device(
    admin: AdminDir,
    state_root: Path,
    device_id: str,
    profile: str | None = None,
    *,
    neighbors: tuple[str, ...] = (),
    broker: str = "",
    key: SigningKey | None = None,
) -> StateDir:
    """Re-admit a forgotten device with a fresh key, a fresh state dir and the next epoch.

    Orders and revocations name the epochs they forgot, so every seed, order and certificate of the
    old epochs stays refused; only the new incarnation's are accepted. ``ConfigError`` unless the
    device is in ``devices.json`` and was forgotten.
    """
    check_device_id(device_id)
    registry = admin.registry()
    entry = registry.get(device_id)
    if entry is None:
        raise ConfigError(f"device '{device_id}' was never provisioned in this fleet", hint="use 'hdus-edge provision'")
    if "forgotten" not in entry:
        raise ConfigError(f"device '{device_id}' was not forgotten; only a forgotten device is re-admitted",
                          hint=f"forget it first ('hdus-edge unlearn {device_id}' or its own 'leave')")
    epoch = max(int(entry.get("epoch", 0)), int(entry["forgotten"].get("epoch", 0))) + 1
    return _create_device(admin, state_root, device_id, profile or str(entry["profile"]), epoch, neighbors, broker, key)


def _create_device(
    admin: AdminDir, state_root: Path, device_id: str, profile: str, epoch: int, neighbors: tuple[str, ...],
    broker: str, key: SigningKey | None,
) -> StateDir:
    fleet = admin.fleet()
    load_profile(profile)  # fail early on an unknown profile
    state = StateDir(Path(state_root))
    if state.device_file.exists():
        raise ConfigError(f"{state.root} already holds a device", hint="use an empty --state-dir")
    key = key or SigningKey.generate()
    cert = issue_certificate(admin.key(), fleet=fleet.fleet.name, device_id=device_id, public_key=key.public_key,
                             epoch=epoch, profile=profile)
    state.root.mkdir(parents=True, exist_ok=True)
    save_signing_key(key, state.key_file)
    save_certificate(cert, state.cert_file)
    save_verify_key(admin.key().public_key, state.admin_pub_file)
    atomic_write(state.fleet_file, admin.fleet_file.read_bytes())
    cfg = DeviceConfig(DeviceSection(id=device_id, profile=profile, broker=broker), tuple(sorted(set(neighbors) - {device_id})))
    atomic_write(state.device_file, to_toml(cfg).encode())
    for sub in (state.models, state.store_dir, state.outbox_dir):
        sub.mkdir(parents=True, exist_ok=True)
    registry = admin.registry()
    history = registry.get(device_id, {}).get("history", [])
    if device_id in registry:  # re-admission: keep what happened to the earlier epochs
        history = [*history, {k: v for k, v in registry[device_id].items() if k != "history"}]
    registry[device_id] = {"profile": profile, "epoch": epoch, "public_key": key.public_key.hex(), "issued_at": time.time(),
                           "neighbors": list(cfg.neighbors),  # the requester's holders when no list is retained
                           **({"history": history} if history else {})}
    write_json(admin.registry_file, registry)
    return state


def install_reference(admin: AdminDir, state: StateDir) -> Path | None:
    """Copy the admin's ``reference.npz`` into the device's state dir (atomic); None when the fleet has none.

    Every device distils on these exact bytes; the fleet config's ``reference_sha256`` names them.
    """
    if not admin.reference_file.exists():
        return None
    atomic_write(state.reference_file, admin.reference_file.read_bytes())
    return state.reference_file
