"""``hdus-edge broker-config``: a TLS-only Mosquitto config with per-device logins bound to client ids."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.options import AdminDirOpt, JsonOpt, open_admin
from hdus_edge.cli.output import console, print_json


def broker_config(
    admin_dir: AdminDirOpt,
    out: Annotated[Path, typer.Option(help="Folder to write mosquitto.conf, dynamic-security.json, credentials.json, tls/ and devices/.")],
    host: Annotated[str, typer.Option(help="Address Mosquitto listens on (0.0.0.0 for the LAN).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Listener port (default 8883, or 1883 with --insecure-plaintext).")] = None,
    public_host: Annotated[str | None, typer.Option(help="Host name the devices dial (default: the fleet broker URL's).")] = None,
    insecure_plaintext: Annotated[bool, typer.Option("--insecure-plaintext", help="A plain-text listener instead of TLS (a lab only: passwords and seeds travel in clear).")] = False,
    persistence: Annotated[bool, typer.Option(help="Keep sessions and retained seeds across broker restarts.")] = True,
    bridge: Annotated[bool, typer.Option("--bridge", help="A core broker and --sites site brokers, each site bridging the fleet's topics both ways to the core; devices spread across the sites.")] = False,
    sites: Annotated[int, typer.Option(min=1, max=64, help="With --bridge: how many site brokers.")] = 2,
    site_ports: Annotated[str, typer.Option(help="With --bridge: the sites' ports, comma-separated (default: the core's port + 1, + 2, ...).")] = "",
    site_hosts: Annotated[str, typer.Option(help="With --bridge: the host each site's devices dial, comma-separated (default: --public-host).")] = "",
    core_address: Annotated[str | None, typer.Option(help="With --bridge: host:port the site bridges dial for the core (default: --public-host and --port).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a Mosquitto config for the provisioned fleet: one TLS listener (client certificate and
    password required), Mosquitto's dynamic-security plugin with one login per device bound to its
    client id, each device writing only under its own id, orders writable only by the admin.

    Give each device devices/<id>/keys/tls/ (into its state dir's keys/tls/) and its URL from
    credentials.json (mode 0600; as 'broker' in its device.toml), then delete credentials.json. The
    admin's login goes into the admin dir (keys/broker.json, keys/tls/). Run the broker with:
    mosquitto -c <out>/mosquitto.conf

    With --bridge: <out>/core/ and <out>/site-<k>/ each hold a mosquitto.conf; every broker has the
    same logins, each site's bridge logs in to the core with its own (never the plugin's control
    topic), over TLS with a client certificate unless --insecure-plaintext. Each device's URL in
    credentials.json is its site's; revoke and readmit change logins on every broker.

    Example: hdus-edge broker-config --admin-dir ./admin --out ./broker --host 0.0.0.0
    Example: hdus-edge broker-config --admin-dir ./admin --out ./brokers --bridge --sites 2
    """
    from hdus_edge.admin.broker import write_broker_config

    admin = open_admin(admin_dir)
    if bridge:
        _bridged(admin, out, host, port, public_host, insecure_plaintext, persistence, sites,
                 _csv(site_ports, "--site-ports", int), _csv(site_hosts, "--site-hosts", str), core_address, json_out)
        return
    files = write_broker_config(admin, out, host=host, port=port, public_host=public_host,
                                insecure_plaintext=insecure_plaintext, persistence=persistence)
    if json_out:
        print_json(files.to_json())
        return
    kind = "TLS" if files.tls else "plain-text (insecure)"
    console.print(f"Mosquitto config ({kind}) for {len(files.users) - 1} devices written to {files.folder}", markup=False)
    for label, path in (("config", files.config), ("logins (dynamic security)", files.dynsec),
                        ("credentials (plain, 0600)", files.credentials), ("CA certificate", files.ca)):
        if path is not None:
            console.print(f"  {label}: {path}", markup=False)
    for user, url in files.urls.items():
        console.print(f"  {user}: {url}", markup=False)
    console.print(f"Run: mosquitto -c {files.config}", markup=False)


def _csv(text: str, option: str, kind: type) -> tuple:
    from hdus_edge.errors import ConfigError

    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} must be a comma-separated list, got {text!r}") from None


def _bridged(admin, out: Path, host: str, port: int | None, public_host: str | None, insecure_plaintext: bool,
             persistence: bool, sites: int, site_ports: tuple, site_hosts: tuple, core_address: str | None,
             json_out: bool) -> None:
    from hdus_edge.admin.bridge import write_bridged_config

    files = write_bridged_config(admin, out, sites=sites, host=host, core_port=port, site_ports=site_ports,
                                 public_host=public_host, site_hosts=site_hosts, core_address=core_address,
                                 insecure_plaintext=insecure_plaintext, persistence=persistence)
    if json_out:
        print_json(files.to_json())
        return
    kind = "TLS" if files.tls else "plain-text (insecure)"
    console.print(f"Bridged Mosquitto configs ({kind}): a core and {len(files.sites)} sites, "
                  f"{len(files.site_of)} devices, written to {files.folder}", markup=False)
    for b in files.brokers:
        console.print(f"  {b.name} ({b.dial}): {len(b.devices)} devices; run: mosquitto -c {b.config}", markup=False)
    console.print(f"  credentials (plain, 0600): {files.credentials}", markup=False)
