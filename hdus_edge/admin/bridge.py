"""Bridged Mosquittos for a provisioned fleet (``hdus-edge broker-config --bridge``; no torch).

How Mosquitto fleets grow: a broker per site (a building), each bridged to a core broker. This
writes a core broker and N site brokers (default 2) into one folder, each site bridging the fleet's
topic tree ``hdus/v1/<fleet>/#`` both ways to the core at QoS 1 (``MosquittoBridge`` says why each
bridge setting has its value), and spreads the devices across the sites (round robin over the
sorted ids): each device's URL in ``credentials.json`` is its site's.

Security holds as on one broker (``admin.broker``): every broker runs the dynamic-security plugin
with the same device logins (bound to client ids) and roles, and the admin's login; TLS-only
listeners needing a client certificate from the one fleet CA. Each site's bridge logs in to the
core with its own login (``bridge-<site>``, bound to its client id) whose role reads and writes the
fleet's tree and nothing else: never ``$CONTROL`` (the plugin's control topic is not bridged either,
so a login change must be made at each broker: ``revoke`` and ``readmit`` do, from
``keys/broker.json``'s ``brokers``). The bridge dials the core over TLS with a client certificate
from the fleet CA unless ``insecure_plaintext``.

Layout of ``out``: ``core/`` and ``site-<k>/`` (``mosquitto.conf``, ``dynamic-security.json``,
``data/``), ``tls/`` (the CA and each broker's certificate), ``devices/<login>/keys/tls/`` (client
bundles: devices, admin, bridges), ``credentials.json`` (0600), ``bridge.json`` (the layout, no secrets).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdus_edge.admin.broker import (
    ADMIN_ROLE,
    ADMIN_USER,
    DEFAULT_PLAIN_PORT,
    DEFAULT_TLS_PORT,
    admin_role,
    device_logins,
    device_role,
    install_tls_bundle,
    issue_client_bundle,
)
from hdus_edge.errors import ConfigError
from hdus_edge.files import atomic_write, write_json
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir
from hdus_edge.transport import dynsec
from hdus_edge.transport.mosquitto import (
    MosquittoBridge,
    MosquittoConfig,
    MosquittoTls,
    render_config,
)
from hdus_edge.transport.url import parse_broker_url

logger = logging.getLogger(__name__)

CORE = "core"
BRIDGE_ROLE = "fleet-bridge"
LAYOUT_NAME = "bridge.json"
# Per client, on every broker of the layout (one broker's default: 1000). Each (re)connect of a
# bridge replays every retained message of the fleet's tree to the other side (Mosquitto 2.0.11
# queues them twice: at bridge__connect and at bridge__on_connect), and that side forwards them
# live to every subscriber: with 1000, 20 bridge cuts at 20 devices overflowed bridge and device
# queues and Mosquitto dropped receipts ("Outgoing messages are being dropped"). Still bounded.
BRIDGED_MAX_QUEUED = 20000


def site_name(k: int) -> str:
    """The k-th site (from 1): ``site-<k>``."""
    return f"site-{k}"


def bridge_user(site: str) -> str:
    """The login a site's bridge uses at the core."""
    return f"bridge-{site}"


def bridge_client_id(fleet: str, site: str) -> str:
    """The one client id a site's bridge login may use at the core."""
    return f"bridge.{fleet}.{site}"


def bridge_role(fleet: str) -> dynsec.Role:
    """A bridge: send, subscribe and receive in the fleet's tree, nothing else (no ``$CONTROL``)."""
    topic = f"{Topics(fleet).root}/#"
    return dynsec.Role(BRIDGE_ROLE, tuple(dynsec.Acl(kind, topic) for kind in
                                          ("publishClientSend", "subscribePattern", "publishClientReceive")))


def spread(devices: list[str], sites: int) -> dict[str, str]:
    """Device -> site, round robin over the sorted ids (deterministic; sizes differ by at most one)."""
    return {d: site_name(1 + k % sites) for k, d in enumerate(sorted(devices))}


def fleet_bridge(fleet: str, site: str, core_address: str, password: str | None,
                 tls: tuple[Path, Path, Path] | None) -> MosquittoBridge:
    """The ``connection`` section a site broker uses to bridge the fleet's tree to the core."""
    cafile, certfile, keyfile = tls if tls else (None, None, None)
    return MosquittoBridge(
        name=f"{fleet}-{site}-to-core", address=core_address, topics=(f"{Topics(fleet).root}/#",),
        remote_clientid=bridge_client_id(fleet, site),
        remote_username=bridge_user(site) if password is not None else None, remote_password=password,
        cafile=cafile, certfile=certfile, keyfile=keyfile)


