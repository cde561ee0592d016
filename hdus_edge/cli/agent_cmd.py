"""``hdus-edge agent``: run a device's daemon until interrupted (never imports torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.output import err_console

StateDirOpt = Annotated[
    Path,
    typer.Option("--state-dir", envvar="HDUS_STATE_DIR", help="The device's state directory (or $HDUS_STATE_DIR)."),
]


def agent(
    state_dir: StateDirOpt,
    broker: Annotated[str, typer.Option(help="Broker URL; default: the device's or the fleet's.")] = "",
    no_probe_subprocess: Annotated[bool, typer.Option("--no-probe-subprocess", help="Probe seeds in-process (faster, less isolated).")] = False,
    digest_interval: Annotated[float, typer.Option(help="Seconds between tombstone digests.")] = 30.0,
    ready_file: Annotated[Path | None, typer.Option(help="Touch this file once the agent is ready.")] = None,
    http: Annotated[str, typer.Option(
        help="Serve the ensemble (Open Inference Protocol, KServe v2) and /metrics on HOST:PORT; "
             "a bare PORT listens on loopback. Off unless given.")] = "",
) -> None:
    """Run the device agent: exchange seeds, keep the ensemble current, apply unlearn orders.

    Example: hdus-edge agent --state-dir ./dev-1 --http 127.0.0.1:8000
    """
    from hdus_edge.device.daemon import run_agent

    run_agent(
        state_dir,
        broker=broker,
        probe_in_subprocess=not no_probe_subprocess,
        digest_interval_s=digest_interval,
        ready_file=ready_file,
        http=http,
        on_ready=lambda a, server: err_console.print(
            f"agent {a.device_id} running: {len(a.members())} seeds in the ensemble"
            + (f"; inference API at {server.url}/v2/models/ensemble, metrics at {server.url}/metrics" if server else "")
            + "; Ctrl-C stops it"
        ),
    )
