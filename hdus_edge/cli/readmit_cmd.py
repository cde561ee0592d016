"""``hdus-edge readmit``: bring a forgotten device back with a new epoch, key and broker login."""

from __future__ import annotations

from typing import Annotated

import typer

from hdus_edge.cli.options import (
    AdminDirOpt,
    JsonOpt,
    StateDirOpt,
    open_admin,
    split_ids,
)
from hdus_edge.cli.output import console, print_json


def readmit(
    device: Annotated[str, typer.Argument(help="Id of the forgotten device to re-admit.")],
    admin_dir: AdminDirOpt,
    state_dir: StateDirOpt,
    profile: Annotated[str | None, typer.Option(help="Device profile (default: the one it had).")] = None,
    neighbors: Annotated[list[str] | None, typer.Option(
        "--neighbors", "--neighbor", help="Devices whose seeds it uses (comma-separated or repeated).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-admit forgotten DEVICE: a fresh state dir with a new key and a certificate at the next epoch,
    the reference set, and (on a broker 'hdus-edge broker-config' wrote) a new login and TLS client
    certificate. Its old epochs stay refused everywhere; train it on fresh data before it joins.

    Example: hdus-edge readmit dev-2 --admin-dir ./admin --state-dir ./dev-2-new --neighbors dev-0,dev-1
    """
    from hdus_edge.admin.readmission import readmit as readmit_device

    admin = open_admin(admin_dir)
    done = readmit_device(admin, device, state_dir, profile=profile, neighbors=split_ids(neighbors))
    if json_out:
        print_json(done.to_json())
        return
    console.print(f"Re-admitted {device} at epoch {done.epoch} in {done.state.root}", markup=False)
    if done.broker_url:
        console.print(f"  broker login: {done.broker_url} (certificate in {done.state.root}/keys/tls/)", markup=False)
    console.print("Next: train it on fresh data, distill, export, then run its agent.", markup=False)
