"""``hdus-edge dashboard``: serve the fleet admin's live, read-only web view of the fleet."""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.options import (
    AdminDirOpt,
    BrokerOpt,
    JsonOpt,
    check_broker,
    open_admin,
)
from hdus_edge.cli.output import console, print_json


def dashboard(
    admin_dir: AdminDirOpt,
    broker: BrokerOpt = "",
    listen: Annotated[str, typer.Option(
        help="HOST:PORT to serve on (port 0: any free port). Loopback by default.")] = "127.0.0.1:8080",
    token: Annotated[str | None, typer.Option(
        help="Access token the page and API require (generated and printed when listening beyond loopback).")] = None,
    state_dir: Annotated[list[Path] | None, typer.Option(
        "--state-dir", help="A device state dir on this machine whose agent counters to show (repeatable).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Serve a live web page of the fleet: devices, neighbour graph, unlearn requests and receipts, rejections.

    Built from the broker's retained messages (each verified with the fleet admin's public key) and the
    admin's devices.json and evidence files; changes reach the open page within a second. Read-only: it
    needs no private key and publishes nothing. /api/fleet.json gives the same data. Runs until Ctrl-C.
    On a broker with an ACL, pass --broker with the admin's credentials ('hdus-edge broker-config' writes them).
    With --json, prints {"url", "api", "token", "fleet", "broker"} once it serves.

    Example: hdus-edge dashboard --admin-dir ./admin --listen 127.0.0.1:8080
    """
    from hdus_edge.dashboard.server import is_loopback, parse_listen
    from hdus_edge.dashboard.service import Dashboard

    check_broker(broker)
    admin = open_admin(admin_dir)
    host, port = parse_listen(listen)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    service = Dashboard(admin, broker_url=broker or None, host=host, port=port, token=token,
                        state_dirs=tuple(state_dir or ()))
    stop = threading.Event()
    service.start()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if json_out:
            api = service.url.replace("/?", "/api/fleet.json?") if token else service.url + "api/fleet.json"
            print_json({"url": service.url, "api": api, "token": token, "fleet": service.fleet, "broker": service.mirror.url})
        else:
            console.print(f"fleet {service.fleet}: dashboard on {service.url}  (Ctrl-C to stop)", markup=False, soft_wrap=True)
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        service.stop()
