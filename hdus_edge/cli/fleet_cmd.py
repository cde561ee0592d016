"""``hdus-edge fleet init|show``: create a fleet (admin key pair, fleet config, reference set) and look at it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from hdus_edge.cli.options import AdminDirOpt, JsonOpt, open_admin
from hdus_edge.cli.output import console, print_json
from hdus_edge.ensemble.combine import DEFAULT_LAM

fleet_app = typer.Typer(help="Create and show a fleet (run by the fleet admin).", no_args_is_help=True)


@fleet_app.command("init")
def init(
    admin_dir: AdminDirOpt,
    fleet: Annotated[str, typer.Option("--fleet", help="Fleet name (part of every MQTT topic).")],
    broker: Annotated[str, typer.Option("--broker", help="Broker URL the devices use, mqtt://host:port or mqtts://.")] = "mqtt://127.0.0.1:1883",
    reference: Annotated[str | None, typer.Option(
        help="Reference set the seeds are distilled on: a data folder (.npz / IDX) of public inputs, "
             "'digits', or 'noise'. Default: 'noise' with --input-shape, else 'digits'.")] = None,
    reference_size: Annotated[int | None, typer.Option(
        help="Samples to take from the reference data, or to generate for 'noise' (default: all; 500 for digits/noise).")] = None,
    input_shape: Annotated[str | None, typer.Option(help="Input shape C x H x W, e.g. 1x28x28 (default: the reference set's).")] = None,
    classes: Annotated[int | None, typer.Option(help="Number of classes (default: the reference set's).")] = None,
    lam: Annotated[float, typer.Option(help="Weight of the neighbours' seeds in every ensemble, in [0, 1].")] = DEFAULT_LAM,
    space: Annotated[str, typer.Option(help="Average 'probs' or 'logits'.")] = "probs",
    seed: Annotated[int, typer.Option(help="Seed for sampling or generating the reference set.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Create a fleet: the admin key pair, fleet.toml and the reference set every device distils on.

    The reference set's sha256 goes into fleet.toml and its bytes into <admin-dir>/reference.npz;
    'hdus-edge provision' copies it into each device's state dir. It must hold no client's data.

    Example: hdus-edge fleet init --admin-dir ./admin --fleet home --broker mqtt://192.168.1.10:1883 --reference digits
    """
    from hdus_edge.admin.setup import create_fleet, parse_input_shape, resolve_reference
    from hdus_edge.transport.url import parse_broker_url

    parse_broker_url(broker)  # fail before any work
    shape = parse_input_shape(input_shape) if input_shape else None
    source = reference or ("noise" if shape is not None else "digits")
    ref = resolve_reference(source, size=reference_size, input_shape=shape, num_classes=classes, seed=seed)
    admin, cfg = create_fleet(admin_dir, fleet, broker, ref, lam=lam, space=space)
    report = {
        "admin_dir": str(admin.root),
        "fleet": cfg.fleet.name,
        "broker": parse_broker_url(broker).redacted(),
        "topic_root": cfg.topic_root,
        "input_shape": list(cfg.data.input_shape),
        "num_classes": cfg.data.num_classes,
        "reference": {"kind": ref.kind, "source": ref.source, "samples": len(ref.data), "sha256": ref.sha256,
                      "file": str(admin.reference_file)},
        "lam": cfg.ensemble.lam,
        "space": cfg.ensemble.space,
        "files": [str(p) for p in (admin.fleet_file, admin.key_file, admin.pub_file, admin.registry_file, admin.reference_file)],
    }
    if json_out:
        print_json(report)
        return
    console.print(f"Fleet [bold]{cfg.fleet.name}[/] created in {admin.root}")
    console.print(f"  broker {report['broker']}, topics under {cfg.topic_root}/")
    console.print(f"  input {list(cfg.data.input_shape)}, {cfg.data.num_classes} classes, lam {cfg.ensemble.lam} over {cfg.ensemble.space}")
    console.print(f"  reference: {ref.kind} from {ref.source!r}, {len(ref.data)} samples, sha256 {ref.sha256[:16]}...")
    console.print(f"  keep {admin.key_file} secret: it certifies devices and can order any device forgotten")
    console.print(f"Next: hdus-edge provision --admin-dir {admin.root} --profile raspberry-pi-4 --device-id dev-1 --state-dir ./dev-1")


@fleet_app.command("show")
def show(admin_dir: AdminDirOpt, json_out: JsonOpt = False) -> None:
    """Show the fleet config and every provisioned device.

    Example: hdus-edge fleet show --admin-dir ./admin --json
    """
    from hdus_edge.transport.url import parse_broker_url

    admin = open_admin(admin_dir)
    cfg = admin.fleet()
    registry = admin.registry()
    report = {
        "fleet": cfg.fleet.name, "broker": parse_broker_url(cfg.fleet.broker).redacted(), "topic_root": cfg.topic_root,
        "input_shape": list(cfg.data.input_shape), "num_classes": cfg.data.num_classes,
        "reference": {"kind": cfg.data.reference, "sha256": cfg.data.reference_sha256},
        "lam": cfg.ensemble.lam, "space": cfg.ensemble.space,
        "devices": [{"device_id": d, **{k: v for k, v in info.items() if k != "public_key"}} for d, info in sorted(registry.items())],
    }
    if json_out:
        print_json(report)
        return
    console.print(f"Fleet [bold]{cfg.fleet.name}[/]: broker {report['broker']}, input {list(cfg.data.input_shape)}, "
                  f"{cfg.data.num_classes} classes, reference {cfg.data.reference} {cfg.data.reference_sha256[:12]}...")
    table = Table(title=f"{len(registry)} provisioned devices")
    for col in ("device", "profile", "epoch", "provisioned", "unlearn request"):
        table.add_column(col)
    for d in report["devices"]:
        when = dt.datetime.fromtimestamp(d.get("issued_at", 0)).strftime("%Y-%m-%d %H:%M")
        table.add_row(d["device_id"], d.get("profile", "?"), str(d.get("epoch", 0)), when, d.get("unlearned") or "-")
    console.print(table)
