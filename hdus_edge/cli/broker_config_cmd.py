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
    json_out: JsonOpt = False,
) -> None:
    """Write a Mosquitto config for the provisioned fleet: one TLS listener (client certificate and
    password required), Mosquitto's dynamic-security plugin with one login per device bound to its
    client id, each device writing only under its own id, orders writable only by the admin.

    Give each device devices/<id>/keys/tls/ (into its state dir's keys/tls/) and its URL from
    credentials.json (mode 0600; as 'broker' in its device.toml), then delete credentials.json. The
    admin's login goes into the admin dir (keys/broker.json, keys/tls/). Run the broker with:
    mosquitto -c <out>/mosquitto.conf

    Example: hdus-edge broker-config --admin-dir ./admin --out ./broker --host 0.0.0.0
    """
    from hdus_edge.admin.broker import write_broker_config

    admin = open_admin(admin_dir)
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
