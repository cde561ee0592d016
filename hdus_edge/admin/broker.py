"""Mosquitto configuration for a provisioned fleet (``hdus-edge broker-config``; no torch).

Writes into one folder: ``mosquitto.conf``; ``dynamic-security.json`` for Mosquitto's
dynamic-security plugin (why this plugin: ``hdus_edge.transport.dynsec``) with one login per device
bound to its client id, one for the device's one-shot commands, and the admin's; ``credentials.json``
(mode 0600: plain passwords and each login's URL, to hand to each device and then delete); and by
default TLS material: a CA (``tls/ca.key`` stays here, ``readmit`` issues certificates with it), the
broker's certificate and a client certificate per device, bundled as ``devices/<id>/keys/tls/``
for the device's state dir.

By default the broker has **one TLS listener** that requires a client certificate from the fleet's
CA and a password; ``insecure_plaintext=True`` gives one plain-text listener for a lab instead (never
both). The admin's own login and certificate go into the admin dir (``keys/broker.json``,
``keys/tls/``), where ``unlearn``, ``revoke`` and ``readmit`` find them. Nothing here starts a broker.

Each device may write only where it is the sender (``device_role``), never ``unlearn/<anything>``
(only the admin writes orders there, so no device can clear an order about itself) and never the
revocation list.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hdus_edge.config import to_toml
from hdus_edge.errors import ConfigError
from hdus_edge.files import atomic_write, write_json
from hdus_edge.protocol.fields import ADMIN_ID
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir, StateDir, read_json
from hdus_edge.transport import dynsec
from hdus_edge.transport.mosquitto import MosquittoConfig, MosquittoTls, render_config
from hdus_edge.transport.url import companion_user, parse_broker_url

logger = logging.getLogger(__name__)

ADMIN_USER = ADMIN_ID
ADMIN_ROLE = "fleet-admin"
DEFAULT_TLS_PORT = 8883
DEFAULT_PLAIN_PORT = 1883


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_config`` wrote."""

    folder: Path
    config: Path
    dynsec: Path
    credentials: Path
    ca: Path | None
    device_certs: dict[str, tuple[Path, Path]]
    users: tuple[str, ...]
    urls: dict[str, str]  # login -> broker URL without the password
    tls: bool
    mosquitto: MosquittoConfig  # what mosquitto.conf says (``MosquittoProcess(folder, this)`` runs it)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "config": str(self.config), "dynsec": str(self.dynsec),
            "credentials": str(self.credentials), "ca": str(self.ca) if self.ca else None, "tls": self.tls,
            "device_certs": {d: {"cert": str(c), "key": str(k)} for d, (c, k) in self.device_certs.items()},
            "device_bundles": {d: str(self.folder / "devices" / d) for d in self.device_certs},
            "users": list(self.users), "urls": self.urls,
            "run": f"mosquitto -c {self.config}",
        }


def agent_client_id(fleet: str, device: str) -> str:
    """The client id a device's agent uses (and the only one its login may use)."""
    return f"{fleet}.{device}"


def device_role(fleet: str, device: str) -> dynsec.Role:
    """What ``device`` may do: write only where it is the sender, read the fleet's public topics and
    the seeds addressed to it. ``seeds/<device>/+`` is writable so it can clear its inbox copies."""
    root = Topics(fleet).root
    send = [f"{root}/devices/{device}/#", f"{root}/seeds/+/{device}", f"{root}/seeds/{device}/+",
            f"{root}/membership/{device}", f"{root}/leave/{device}", f"{root}/receipts/+/{device}",
            f"{root}/tombstones/{device}"]
    read = [f"{root}/devices/#", f"{root}/seeds/{device}/+", f"{root}/membership/+", f"{root}/unlearn/+",
            f"{root}/leave/+", f"{root}/receipts/#", f"{root}/tombstones/+", f"{root}/revocations"]
    return dynsec.Role(role_name(device), tuple([dynsec.Acl("publishClientSend", t) for t in send]
                                                + [dynsec.Acl("subscribePattern", t) for t in read]))


