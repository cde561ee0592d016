"""``hdus-edge broker-config``: Mosquitto config, ACL, passwords and TLS certificates for the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.options import AdminDirOpt, JsonOpt, open_admin
from hdus_edge.cli.output import console, print_json


def broker_config(
    admin_dir: AdminDirOpt,
    out: Annotated[Path, typer.Option(help="Folder to write mosquitto.conf, acl, passwd, credentials.json (and tls/).")],
    host: Annotated[str, typer.Option(help="Address Mosquitto listens on (0.0.0.0 for the LAN).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Plain MQTT port.")] = 1883,
    public_host: Annotated[str | None, typer.Option(help="Host name the devices dial (default: the fleet broker URL's).")] = None,
    passwords: Annotated[bool, typer.Option(help="A password per device and the admin (--no-passwords: anonymous).")] = True,
    tls_port: Annotated[int | None, typer.Option(min=1, max=65535, help="Also a TLS listener on this port, with a CA and per-device certificates.")] = None,
    persistence: Annotated[bool, typer.Option(help="Keep sessions and retained seeds across broker restarts.")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Write a Mosquitto config for the provisioned fleet: each device may write only under its own id.

    Passwords are random; credentials.json (mode 0600) holds them and each client's URL: give each
    device its own (e.g. as 'broker' in its device.toml) and then delete the file. Run the broker
    with: mosquitto -c <out>/mosquitto.conf

    Example: hdus-edge broker-config --admin-dir ./admin --out ./broker --host 0.0.0.0 --tls-port 8883
    """
    from hdus_edge.admin.broker import write_broker_config

    admin = open_admin(admin_dir)
    files = write_broker_config(admin, out, host=host, port=port, public_host=public_host, passwords=passwords,
                                tls_port=tls_port, persistence=persistence)
    if json_out:
        print_json(files.to_json())
        return
    console.print(f"Mosquitto config for {len(files.users) - 1} devices written to {files.folder}", markup=False)
    for label, path in (("config", files.config), ("ACL", files.acl), ("passwords (hashed)", files.passwd),
                        ("credentials (plain, 0600)", files.credentials), ("CA certificate", files.ca)):
        if path is not None:
            console.print(f"  {label}: {path}", markup=False)
    for user, url in files.urls.items():
        console.print(f"  {user}: {url}", markup=False)
    console.print(f"Run: mosquitto -c {files.config}", markup=False)
