"""Re-admitting a forgotten device (``hdus-edge readmit``; no torch).

``readmit`` gives the device a fresh state dir with a new key and a certificate at the next epoch
(``state.readmit_device``), the fleet's reference set, and, when ``broker-config`` set the broker up,
new broker logins (created live through the dynamic-security plugin's control topic, with a new
password; on every broker of a bridged layout, where the device keeps its site) and a new TLS client
certificate from the fleet's CA, installed into the state dir. The
device then trains on fresh data and joins again. The revocation list keeps naming the old epochs,
so every old-epoch seed, order and certificate stays refused everywhere.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.admin.broker import (
    ADMIN_USER,
    device_logins,
    install_device_access,
    issue_client_bundle,
)
from hdus_edge.errors import TransportError
from hdus_edge.files import write_json
from hdus_edge.state import (
    AdminDir,
    StateDir,
    install_reference,
    read_json,
    readmit_device,
    user_device_id,
)
from hdus_edge.transport import dynsec
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.url import parse_broker_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readmitted:
    """A re-admitted device: its new state dir and epoch, and whether it got broker logins."""

    state: StateDir
    device_id: str
    epoch: int
    broker_url: str | None  # without the password; None when the broker has no logins to create

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "epoch": self.epoch, "state_dir": str(self.state.root),
                "broker_url": self.broker_url}


def readmit(admin: AdminDir, device_id: str, state_root: Path, *, profile: str | None = None,
            neighbors: tuple[str, ...] = (), timeout: float = 10.0) -> Readmitted:
    """Re-admit forgotten ``device_id`` into a new state dir at ``state_root`` (module doc)."""
    user_device_id(device_id)
    for n in neighbors:
        user_device_id(n, "neighbour id")
    state = readmit_device(admin, state_root, device_id, profile, neighbors=tuple(neighbors))
    install_reference(admin, state)
    epoch = state.certificate().epoch
    access = admin.broker_access()
    url = None
    if access is not None:
        url = _new_logins(admin, Path(access["broker_dir"]), device_id, state, timeout)
    logger.info("re-admitted %s at epoch %d into %s", device_id, epoch, state.root)
    return Readmitted(state, device_id, epoch, url)


def _new_logins(admin: AdminDir, broker_dir: Path, device_id: str, state: StateDir, timeout: float) -> str:
    fleet = admin.fleet().fleet.name
    password = secrets.token_urlsafe(18)
    creds_file = broker_dir / "credentials.json"
    creds = read_json(creds_file, "broker credentials")
    admin_url = parse_broker_url(creds[ADMIN_USER]["url"])
    # A re-admitted device keeps its site (bridged brokers); else it dials where the admin does.
    home = parse_broker_url(creds[device_id]["url"]) if isinstance(creds.get(device_id), dict) else admin_url
    url = f"{admin_url.scheme}://{device_id}:{password}@{home.host}:{home.port}"
    commands = [dynsec.delete_client(c.username) for c in device_logins(fleet, device_id, password)]
    commands += [dynsec.create_client(c) for c in device_logins(fleet, device_id, password)]
    # The logins first: the broker must accept the device before it holds anything that names it.
    # Every broker of a bridged layout: the plugin's control topic is not bridged.
    errors: list[str] = []
    for broker in admin.broker_urls():
        errors += [e for e in _control(admin, broker, commands, timeout) if not e.startswith("deleteClient")]
    if errors:
        raise TransportError(f"the broker refused the new logins of {device_id!r}: {'; '.join(errors)}")
    creds[device_id] = {**creds.get(device_id, {}), "user": device_id, "password": password, "url": url}
    write_json(creds_file, creds, mode=0o600)
    if (broker_dir / "tls" / "ca.key").exists():
        issue_client_bundle(broker_dir, device_id)
    install_device_access(broker_dir, device_id, state)
    return str(parse_broker_url(url))


def _control(admin: AdminDir, broker_url: str, commands: list[dict], timeout: float) -> list[str]:
    """Send dynamic-security ``commands`` to one broker as the admin; the errors it answers."""
    answers: list[bytes] = []
    answered = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        answers.append(payload)
        answered.set()

    transport = MqttTransport(broker_url, f"admin-readmit-{uuid.uuid4().hex[:12]}", handler=on_message,
                              clean_session=True, tls=TlsFiles.for_url(broker_url, admin.tls_dir))
    try:
        transport.subscribe(dynsec.RESPONSE_TOPIC)
        transport.connect(timeout=timeout)
        transport.publish(dynsec.CONTROL_TOPIC, dynsec.command_payload(commands), wait=True, timeout=timeout)
        if not answered.wait(timeout):
            raise TransportError("the broker's dynamic-security plugin did not answer the new logins",
                                 hint="is the broker running the config 'hdus-edge broker-config' wrote?")
    finally:
        transport.close()
    return dynsec.response_errors(answers[0])