@dataclass(frozen=True)
class BrokerSite:
    """One broker of the layout: where it listens, what clients dial, its config."""

    name: str
    folder: Path
    dial: str  # host:port that clients (and, for the core, the bridges) connect to
    mosquitto: MosquittoConfig  # ``MosquittoProcess(folder, mosquitto)`` runs it
    devices: tuple[str, ...] = ()

    @property
    def config(self) -> Path:
        return self.folder / "mosquitto.conf"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "folder": str(self.folder), "config": str(self.config), "dial": self.dial,
                "devices": list(self.devices), "run": f"mosquitto -c {self.config}"}


@dataclass(frozen=True)
class BridgedFiles:
    """What ``write_bridged_config`` wrote."""

    folder: Path
    core: BrokerSite
    sites: tuple[BrokerSite, ...]
    credentials: Path
    ca: Path | None
    site_of: dict[str, str]  # device -> site name
    urls: dict[str, str]  # login -> its broker URL without the password
    tls: bool = True
    layout: Path = field(default=Path())

    @property
    def brokers(self) -> tuple[BrokerSite, ...]:
        """The core first, then the sites."""
        return (self.core, *self.sites)

    def site(self, name: str) -> BrokerSite:
        return next(b for b in self.brokers if b.name == name)

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "bridged": True, "tls": self.tls, "credentials": str(self.credentials),
                "ca": str(self.ca) if self.ca else None, "layout": str(self.layout),
                "brokers": [b.to_json() for b in self.brokers], "site_of": self.site_of, "urls": self.urls,
                "device_bundles": {d: str(self.folder / "devices" / d) for d in self.site_of} if self.tls else {}}


