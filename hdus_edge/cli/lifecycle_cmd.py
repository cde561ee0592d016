"""``hdus-edge train|distill|export|publish``: a device's steps from its own data to a published seed.

train, distill and export import torch inside the command body (the CLI's other commands never
load it); publish is torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.options import (
    BrokerOpt,
    JsonOpt,
    StateDirOpt,
    check_broker,
    open_state,
    progress_callback,
    waiting,
)
from hdus_edge.cli.output import console, fleet_progress, pct, print_json

EpochsOpt = Annotated[int | None, typer.Option(min=1, help="Epochs (default: the profile's).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice (same data and seed, same model).")]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="torch threads; 1 gives the same weights on every machine.")]


def train(
    state_dir: StateDirOpt,
    data: Annotated[Path | None, typer.Option(help="This device's own data: a folder of .npz or IDX files, or one .npz.")] = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 1,
    add: Annotated[Path | None, typer.Option(help="New samples to add to the trained data; then re-distil and export a new seed version.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the main model (the profile's architecture) on this device's own data only.

    Writes models/main.pt. The data must have the fleet's input shape and share no sample with
    the public reference set.

    With --add DATA instead, the samples join the trained data, the main model is retrained (with
    shards, only the shards that get samples), re-distilled and exported as a new seed version.

    Example: hdus-edge train --state-dir ./dev-1 --data ./my-data --epochs 20
    """
    from hdus_edge.errors import ConfigError

    if (data is None) == (add is None):
        raise ConfigError("give exactly one of --data DIR (train from scratch) or --add DATA (add samples)",
                          hint="hdus-edge train --help")
    if add is not None:
        from hdus_edge.cli.samples_cmd import train_add

        train_add(state_dir, add, json_out)
        return
    from hdus_edge.learning.steps import train_step

    state = open_state(state_dir)
    device_id = state.device().device.id
    with fleet_progress(enabled=not json_out) as update:
        report = train_step(state, data, epochs=epochs, seed=seed, threads=threads,
                            progress=progress_callback(update, device_id, "train"))
    if json_out:
        print_json(report.to_json())
        return
    console.print(f"Trained {report.arch} ({report.params:,} parameters) of {device_id} on {report.samples} samples "
                  f"(classes {report.classes_seen}), {report.epochs} epochs in {report.seconds:.1f} s: "
                  f"train accuracy {pct(report.train_accuracy)}", markup=False)
    if report.forgotten_dropped:
        console.print(f"Left out {report.forgotten_dropped} samples forgotten on this device before.", markup=False)
    console.print(f"Wrote {report.checkpoint}. Next: hdus-edge distill --state-dir {state.root}", markup=False)


def distill(
    state_dir: StateDirOpt,
    epochs: EpochsOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Distil the seed model from the main model on the fleet's reference set (reference.npz) only.

    Writes models/seed.pt.

    Example: hdus-edge distill --state-dir ./dev-1
    """
    from hdus_edge.learning.steps import distill_step

    state = open_state(state_dir)
    device_id = state.device().device.id
    with fleet_progress(enabled=not json_out) as update:
        report = distill_step(state, epochs=epochs, seed=seed, threads=threads,
                              progress=progress_callback(update, device_id, "distill"))
    if json_out:
        print_json(report.to_json())
        return
    console.print(f"Distilled {report.arch} ({report.params:,} parameters) from {report.teacher_arch} on "
                  f"{report.reference_samples} reference samples in {report.seconds:.1f} s: agrees with the main "
                  f"model on {pct(report.agreement)} of them", markup=False)
    console.print(f"Wrote {report.checkpoint}. Next: hdus-edge export --state-dir {state.root}", markup=False)


def export(
    state_dir: StateDirOpt,
    json_out: JsonOpt = False,
    created_at: Annotated[str | None, typer.Option(
        help="Creation time written into the models' metadata (default: now); fix it for byte-reproducible exports.")] = None,
) -> None:
    """Export main and seed models to ONNX (models/main.onnx, models/seed.onnx) and bump the seed version.

    Example: hdus-edge export --state-dir ./dev-1
    """
    from hdus_edge.learning.steps import export_step

    state = open_state(state_dir)
    report = export_step(state, created_at=created_at)
    if json_out:
        print_json(report.to_json())
        return
    console.print(f"Exported {report.main_arch} ({report.main_bytes:,} bytes) and seed v{report.seed_version} "
                  f"{report.seed_arch} ({report.seed_bytes:,} bytes, sha256 {report.seed_sha256[:16]}...)", markup=False)
    if state.agent_running():
        console.print("The running agent publishes the new seed within a second; a new main model needs an agent "
                      "restart.", markup=False)
    else:
        console.print(f"Next: hdus-edge agent --state-dir {state.root} (or hdus-edge publish to send the seed now)", markup=False)


def publish(
    state_dir: StateDirOpt,
    broker: BrokerOpt = "",
    connect_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to reach the broker before giving up.")] = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Publish the exported seed to every device whose neighbour list names this one.

    Signs each copy with this device's key and leaves it retained on the broker. Logs in as the
    device's command login (<id>@cli, client id <fleet>.<id>@cli) with the certificate in keys/tls/,
    so it works next to a running agent. Refuses when this device was forgotten.

    Example: hdus-edge publish --state-dir ./dev-1
    """
    from hdus_edge.device.publish import publish_seed

    check_broker(broker)
    state = open_state(state_dir)
    with waiting("reading the fleet's neighbour lists and publishing", enabled=not json_out):
        out = publish_seed(state, broker_url=broker or None, connect_timeout=connect_timeout)
    if json_out:
        print_json(out.to_json())
        return
    if out.sent_to:
        console.print(f"Published seed v{out.version} of {out.device_id} to {', '.join(out.sent_to)}", markup=False)
    else:
        console.print(f"No device lists {out.device_id} as a neighbour yet; seed v{out.version} goes out when they "
                      "announce their lists (a running agent sends it then)", markup=False)
    for device, why in out.skipped.items():
        console.print(f"  skipped {device}: {why}", markup=False)
    if out.unconfirmed:
        console.print(f"  not confirmed by the broker yet: {', '.join(out.unconfirmed)}", markup=False)
    if out.agent_running:
        console.print("  the running agent serves this seed version too (it watches models/seed.json)", markup=False)
