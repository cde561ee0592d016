"""Mosquitto configuration for a provisioned fleet (``hdus-edge broker-config``; no torch).

Writes into one folder: ``mosquitto.conf``, ``acl`` (each device may write only where it is the
sender, see ``hdus_edge.transport.mosquitto.acl_rules``), ``passwd`` (hashed by
``mosquitto_passwd``) with a random password per device and one for the admin, ``credentials.json``
(mode 0600: the plain passwords and each client's broker URL, to hand to each device and then
delete), and with TLS a CA, the broker's certificate and one client certificate per device
(CN = device id, the user name the ACL sees). Nothing here starts a broker.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.errors import ConfigError
from hdus_edge.files import write_json
from hdus_edge.state import AdminDir
from hdus_edge.transport.mosquitto import (
    MosquittoConfig,
    MosquittoTls,
    acl_rules,
    render_config,
    write_password_file,
)
from hdus_edge.transport.url import parse_broker_url

logger = logging.getLogger(__name__)

ADMIN_USER = "admin"

# The agent gossips applied unlearn orders on tombstones/<id>; acl_rules may predate that topic.
_TOMBSTONE_RULES = ("pattern write {root}/tombstones/%u", "pattern read {root}/tombstones/+")


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_config`` wrote."""

    folder: Path
    config: Path
    acl: Path
    passwd: Path | None
    credentials: Path | None
    ca: Path | None
    device_certs: dict[str, tuple[Path, Path]]
    users: tuple[str, ...]
    urls: dict[str, str]  # client -> broker URL without the password

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "config": str(self.config), "acl": str(self.acl),
            "passwd": str(self.passwd) if self.passwd else None,
            "credentials": str(self.credentials) if self.credentials else None,
            "ca": str(self.ca) if self.ca else None,
            "device_certs": {d: {"cert": str(c), "key": str(k)} for d, (c, k) in self.device_certs.items()},
            "users": list(self.users), "urls": self.urls,
            "run": f"mosquitto -c {self.config}",
        }


def fleet_acl(fleet: str) -> str:
    """``acl_rules(fleet)`` plus the tombstone-digest topics when the rules lack them."""
    rules = acl_rules(fleet, admins=(ADMIN_USER,))
    if "/tombstones/" not in rules:
        root = f"hdus/v1/{fleet}"
        rules += "\n".join(r.format(root=root) for r in _TOMBSTONE_RULES) + "\n"
    return rules


def write_broker_config(
    admin: AdminDir,
    out: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 1883,
    public_host: str | None = None,
    passwords: bool = True,
    tls_port: int | None = None,
    tls_hosts: tuple[str, ...] = (),
    persistence: bool = True,
    passwd_binary: str | None = None,
) -> BrokerFiles:
    """Write a Mosquitto config, ACL, password file and (with ``tls_port``) TLS material for the fleet.

    ``host`` is where Mosquitto listens; ``public_host`` is what clients dial (default: the fleet
    broker URL's host). Refuses to overwrite an existing ``mosquitto.conf`` in ``out``.
    """
    fleet = admin.fleet()
    devices = sorted(admin.registry())
    if not devices:
        raise ConfigError(f"fleet '{fleet.fleet.name}' has no provisioned devices yet", hint="run 'hdus-edge provision' first")
    if not 1 <= port <= 65535 or (tls_port is not None and not 1 <= tls_port <= 65535):
        raise ConfigError("ports must be in 1..65535")
    out = Path(out)
    config_path = out / "mosquitto.conf"
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists", hint="choose another --out folder, or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dial = public_host or parse_broker_url(fleet.fleet.broker).host
    acl_path = out / "acl"
    acl_path.write_text(fleet_acl(fleet.fleet.name))
    users = (ADMIN_USER, *devices)
    passwd = credentials = None
    secrets_by_user: dict[str, str] = {}
    if passwords:
        secrets_by_user = {u: secrets.token_urlsafe(18) for u in users}
        passwd = write_password_file(out / "passwd", secrets_by_user, passwd_binary)
    tls = None
    ca_path = None
    certs: dict[str, tuple[Path, Path]] = {}
    if tls_port is not None:
        from hdus_edge.transport.certs import (
            make_ca,
            make_client_cert,
            make_server_cert,
        )

        ca = make_ca(out / "tls", common_name=f"hdus-edge {fleet.fleet.name} CA")
        server = make_server_cert(ca, out / "tls", hosts=tls_hosts or tuple(dict.fromkeys((dial, host, "127.0.0.1", "localhost"))))
        for user in users:
            pair = make_client_cert(ca, out / "tls" / "clients", user)
            certs[user] = (pair.cert, pair.key)
        ca_path = ca.cert
        tls = MosquittoTls(port=tls_port, ca_file=ca.cert.resolve(), cert_file=server.cert.resolve(), key_file=server.key.resolve())
    cfg = MosquittoConfig(
        port=port, host=host, allow_anonymous=not passwords and tls is None,
        password_file=passwd.resolve() if passwd else None, acl_file=acl_path.resolve(), tls=tls,
        persistence=persistence, persistence_dir=(out / "data").resolve() if persistence else None,
    )
    if persistence:
        (out / "data").mkdir(exist_ok=True)
    config_path.write_text(render_config(cfg))
    urls = {u: f"mqtt://{u}@{dial}:{port}" if passwords else f"mqtt://{dial}:{port}" for u in users}
    if tls_port is not None:
        urls.update({f"{u} (tls)": f"mqtts://{dial}:{tls_port}" for u in users})
    if passwords:
        credentials = out / "credentials.json"
        full = {u: {"user": u, "password": secrets_by_user[u], "url": f"mqtt://{u}:{secrets_by_user[u]}@{dial}:{port}"}
                for u in users}
        # Plain passwords: owner-only from the first byte on.
        write_json(credentials, full, mode=0o600)
    logger.info("broker config for fleet %s written to %s (%d devices)", fleet.fleet.name, out, len(devices))
    return BrokerFiles(out, config_path, acl_path, passwd, credentials, ca_path, certs, users, urls)