def role_name(device: str) -> str:
    return f"device:{device}"


def admin_role(fleet: str) -> dynsec.Role:
    """The admin: everything under the fleet's root, and the plugin's control topic (revoke, readmit).

    The plugin's answers need an explicit publishClientReceive: the default does not cover $CONTROL."""
    root = Topics(fleet).root
    topics = (f"{root}/#", f"{dynsec.CONTROL_TOPIC}/#", dynsec.CONTROL_TOPIC)
    return dynsec.Role(ADMIN_ROLE, tuple(dynsec.Acl(kind, t) for t in topics
                                         for kind in ("publishClientSend", "subscribePattern", "publishClientReceive")))


def device_logins(fleet: str, device: str, password: str) -> tuple[dynsec.Client, dynsec.Client]:
    """The agent's login (client id ``<fleet>.<device>``) and its commands' (``companion_login``)."""
    agent_id = agent_client_id(fleet, device)
    return (dynsec.Client(device, password, agent_id, (role_name(device),)),
            dynsec.Client(companion_user(device), password, companion_user(agent_id), (role_name(device),)))


def write_broker_config(
    admin: AdminDir,
    out: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    public_host: str | None = None,
    insecure_plaintext: bool = False,
    tls_hosts: tuple[str, ...] = (),
    persistence: bool = True,
    plugin: Path | None = None,
    bind_client_ids: bool = True,
) -> BrokerFiles:
    """Write a TLS-only Mosquitto config with the dynamic-security plugin for the fleet (see module doc).

    ``host`` is where Mosquitto listens; ``public_host`` is what clients dial (default: the fleet
    broker URL's host). ``port`` defaults to 8883 (TLS) or 1883 (``insecure_plaintext``). Refuses to
    overwrite an existing ``mosquitto.conf`` in ``out``; ``ConfigError`` when the plugin is missing.
    ``bind_client_ids=False`` leaves any client id open to every login: only ``bench reliability``
    uses it, to show the session takeover it allows.
    """
    fleet = admin.fleet()
    name = fleet.fleet.name
    devices = sorted(admin.registry())
    if not devices:
        raise ConfigError(f"fleet '{name}' has no provisioned devices yet", hint="run 'hdus-edge provision' first")
    port = port if port is not None else (DEFAULT_PLAIN_PORT if insecure_plaintext else DEFAULT_TLS_PORT)
    if not 1 <= port <= 65535:
        raise ConfigError("ports must be in 1..65535")
    plugin = plugin or dynsec.find_plugin()
    if plugin is None:
        raise ConfigError("Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed",
                          hint="install Debian's 'mosquitto' package (2.0 or later)")
    out = Path(out)
    config_path = out / "mosquitto.conf"
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists", hint="choose another --out folder, or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dial = public_host or parse_broker_url(fleet.fleet.broker).host
    scheme = "mqtt" if insecure_plaintext else "mqtts"

    passwords = {u: secrets.token_urlsafe(18) for u in (ADMIN_USER, *devices)}
    clients = [dynsec.Client(ADMIN_USER, passwords[ADMIN_USER], None, (ADMIN_ROLE,))]
    roles = [admin_role(name)]
    for d in devices:
        logins = device_logins(name, d, passwords[d])
        clients += logins if bind_client_ids else [dynsec.Client(c.username, c.password, None, c.roles) for c in logins]
        roles.append(device_role(name, d))
    dynsec_path = dynsec.write_file(out / "dynamic-security.json", clients, roles)

    tls = None
    ca_path = None
    certs: dict[str, tuple[Path, Path]] = {}
    if not insecure_plaintext:
        from hdus_edge.transport.certs import make_ca, make_server_cert

        ca = make_ca(out / "tls", common_name=f"hdus-edge {name} CA")
        server = make_server_cert(ca, out / "tls", hosts=tls_hosts or tuple(dict.fromkeys((dial, host, "127.0.0.1", "localhost"))))
        for user in (ADMIN_USER, *devices):
            certs[user] = issue_client_bundle(out, user)
        ca_path = ca.cert
        # Identity comes from the password (checked with the client id by the plugin); see dynsec's doc.
        tls = MosquittoTls(port=port, ca_file=ca.cert.resolve(), cert_file=server.cert.resolve(),
                           key_file=server.key.resolve(), use_identity_as_username=False)
    cfg = MosquittoConfig(
        port=port, host=host, allow_anonymous=False, tls=tls, plain=insecure_plaintext,
        dynsec_plugin=Path(plugin), dynsec_file=dynsec_path.resolve(),
        persistence=persistence, persistence_dir=(out / "data").resolve() if persistence else None,
    )
    if persistence:
        (out / "data").mkdir(exist_ok=True)
    config_path.write_text(render_config(cfg))
    full = {u: {"user": u, "password": passwords[u], "url": f"{scheme}://{u}:{passwords[u]}@{dial}:{port}"}
            for u in passwords}
    credentials = out / "credentials.json"
    write_json(credentials, full, mode=0o600)  # plain passwords: owner-only from the first byte on
    # The admin's own login and certificate, where the admin commands look for them.
    write_json(admin.broker_access_file, {"url": full[ADMIN_USER]["url"], "broker_dir": str(out.resolve())}, mode=0o600)
    if not insecure_plaintext:
        install_tls_bundle(out, ADMIN_USER, admin.tls_dir)
    urls = {u: f"{scheme}://{u}@{dial}:{port}" for u in passwords}
    logger.info("broker config for fleet %s written to %s (%d devices, %s)", name, out, len(devices), scheme)
    return BrokerFiles(out, config_path, dynsec_path, credentials, ca_path, certs, tuple(passwords), urls,
                       not insecure_plaintext, cfg)


