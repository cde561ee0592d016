"""Run a device's agent as a long-lived process until SIGINT or SIGTERM (never imports torch).

The one entry point behind ``hdus-edge agent``, the reliability suite's forked agents and the
fleet launcher: it loads the state dir, refuses to start a device that has no exported models,
starts the agent, announces readiness (a ready file), and stops the agent cleanly on a signal so
that the durable outbox and the store are left consistent. A device that was forgotten (now, or
before a restart: its store remembers) stops with ``DeviceForgottenError``, the CLI's one error line.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hdus_edge.device.agent import DeviceAgent, require_exported, settings_for
from hdus_edge.errors import DeviceForgottenError
from hdus_edge.state import StateDir


def run_agent(
    state_dir: Path,
    *,
    broker: str = "",
    probe_in_subprocess: bool = True,
    digest_interval_s: float = 30.0,
    ready_file: Path | None = None,
    on_ready: Callable[[DeviceAgent], None] | None = None,
) -> None:
    """Run the agent of ``state_dir`` until SIGINT/SIGTERM; ``on_ready`` is called once it is running."""
    state = StateDir(state_dir)
    state.check()
    require_exported(state)
    settings = replace(settings_for(state), probe_in_subprocess=probe_in_subprocess, digest_interval_s=digest_interval_s)
    agent = DeviceAgent.from_state_dir(state, broker_url=broker or None, settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.start()
    except BaseException:
        agent.stop()
        raise
    try:
        if ready_file is not None:
            Path(ready_file).write_text(str(os.getpid()))
        if on_ready is not None:
            on_ready(agent)
        while not stop.wait(0.5):
            if agent.forgotten:
                break
    finally:
        agent.stop()
    if agent.forgotten:
        raise DeviceForgottenError(
            f"device {agent.device_id!r} was forgotten by an unlearn order; its agent stopped and publishes "
            "nothing until it is re-admitted"
        )
