"""``hdus-edge service install|uninstall``: the agent as a hardened systemd unit (never imports torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.options import JsonOpt, StateDirOpt, open_state
from hdus_edge.cli.output import console, print_json

service_app = typer.Typer(help="Run the agent as a systemd service.", no_args_is_help=True)

UserOpt = Annotated[bool, typer.Option("--user", help="A user unit (~/.config/systemd/user) instead of a system one.")]
UnitDirOpt = Annotated[Path | None, typer.Option(help="Write the unit here instead of systemd's directory.")]


def _systemctl(user: bool) -> str:
    return "systemctl --user" if user else "systemctl"


@service_app.command("install")
def install(
    state_dir: StateDirOpt,
    user: UserOpt = False,
    run_as: Annotated[str | None, typer.Option(help="System unit: the unprivileged user to run as (default: the state dir's owner).")] = None,
    http: Annotated[str | None, typer.Option(help="Serve the API here instead of the profile's api.http ('' for none).")] = None,
    unit_dir: UnitDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a systemd unit that runs this device's agent: unprivileged, sandboxed, restarted on failure,
    MemoryMax from the profile's memory budget, the inference API at the profile's address.

    Example: sudo hdus-edge service install --state-dir /var/lib/hdus/dev-1 --run-as hdus
    """
    from hdus_edge.device import service

    state = open_state(state_dir)
    spec = service.spec_for(state, user_unit=user, run_as=run_as, http=http)
    path = service.install(spec, unit_dir)
    name = service.unit_name(spec.device_id)
    if json_out:
        print_json({"unit": str(path), "name": name, "user_unit": user, "run_as": spec.user, "http": spec.http,
                    "memory_max_mb": spec.memory_max_mb})
        return
    console.print(f"wrote {path}")
    console.print(f"start it with: {_systemctl(user)} daemon-reload && {_systemctl(user)} enable --now {name}")


@service_app.command("uninstall")
def uninstall(
    state_dir: StateDirOpt,
    user: UserOpt = False,
    unit_dir: UnitDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove this device's unit file (stop it first: systemctl disable --now hdus-edge-DEVICE).

    Example: sudo hdus-edge service uninstall --state-dir /var/lib/hdus/dev-1
    """
    from hdus_edge.device import service

    device_id = open_state(state_dir).device().device.id
    removed = service.uninstall(device_id, user_unit=user, directory=unit_dir)
    if json_out:
        print_json({"removed": str(removed) if removed else None, "name": service.unit_name(device_id)})
        return
    if removed is None:
        console.print(f"no unit {service.unit_name(device_id)} was installed")
    else:
        console.print(f"removed {removed}; then: {_systemctl(user)} daemon-reload")
