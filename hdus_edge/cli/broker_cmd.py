"""``hdus-edge broker``: run the embedded MQTT broker (amqtt) in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def broker(
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for the LAN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on (1883 is MQTT's).", min=1, max=65535)] = 1883,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with the URL once ready.")] = False,
) -> None:
    """Run an MQTT 3.1.1 broker (anonymous, in memory) until Ctrl-C.

    For demos and small fleets on a trusted network; real fleets use Mosquitto or another broker
    with TLS and ACLs (see hdus_edge.transport.mosquitto).

    Example: hdus-edge broker --port 1883
    """
    from hdus_edge.cli.output import console, print_json
    from hdus_edge.transport.broker import run_forever

    def ready(url: str) -> None:
        if json_out:
            print_json({"url": url})
        else:
            console.print(f"broker listening on {url} (Ctrl-C to stop)")

    run_forever(host, port, on_ready=ready)
