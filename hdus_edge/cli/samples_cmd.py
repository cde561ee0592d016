"""``hdus-edge forget-samples`` and ``hdus-edge train --add``: a new seed version from changed data.

Both retrain this device only (``learning/samples.py``), re-distil and export; the running agent
publishes the new version. ``forget-samples`` also retires every older version: neighbours delete
them, refuse them forever and answer with signed swap receipts, which this command collects and
keeps as evidence in ``<state-dir>/evidence/samples/<request>.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hdus_edge.cli.options import (
    BrokerOpt,
    JsonOpt,
    StateDirOpt,
    check_broker,
    open_state,
    waiting,
)
from hdus_edge.cli.output import console, print_json


def forget_samples(
    state_dir: StateDirOpt,
    ids: Annotated[Path | None, typer.Option(help="File of sample ids (JSON list, or one per line).")] = None,
    data: Annotated[Path | None, typer.Option(help="The samples themselves (.npz or a data folder); their ids are computed.")] = None,
    broker: BrokerOpt = "",
    wait: Annotated[float, typer.Option(min=0.0, help="Seconds to wait for every holder's swap receipt (0: do not wait).")] = 30.0,
    reason: Annotated[str, typer.Option(help="Why (kept in the signed retirement).")] = "right to be forgotten",
    json_out: JsonOpt = False,
) -> None:
    """Forget samples of this device: retrain without them, re-distil, export and retire the old seed.

    Every neighbour swaps to the new seed version, deletes the old one and refuses it forever, and
    answers with a signed receipt (saved as evidence). Unknown ids, ids the main model never saw, or
    a request that would leave no data change nothing. Exits 1 when a holder did not answer in time.

    Example: hdus-edge forget-samples --state-dir ./dev-1 --ids ./forget-me.txt
    """
    from hdus_edge.errors import ConfigError, UnlearnIncompleteError
    from hdus_edge.learning.samples import (
        forget_samples_step,
        ids_of_samples,
        read_ids_file,
    )
    from hdus_edge.unlearn.swap import collect_swap, save_swap_evidence

    check_broker(broker)
    if (ids is None) == (data is None):
        raise ConfigError("give exactly one of --ids FILE or --data FILE", hint="hdus-edge forget-samples --help")
    state = open_state(state_dir)
    wanted = read_ids_file(ids) if ids is not None else ids_of_samples(data)  # type: ignore[arg-type]
    began = time.monotonic()
    with waiting("retraining without the samples, re-distilling, exporting", enabled=not json_out):
        report = forget_samples_step(state, wanted, reason=reason)
    out: dict[str, Any] = report.to_json()
    outcome = None
    if state.agent_running() and wait > 0 and report.retired_sha256 is not None:
        device, fleet = state.device(), state.fleet()
        with waiting("waiting for every neighbour's swap receipt", enabled=not json_out):
            outcome = collect_swap(broker_url=broker or device.device.broker or fleet.fleet.broker,
                                   fleet=fleet.fleet.name, admin_key=state.admin_key(), owner=device.device.id,
                                   request_id=report.request_id, wait_s=wait, started_mono=began,
                                   own_certificate=state.certificate())
        path = save_swap_evidence(outcome, state.evidence_dir / "samples")
        out |= {"holders": list(outcome.holders), "receipts": [r.receipt.device_id for r in outcome.receipts],
                "missing": list(outcome.missing), "complete": outcome.complete,
                "seconds_to_last_receipt": outcome.last_receipt_s, "evidence_file": str(path)}
    if json_out:
        print_json(out)
    else:
        console.print(f"Forgot {report.samples_removed} samples of {report.device_id} ({report.samples_after} left); "
                      f"retrained shards {report.retrained_shards} of {report.shards}; seed v{report.seed_version} "
                      f"(sha256 {report.seed_sha256[:16]}...) retires v{report.seed_version - 1} and older",
                      markup=False)
        if outcome is not None:
            for r in outcome.receipts:
                console.print(f"  {r.receipt.device_id}: holds v{r.receipt.version}, deleted "
                              f"{(r.receipt.removed_sha256 or 'nothing')[:16]}", markup=False)
            console.print(f"Evidence: {out['evidence_file']}", markup=False)
        elif report.retired_sha256 is not None:
            console.print("The agent is not running: it publishes the retirement and the new seed when it starts.",
                          markup=False)
    if outcome is not None and not outcome.complete:
        raise UnlearnIncompleteError(
            f"no swap receipt within the wait from {', '.join(outcome.missing) or 'anyone (no retirement seen)'}",
            hint="they apply the retirement when they reconnect (it is retained on the broker)",
        )


def train_add(state_dir: Path, data: Path, json_out: bool) -> None:
    """``hdus-edge train --add DATA``: append samples, retrain, re-distil, export a new seed version."""
    from hdus_edge.learning.samples import add_samples_step

    state = open_state(state_dir)
    with waiting("retraining with the new samples, re-distilling, exporting", enabled=not json_out):
        report = add_samples_step(state, data)
    if json_out:
        print_json(report.to_json())
        return
    dropped = f" ({report.forgotten_dropped} forgotten before, left out)" if report.forgotten_dropped else ""
    console.print(f"Added {report.samples_added} samples{dropped} to {report.device_id} ({report.samples_after} in all); "
                  f"retrained shards {report.retrained_shards} of {report.shards}; exported seed v{report.seed_version}",
                  markup=False)
    console.print("Neighbours admit it if it passes their update gate (profile [update]); a running agent publishes it.",
                  markup=False)
