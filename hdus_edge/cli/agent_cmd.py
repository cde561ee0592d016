"""``hdus-edge agent``: run a device's daemon until interrupted (never imports torch)."""

from __future__ import annotations

import os
import signal
import threading
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
) -> None:
    """Run the device agent: exchange seeds, keep the ensemble current, apply unlearn orders.

    Example: hdus-edge agent --state-dir ./dev-1
    """
    from dataclasses import replace

    from hdus_edge.agent import DeviceAgent, require_exported, settings_for
    from hdus_edge.state import StateDir

    state = StateDir(state_dir)
    state.check()
    require_exported(state)
    settings = replace(settings_for(state), probe_in_subprocess=not no_probe_subprocess, digest_interval_s=digest_interval)
    agent_ = DeviceAgent.from_state_dir(state, broker_url=broker or None, settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent_.start()
    except BaseException:
        agent_.stop()
        raise
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    err_console.print(f"agent {agent_.device_id} running: {len(agent_.members())} seeds in the ensemble; Ctrl-C stops it")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        agent_.stop()