def issue_client_bundle(out: Path, user: str) -> tuple[Path, Path]:
    """Issue ``user``'s client certificate and lay out ``devices/<user>/keys/tls/`` for its state dir."""
    from hdus_edge.transport.certs import load_ca, make_client_cert

    ca = load_ca(out / "tls")
    pair = make_client_cert(ca, out / "tls" / "clients", user)
    bundle = out / "devices" / user / "keys" / "tls"
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca.cert, bundle / "ca.crt")
    shutil.copyfile(pair.cert, bundle / "client.crt")
    atomic_write(bundle / "client.key", pair.key.read_bytes(), mode=0o600)
    return pair.cert, pair.key


def install_tls_bundle(out: Path, user: str, tls_dir: Path) -> None:
    bundle = out / "devices" / user / "keys" / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt"):
        atomic_write(tls_dir / name, (bundle / name).read_bytes())
    atomic_write(tls_dir / "client.key", (bundle / "client.key").read_bytes(), mode=0o600)


def install_device_access(broker_dir: Path, device: str, state: StateDir) -> str:
    """Give a device its broker login: its TLS bundle into ``keys/tls/`` and its URL as ``broker`` in
    ``device.toml`` (what an operator copies by hand on a real device). Returns the URL."""
    creds = read_json(Path(broker_dir) / "credentials.json", "broker credentials")
    if not isinstance(creds, dict) or device not in creds:
        raise ConfigError(f"{broker_dir}/credentials.json holds no login for {device!r}",
                          hint="run 'hdus-edge broker-config' (or 'readmit') for this device")
    url = creds[device]["url"]
    if (Path(broker_dir) / "devices" / device / "keys" / "tls").is_dir():
        install_tls_bundle(Path(broker_dir), device, state.tls_dir)
    cfg = state.device()
    atomic_write(state.device_file, to_toml(replace(cfg, device=replace(cfg.device, broker=url))).encode())
    return str(url)
