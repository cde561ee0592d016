"""``hdus-edge leave|unlearn|receipts``: ask the fleet to forget a device, and show the signed proof."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.options import (
    AdminDirOpt,
    BrokerOpt,
    JsonOpt,
    OptionalAdminDirOpt,
    OptionalStateDirOpt,
    StateDirOpt,
    check_broker,
    open_admin,
    open_state,
    waiting,
)
from hdus_edge.cli.output import console, print_json

if TYPE_CHECKING:
    from pathlib import Path

    from hdus_edge.unlearn.request import UnlearnOutcome

WaitOpt = Annotated[float, typer.Option(min=0.5, help="Seconds to wait for every holder's receipt.")]
ReasonOpt = Annotated[str, typer.Option(help="Why (kept in the signed order).")]


def leave(
    state_dir: StateDirOpt,
    broker: BrokerOpt = "",
    wait: WaitOpt = 30.0,
    reason: ReasonOpt = "device asked to be forgotten",
    json_out: JsonOpt = False,
) -> None:
    """Ask the fleet to forget this device: an unlearn order signed with the device's own key.

    Every device holding this device's seed deletes it, rebuilds its ensemble and answers with a
    signed receipt. The evidence is saved in <state-dir>/evidence/<request>.json. Exits 1 when a
    holder did not answer in time (it applies the order when it reconnects).

    Example: hdus-edge leave --state-dir ./dev-2
    """
    from hdus_edge.unlearn.commands import leave as leave_fleet

    check_broker(broker)
    state = open_state(state_dir)
    with waiting("asking the fleet to forget this device; waiting for receipts", enabled=not json_out):
        outcome, path = leave_fleet(state, broker_url=broker or None, wait_s=wait, reason=reason)
    _finish(outcome, path, json_out)


def unlearn(
    device: Annotated[str, typer.Argument(help="Id of the device to forget (as provisioned).")],
    admin_dir: AdminDirOpt,
    broker: BrokerOpt = "",
    wait: WaitOpt = 30.0,
    reason: ReasonOpt = "ordered by the fleet admin",
    json_out: JsonOpt = False,
) -> None:
    """Order the fleet to forget DEVICE (fleet admin): signed with the admin key; receipts collected.

    Refuses an id that is not in devices.json. The evidence is saved in
    <admin-dir>/evidence/<request>.json. Exits 1 when a holder did not answer in time.

    Example: hdus-edge unlearn dev-3 --admin-dir ./admin
    """
    from hdus_edge.unlearn.commands import unlearn as unlearn_device
    from hdus_edge.unlearn.revocation import revoke as revoke_device

    check_broker(broker)
    admin = open_admin(admin_dir)
    with waiting(f"ordering the fleet to forget {device}; waiting for receipts", enabled=not json_out):
        outcome, path = unlearn_device(admin, device, broker_url=broker or None, wait_s=wait, reason=reason)
        # After the wait, complete or not: the order is retained where the device cannot clear it,
        # and a holder that was away applies it (or the revocation list) when it returns.
        revoked = revoke_device(admin, outcome.order_raw, broker_url=broker or None)
    _finish(outcome, path, json_out, {"revocation": revoked.to_json()})


def revoke(
    admin_dir: AdminDirOpt,
    device: Annotated[str | None, typer.Argument(help="Id of the device to revoke (it asked with 'leave', or was ordered).")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Revoke every device whose own 'leave' order is on the broker and not yet revoked.")] = False,
    again: Annotated[bool, typer.Option("--all", help="Apply every recorded revocation again at every broker (after a bridge or a site broker came back).")] = False,
    broker: BrokerOpt = "",
    json_out: JsonOpt = False,
) -> None:
    """Revoke a forgotten device everywhere (fleet admin): its broker logins, its certificate in the
    signed revocation list, its retained topics. 'unlearn' does this by itself; after a device's own
    'leave', run it with the device's id or with --pending (e.g. from cron). The order is relayed
    where no device can clear it. Harmless to repeat. With bridged brokers, run it with --all once a
    cut bridge or a site broker is back: a reconnecting bridge can replay a retained copy cleared meanwhile.

    Example: hdus-edge revoke dev-2 --admin-dir ./admin
    """
    from hdus_edge.errors import ConfigError
    from hdus_edge.unlearn.revocation import (
        find_self_order,
        pending_leaves,
        reapply_all,
    )
    from hdus_edge.unlearn.revocation import revoke as revoke_device

    check_broker(broker)
    if (device is not None) + pending + again != 1:
        raise ConfigError("name one DEVICE, or pass --pending or --all", hint="hdus-edge revoke dev-2 --admin-dir ./admin")
    admin = open_admin(admin_dir)
    if again:
        done = reapply_all(admin, broker_url=broker or None)
    else:
        orders = pending_leaves(admin, broker_url=broker or None) if pending else {
            device: find_self_order(admin, device, broker_url=broker or None)}  # type: ignore[dict-item]
        done = [revoke_device(admin, order, broker_url=broker or None) for order in orders.values()]
    if json_out:
        print_json(done[0].to_json() if device is not None else {"revoked": [d.to_json() for d in done]})
        return
    if not done:
        console.print("no pending leave orders" if pending else "no revocation to apply again", markup=False)
    for d in done:
        console.print(f"Revoked {d.device} (epochs <= {d.epoch}, request {d.request_id}); revocation list v{d.list_version}",
                      markup=False)
        console.print(f"  broker logins deleted: {', '.join(d.broker_logins_deleted) or 'none (no logins on this broker)'}",
                      markup=False)
        for e in d.broker_errors:
            console.print(f"  problem: {e}", markup=False)


def receipts(
    request_id: Annotated[str | None, typer.Argument(help="Request id (default: list the saved requests).")] = None,
    state_dir: OptionalStateDirOpt = None,
    admin_dir: OptionalAdminDirOpt = None,
    broker: BrokerOpt = "",
    wait: Annotated[float, typer.Option(min=0.1, help="Seconds to collect retained receipts from the broker.")] = 2.0,
    offline: Annotated[bool, typer.Option(help="Only saved evidence; do not ask the broker.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show the signed receipts of an unlearn request: from the broker, verified, and from saved evidence.

    Without REQUEST_ID, list the requests whose evidence is saved in the state or admin dir.

    Example: hdus-edge receipts 3f2a9c... --state-dir ./dev-2 --json
    """
    from hdus_edge.unlearn.commands import list_requests, receipts_report, source_of

    check_broker(broker)
    state = open_state(state_dir) if state_dir is not None and admin_dir is None else None
    admin = open_admin(admin_dir) if admin_dir is not None else None
    source = source_of(state, admin, broker or None)
    if request_id is None:
        rows = list_requests(source)
        if json_out:
            print_json({"requests": rows})
            return
        for r in rows:
            done = "complete" if r["complete"] else f"missing {', '.join(r['missing'])}"
            console.print(f"{r['request_id']}  forget {r['target']} by {r['issuer']}: {len(r['receipts'])} receipts, {done}",
                          markup=False)
        if not rows:
            console.print("no saved unlearn requests here", markup=False)
        return
    report = receipts_report(source, request_id, wait_s=wait, use_broker=not offline)
    if json_out:
        print_json(report)
        return
    _print_receipts(report)


