"""``hdus-edge provision``: a device's key pair, the admin's certificate, its config and state dir."""

from __future__ import annotations

from typing import Annotated

import typer

from hdus_edge.cli.options import (
    AdminDirOpt,
    JsonOpt,
    StateDirOpt,
    check_broker,
    open_admin,
    split_ids,
)
from hdus_edge.cli.output import console, print_json


def provision(
    admin_dir: AdminDirOpt,
    profile: Annotated[str, typer.Option(help="Device profile (see 'hdus-edge profiles list').")],
    device_id: Annotated[str, typer.Option("--device-id", help="The new device's id (letters, digits, . _ -).")],
    state_dir: StateDirOpt,
    neighbors: Annotated[list[str] | None, typer.Option(
        "--neighbors", "--neighbor", help="Devices whose seeds this one uses (comma-separated or repeated); they may be provisioned later.")] = None,
    broker: Annotated[str, typer.Option(help="Broker URL for this device only (default: the fleet's).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Provision a device: key pair, the admin's certificate, device.toml, reference set, empty store.

    Refuses an id the fleet already has. Prints what to copy to the device.

    Example: hdus-edge provision --admin-dir ./admin --profile raspberry-pi-4 --device-id kitchen --state-dir ./kitchen --neighbors hall,garage
    """
    from hdus_edge.admin.setup import provision as provision_device

    check_broker(broker)
    admin = open_admin(admin_dir)
    done = provision_device(admin, state_dir, device_id, profile, neighbors=split_ids(neighbors), broker=broker)
    root = done.state.root
    steps = [
        f"copy {root}/ to the device (e.g. scp -r {root} pi@{device_id}.local:hdus-state); "
        f"{root}/keys/device.key is its secret: keep it 0600 and delete the admin's copy once it is there",
        "on the device: hdus-edge train --state-dir hdus-state --data ./my-data",
        "then: hdus-edge distill, hdus-edge export, hdus-edge agent (each with --state-dir hdus-state)",
    ]
    if json_out:
        print_json({**done.to_json(), "next": steps})
        return
    console.print(f"Provisioned {device_id} ({profile}) in {root}; neighbours: {', '.join(done.neighbors) or 'none'}",
                  markup=False)
    for f in done.files:
        console.print(f"  {f}", markup=False)
    console.print("Next:")
    for step in steps:
        console.print(f"  - {step}", markup=False, soft_wrap=True)
