"""``hdus-edge profiles list|show``: the device profiles in firmware_configs/."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.options import JsonOpt
from hdus_edge.cli.output import console, print_json

profiles_app = typer.Typer(help="Device profiles: what each class of device runs, within which limits.", no_args_is_help=True)


def _as_dict(name: str) -> dict[str, Any]:
    from hdus_edge.config import load_profile

    profile = load_profile(name)
    out = dataclasses.asdict(profile)
    return {section: ({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()} if isinstance(values, dict) else values)
            for section, values in out.items()}


@profiles_app.command("list")
def list_profiles(json_out: JsonOpt = False) -> None:
    """List every profile with its main and seed model, epochs and runtime.

    Example: hdus-edge profiles list --json
    """
    from hdus_edge.config import list_profiles as names

    rows = [_as_dict(n) for n in names()]
    if json_out:
        print_json(rows)
        return
    table = Table(title="Device profiles (firmware_configs/)")
    for col in ("name", "main model", "epochs", "memory", "accelerators"):
        table.add_column(col, no_wrap=col != "accelerators")
    for r in rows:
        gpu = [p.removesuffix("ExecutionProvider") for p in r["runtime"]["providers"] if p != "CPUExecutionProvider"]
        table.add_row(r["profile"]["name"], r["model"]["main_arch"], f"{r['train']['epochs']} / {r['train']['distill_epochs']}",
                      f"{r['limits']['memory_budget_mb']} MB", ", ".join(gpu) or "-")
    table.caption = "epochs: train / distill; 'hdus-edge profiles show NAME' for the rest"
    console.print(table)


@profiles_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name, e.g. raspberry-pi-4.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one profile in full.

    Example: hdus-edge profiles show jetson-orin-nano
    """
    data = _as_dict(name)
    if json_out:
        print_json(data)
        return
    console.print(f"[bold]{data['profile']['name']}[/]: {data['profile']['description']}")
    for section, values in data.items():
        if section == "profile":
            continue
        console.print(f"[{section}]", markup=False)
        for key, value in values.items():
            console.print(f"  {key} = {value}", markup=False)