def _finish(outcome: UnlearnOutcome, path: Path, json_out: bool, extra: dict[str, Any] | None = None) -> None:
    from hdus_edge.errors import UnlearnIncompleteError

    ev = outcome.evidence()
    if json_out:
        print_json({**{k: v for k, v in ev.items() if k not in ("order", "certificates")},
                    "receipts": [{k: v for k, v in r.items() if k != "signed"} for r in ev["receipts"]],
                    "evidence_file": str(path), **(extra or {})})
    else:
        console.print(f"Request {outcome.order.request_id}: forget {outcome.order.target} (signed by {outcome.order.issuer})",
                      markup=False)
        for r in ev["receipts"]:
            what = f"deleted seed {r['removed_sha256'][:16]}..." if r["held"] else "held no seed"
            console.print(f"  {r['device_id']}: {what}; members now {', '.join(r['members_after']) or 'none'}", markup=False)
        if not outcome.holders:
            console.print("  no device listed it as a neighbour: nothing to delete", markup=False)
        console.print(f"Evidence: {path} ({outcome.seconds:.1f} s)", markup=False)
        revoked = (extra or {}).get("revocation")
        if revoked:
            logins = ", ".join(revoked["broker_logins_deleted"]) or "none on this broker"
            console.print(f"Revoked {revoked['device']} (revocation list v{revoked['list_version']}; broker logins "
                          f"deleted: {logins})", markup=False)
    if not outcome.complete:
        raise UnlearnIncompleteError(
            f"no receipt within the wait from {', '.join(outcome.missing)}",
            hint=f"they apply the order when they reconnect; check with 'hdus-edge receipts {outcome.order.request_id}'",
        )


def _print_receipts(report: dict[str, Any]) -> None:
    title = f"Request {report['request_id']}"
    if report["target"]:
        title += f": forget {report['target']} (by {report['issuer']})"
    table = Table(title=title)
    for col in ("device", "removed seed", "members after", "at", "found in"):
        table.add_column(col)
    for r in report["receipts"]:
        table.add_row(r["device_id"], (r["removed_sha256"] or "held none")[:16], ", ".join(r["members_after"]) or "-",
                      dt.datetime.fromtimestamp(r["at"]).strftime("%H:%M:%S"), ", ".join(r["sources"]))
    console.print(table)
    if report["missing"]:
        console.print(f"missing: {', '.join(report['missing'])}", markup=False)
    verdict = "every signature verifies" if report["verified"] else "PROBLEMS: " + "; ".join(report["problems"])
    console.print(verdict, markup=False)
