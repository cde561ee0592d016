"""How a device's one-shot commands log in to the broker next to its running agent (no torch).

The broker binds every client id to one login (``hdus_edge.transport.dynsec``), and a second
connection with the agent's client id would take the agent's session over. So ``publish``,
``leave`` and ``receipts`` on a device use its companion login (``companion_login``: user
``<id>@cli``, client id ``<fleet>.<id>@cli``) and the TLS client certificate in ``keys/tls/``.
"""

from __future__ import annotations

from hdus_edge.state import StateDir
from hdus_edge.transport.mqtt import TlsFiles
from hdus_edge.transport.url import BrokerURL, companion_login, parse_broker_url


def command_login(state: StateDir, broker_url: str | None = None) -> tuple[BrokerURL, str, TlsFiles | None]:
    """(broker URL, client id, TLS files) for a one-shot command of the device at ``state``."""
    device = state.device()
    fleet = state.fleet()
    url = parse_broker_url(broker_url or device.device.broker or fleet.fleet.broker)
    login, client_id = companion_login(url, f"{fleet.fleet.name}.{device.device.id}")
    return login, client_id, TlsFiles.for_url(login, state.tls_dir)