def write_bridged_config(
    admin: AdminDir,
    out: Path,
    *,
    sites: int = 2,
    host: str = "127.0.0.1",
    core_port: int | None = None,
    site_ports: tuple[int, ...] = (),
    public_host: str | None = None,
    site_hosts: tuple[str, ...] = (),
    core_address: str | None = None,
    insecure_plaintext: bool = False,
    persistence: bool = True,
    plugin: Path | None = None,
) -> BridgedFiles:
    """Write a core broker and ``sites`` site brokers bridged to it for the fleet (module doc).

    ``host``: where every broker listens. ``public_host``: what the admin and bridges dial for the
    core (default: the fleet broker URL's host); ``site_hosts``: what each site's devices dial
    (default ``public_host``). Ports default to 8883 (1883 plain) for the core and the next ones
    for the sites. ``core_address`` (``host:port``) overrides where the bridges dial the core (a
    proxy in front of it, a NAT). Refuses a folder that already holds a config; ``ConfigError`` on
    bad options or a missing plugin.
    """
    fleet = admin.fleet()
    name = fleet.fleet.name
    devices = sorted(admin.registry())
    if not devices:
        raise ConfigError(f"fleet '{name}' has no provisioned devices yet", hint="run 'hdus-edge provision' first")
    if sites < 1:
        raise ConfigError("--sites must be at least 1")
    core_port = core_port if core_port is not None else (DEFAULT_PLAIN_PORT if insecure_plaintext else DEFAULT_TLS_PORT)
    site_ports = tuple(site_ports) or tuple(core_port + k for k in range(1, sites + 1))
    if len(site_ports) != sites or len(site_hosts) not in (0, sites):
        raise ConfigError(f"give one port (and host, if any) per site: {sites} sites, {len(site_ports)} ports, "
                          f"{len(site_hosts)} hosts")
    ports = (core_port, *site_ports)
    if len(set(ports)) != len(ports) or not all(1 <= p <= 65535 for p in ports):
        raise ConfigError(f"ports must be distinct and in 1..65535, got {list(ports)}")
    plugin = plugin or dynsec.find_plugin()
    if plugin is None:
        raise ConfigError("Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed",
                          hint="install Debian's 'mosquitto' package (2.0 or later)")
    out = Path(out)
    if (out / CORE / "mosquitto.conf").exists() or (out / "mosquitto.conf").exists():
        raise ConfigError(f"{out} already holds a broker config", hint="choose another --out folder, or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dial = public_host or parse_broker_url(fleet.fleet.broker).host
    dials = {CORE: (dial, core_port)}
    for k in range(sites):
        dials[site_name(k + 1)] = (site_hosts[k] if site_hosts else dial, site_ports[k])
    site_of = spread(devices, sites)
    scheme = "mqtt" if insecure_plaintext else "mqtts"
    bridges = [site_name(k + 1) for k in range(sites)]

    passwords = {u: secrets.token_urlsafe(18) for u in (ADMIN_USER, *devices, *map(bridge_user, bridges))}
    clients = [dynsec.Client(ADMIN_USER, passwords[ADMIN_USER], None, (ADMIN_ROLE,))]
    roles = [admin_role(name)]
    for d in devices:
        clients += device_logins(name, d, passwords[d])
        roles.append(device_role(name, d))
    core_clients = clients + [dynsec.Client(bridge_user(s), passwords[bridge_user(s)], bridge_client_id(name, s),
                                            (BRIDGE_ROLE,)) for s in bridges]

    tls_for: dict[str, MosquittoTls] = {}
    ca_path = None
    if not insecure_plaintext:
        from hdus_edge.transport.certs import make_ca, make_server_cert

        ca = make_ca(out / "tls", common_name=f"hdus-edge {name} CA")
        ca_path = ca.cert
        for broker, (h, port) in dials.items():
            server = make_server_cert(ca, out / "tls" / broker, hosts=tuple(dict.fromkeys((h, host, "127.0.0.1", "localhost"))))
            tls_for[broker] = MosquittoTls(port=port, ca_file=ca.cert.resolve(), cert_file=server.cert.resolve(),
                                           key_file=server.key.resolve(), use_identity_as_username=False)
        for user in (ADMIN_USER, *devices, *map(bridge_user, bridges)):
            issue_client_bundle(out, user)

    core_dial = core_address or f"{dials[CORE][0]}:{core_port}"
    written: dict[str, BrokerSite] = {}
    for broker, (_, port) in dials.items():
        folder = out / broker
        folder.mkdir(exist_ok=True)
        dynsec_path = dynsec.write_file(folder / "dynamic-security.json", core_clients if broker == CORE else clients,
                                        [*roles, bridge_role(name)] if broker == CORE else roles)
        section: tuple[MosquittoBridge, ...] = ()
        if broker != CORE:
            bundle = (out / "devices" / bridge_user(broker) / "keys" / "tls").resolve()
            section = (fleet_bridge(name, broker, core_dial, passwords[bridge_user(broker)],
                                    None if insecure_plaintext else (bundle / "ca.crt", bundle / "client.crt",
                                                                     bundle / "client.key")),)
        cfg = MosquittoConfig(
            port=port, host=host, allow_anonymous=False, tls=tls_for.get(broker), plain=insecure_plaintext,
            dynsec_plugin=Path(plugin), dynsec_file=dynsec_path.resolve(), persistence=persistence,
            max_queued_messages=BRIDGED_MAX_QUEUED,
            persistence_dir=(folder / "data").resolve() if persistence else None, bridges=section)
        if persistence:
            (folder / "data").mkdir(exist_ok=True)
        # 0600: a site's config holds its bridge's password.
        atomic_write(folder / "mosquitto.conf", render_config(cfg).encode(), mode=0o600)
        written[broker] = BrokerSite(broker, folder, f"{dials[broker][0]}:{port}", cfg,
                                     tuple(d for d in devices if site_of[d] == broker))

    def url_of(user: str, broker: str, password: str | None) -> str:
        h, port = dials[broker]
        return f"{scheme}://{user}{':' + password if password else ''}@{h}:{port}"

    home = {ADMIN_USER: CORE, **site_of, **{bridge_user(s): CORE for s in bridges}}
    full = {u: {"user": u, "password": passwords[u], "url": url_of(u, home[u], passwords[u]), "broker": home[u]}
            for u in passwords}
    credentials = out / "credentials.json"
    write_json(credentials, full, mode=0o600)  # plain passwords: owner-only from the first byte on
    # The admin: the core first (where it publishes orders), then every broker whose logins it manages.
    write_json(admin.broker_access_file, {
        "url": full[ADMIN_USER]["url"], "broker_dir": str(out.resolve()),
        "brokers": [{"name": b, "url": url_of(ADMIN_USER, b, passwords[ADMIN_USER])} for b in dials]}, mode=0o600)
    if not insecure_plaintext:
        install_tls_bundle(out, ADMIN_USER, admin.tls_dir)
    urls = {u: url_of(u, home[u], None) for u in passwords}
    files = BridgedFiles(out, written[CORE], tuple(written[s] for s in bridges), credentials, ca_path, site_of, urls,
                         not insecure_plaintext, out / LAYOUT_NAME)
    layout = files.to_json()
    write_json(files.layout, layout)
    logger.info("bridged broker config for fleet %s written to %s (%d devices, %d sites, %s)", name, out,
                len(devices), sites, scheme)
    return files
