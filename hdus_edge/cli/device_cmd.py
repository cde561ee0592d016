"""``hdus-edge status|members|neighbors``: what a device holds and whose seeds it wants (no torch).

Read from the state dir only (store index, status.json, device.toml), never by opening the store,
so they work next to a running agent.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.options import JsonOpt, StateDirOpt, open_state, split_ids
from hdus_edge.cli.output import console, print_json

neighbors_app = typer.Typer(help="Whose seeds this device uses (device.toml).", no_args_is_help=True)

IdsArg = Annotated[list[str], typer.Argument(help="Device ids (space- or comma-separated).")]


def status(state_dir: StateDirOpt, json_out: JsonOpt = False) -> None:
    """Show the device: agent and broker connection, ensemble members, seed versions and hashes, unlearns.

    Example: hdus-edge status --state-dir ./dev-1 --json
    """
    from hdus_edge.device.view import device_status

    report = device_status(open_state(state_dir))
    if json_out:
        print_json(report)
        return
    _print_status(report)


def members(state_dir: StateDirOpt, json_out: JsonOpt = False) -> None:
    """List the seeds in this device's ensemble: owner, version, sha256, architecture, size.

    Example: hdus-edge members --state-dir ./dev-1
    """
    from hdus_edge.device.view import device_status

    report = device_status(open_state(state_dir))
    if json_out:
        print_json({"device_id": report["device_id"], "members": report["members"], "seeds": report["seeds"],
                    "ensemble": report["ensemble"]})
        return
    console.print(_seed_table(report))


@neighbors_app.command("list")
def neighbors_list(state_dir: StateDirOpt, json_out: JsonOpt = False) -> None:
    """List this device's neighbours and whether it holds each one's seed.

    Example: hdus-edge neighbors list --state-dir ./dev-1
    """
    from hdus_edge.device.view import device_status

    report = device_status(open_state(state_dir))
    held = {s["owner"]: s for s in report["seeds"]}
    rows = [{"device_id": n, "seed_version": held[n]["version"] if n in held else None} for n in report["neighbors"]]
    if json_out:
        print_json({"device_id": report["device_id"], "neighbors": rows})
        return
    for r in rows:
        got = f"seed v{r['seed_version']}" if r["seed_version"] else "no seed yet"
        console.print(f"{r['device_id']}: {got}", markup=False)
    if not rows:
        console.print("no neighbours: add some with 'hdus-edge neighbors add'", markup=False)


@neighbors_app.command("add")
def neighbors_add(ids: IdsArg, state_dir: StateDirOpt, json_out: JsonOpt = False) -> None:
    """Add neighbours: this device will use their seeds.

    Example: hdus-edge neighbors add dev-2 dev-3 --state-dir ./dev-1
    """
    from hdus_edge.device.neighbors import change_neighbors

    _report(change_neighbors(open_state(state_dir), add=split_ids(ids)).to_json(), json_out)


@neighbors_app.command("remove")
def neighbors_remove(ids: IdsArg, state_dir: StateDirOpt, json_out: JsonOpt = False) -> None:
    """Remove neighbours: their seeds leave this device's ensemble and store.

    Example: hdus-edge neighbors remove dev-3 --state-dir ./dev-1
    """
    from hdus_edge.device.neighbors import change_neighbors

    _report(change_neighbors(open_state(state_dir), remove=split_ids(ids)).to_json(), json_out)


def _report(change: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(change)
        return
    console.print(f"neighbours of {change['device_id']}: {', '.join(change['neighbors']) or 'none'}", markup=False)
    if change["seeds_removed"]:
        console.print(f"  removed the seeds of {', '.join(change['seeds_removed'])} from the store", markup=False)
    if change["agent_running"] and (change["added"] or change["removed"]):
        console.print("  the running agent applies the new list within a second (it watches device.toml)",
                      markup=False)
    elif change["added"] or change["removed"]:
        console.print("  the broker learns the new list when the agent starts", markup=False)


def _when(ts: Any) -> str:
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _seed_table(report: dict[str, Any]) -> Table:
    e = report["ensemble"]
    table = Table(title=f"{report['device_id']}: ensemble = main + {len(report['members'])} seeds "
                        f"(lam {e['effective_lam']} over {e['space']}, {e['strategy']})")
    for col in ("owner", "version", "epoch", "sha256", "arch", "bytes", "received"):
        table.add_column(col)
    for s in report["seeds"]:
        table.add_row(s["owner"], str(s["version"]), str(s["epoch"]), s["sha256"][:16], s["arch"], f"{s['bytes']:,}",
                      _when(s["received_at"]))
    return table


def _print_status(r: dict[str, Any]) -> None:
    agent = r["agent"]
    state = "running, connected" if agent["connected"] else ("running, not connected" if agent["running"] else "not running")
    console.print(f"{r['device_id']} ({r['profile']}) in fleet {r['fleet']}, broker {r['broker']}: agent {state}",
                  markup=False)
    if agent.get("forgotten"):
        console.print("  this device was forgotten: its seed is no longer shared", markup=False)
    own = r["own"]
    info = own.get("seed_info") or {}
    console.print(f"  own seed: v{own['seed_version']}" + (f" sha256 {info['sha256'][:16]}..." if info.get("sha256") else "")
                  + ("" if own["main.onnx"] else " (not exported yet)"), markup=False)
    training = r.get("training") or {}
    if training.get("manifest_sha256"):
        console.print(f"  trained on {training['manifest_size']} samples (manifest sha256 "
                      f"{training['manifest_sha256'][:16]}...), {training['forgotten_samples']} forgotten", markup=False)
    console.print(f"  neighbours: {', '.join(r['neighbors']) or 'none'}", markup=False)
    console.print(_seed_table(r))
    u = r["unlearns"]
    for t in u["completed"]:
        console.print(f"  forgot {t['target']} (epoch {t['epoch']}) at {_when(t['at'])}, request {t['request_id']}", markup=False)
    for rid in u["pending_receipts"]:
        console.print(f"  receipt for request {rid} not yet confirmed by the broker", markup=False)
    for q in u["requested"]:
        done = "complete" if q["complete"] else f"waiting for {', '.join(q['missing'])}"
        console.print(f"  asked to forget {q['target']}: request {q['request_id']}, {done}", markup=False)
