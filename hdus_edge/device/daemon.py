"""Run a device's agent as a long-lived process until SIGINT or SIGTERM (never imports torch).

The one entry point behind ``hdus-edge agent``, the systemd unit (``hdus-edge service install``), the
reliability suite's forked agents and the fleet launcher: it loads the state dir, refuses to start a
device that has no exported models, starts the agent and, when asked, its HTTP API
(``hdus_edge.device.http_api``), announces readiness (a ready file, and ``READY=1`` to systemd when
``NOTIFY_SOCKET`` is set), and stops cleanly on a signal so that the durable outbox and the store are
left consistent. A device that was forgotten (now, or before a restart: its store remembers) stops
with ``DeviceForgottenError``, the CLI's one error line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hdus_edge.device.agent import DeviceAgent, require_exported, settings_for
from hdus_edge.errors import DeviceForgottenError
from hdus_edge.state import StateDir

if TYPE_CHECKING:
    from hdus_edge.device.http_api import InferenceServer

logger = logging.getLogger(__name__)


def run_agent(
    state_dir: Path,
    *,
    broker: str = "",
    probe_in_subprocess: bool = True,
    digest_interval_s: float = 30.0,
    ready_file: Path | None = None,
    http: str = "",
    on_ready: Callable[[DeviceAgent, InferenceServer | None], None] | None = None,
) -> None:
    """Run the agent of ``state_dir`` until SIGINT/SIGTERM; ``on_ready`` is called once it is running.

    ``http`` (``HOST:PORT``, ``:PORT`` or ``PORT``; loopback unless a host is given) serves the
    inference API and ``/metrics``; empty serves nothing. Readiness (ready file, sd_notify) is
    announced only once the API is listening too, so a unit ordered after this one can call it.
    """
    _limit_malloc_arenas()
    state = StateDir(state_dir)
    state.check()
    require_exported(state)
    address = None
    if http:
        from hdus_edge.config import parse_http_address

        address = parse_http_address(http)  # a bad address fails before anything starts
    settings = replace(settings_for(state), probe_in_subprocess=probe_in_subprocess, digest_interval_s=digest_interval_s)
    agent = DeviceAgent.from_state_dir(state, broker_url=broker or None, settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    try:
        agent.start()
        if address is not None:
            server = _serve(agent, state, address)
    except BaseException:
        agent.stop()
        raise
    try:
        if ready_file is not None:
            Path(ready_file).write_text(str(os.getpid()))
        sd_notify("READY=1")
        if on_ready is not None:
            on_ready(agent, server)
        generation = -1
        while not stop.wait(0.5):
            if agent.forgotten:
                break
            if agent.runtime.generation != generation:  # the ensemble was rebuilt: old sessions are gone
                generation = agent.runtime.generation
                _return_free_memory()
        sd_notify("STOPPING=1")
    finally:
        if server is not None:
            server.stop()
        agent.stop()
    if agent.forgotten:
        raise DeviceForgottenError(
            f"device {agent.device_id!r} was forgotten by an unlearn order; its agent stopped and publishes "
            "nothing until it is re-admitted"
        )


def _serve(agent: DeviceAgent, state: StateDir, address: tuple[str, int]) -> InferenceServer:
    from hdus_edge.device.http_api import ApiLimits, InferenceServer
    from hdus_edge.device.metrics import AgentMetrics

    api = state.profile().api
    limits = ApiLimits(max_body_bytes=api.max_body_bytes, max_batch=api.max_batch, max_connections=api.max_connections)
    return InferenceServer(lambda: agent.runtime, AgentMetrics(agent.observe), address, ready=lambda: agent.ready,
                           limits=limits, server_name=f"hdus-edge/{agent.device_id}").start()


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def _limit_malloc_arenas() -> None:
    """At most 2 malloc arenas: glibc's default (8 per core) gives each of onnxruntime's, paho's and
    the API's threads its own heap, resident memory that MemoryMax counts (~1 MiB measured)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def _return_free_memory() -> None:
    """Hand the heap's free pages back to the OS after a rebuild freed the old snapshot's sessions."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd's ``NOTIFY_SOCKET``; False when unset or unreachable.

    The protocol is one datagram on a Unix socket (``@`` starts an abstract address), so no
    dependency is needed. A failure is logged, never raised: the agent runs without systemd too.
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    target = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", path, exc)
        return False
