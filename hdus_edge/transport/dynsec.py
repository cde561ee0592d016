"""Mosquitto's dynamic-security plugin: its JSON file, its password hashes, its control commands.

Why this plugin and not regenerated ``password_file``/``acl_file`` + SIGHUP (measured on Debian's
Mosquitto 2.0.11, ``tests/test_broker_trust.py``):

- **Client ids bound to user names.** A password file cannot bind them: any device's password with
  another device's client id is accepted and takes the other's session over (kick, and with a clean
  session its queued messages and subscriptions are wiped). A dynamic-security client with a
  ``clientid`` logs in only with that exact client id; a refused CONNECT never touches the session.
- **Revocation takes effect at once.** ``deleteClient`` on the control topic refuses the next login
  *and* disconnects the client now; the plugin saves its file itself, with no restart or SIGHUP
  (a reloaded password file leaves an open connection open).
- It is in Debian's ``mosquitto`` package (``mosquitto_dynamic_security.so``); nothing to build.

One caveat found on the real broker: with ``use_identity_as_username`` Mosquitto skips the
authentication plugins, so a device's certificate with another's client id was accepted and kicked
it. The TLS listener therefore requires a client certificate (transport security, and only holders
of a certificate from the fleet's CA get a TLS session) *and* a user name and password checked here.

Pure except ``write_file``; no knowledge of hdus topics (``hdus_edge.admin.broker`` builds the roles).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN_NAMES = ("mosquitto_dynamic_security.so",)
_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
                "/usr/lib/mosquitto", "/usr/local/lib", "/opt/homebrew/lib")
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
ITERATIONS = 101  # the plugin's own default for mosquitto_ctrl-made hashes
SALT_BYTES = 12


@dataclass(frozen=True)
class Acl:
    """One ACL entry of a role: ``acltype`` is publishClientSend, publishClientReceive, subscribePattern, ..."""

    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "priority": self.priority, "allow": self.allow}


@dataclass(frozen=True)
class Role:
    name: str
    acls: tuple[Acl, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rolename": self.name, "acls": [a.to_json() for a in self.acls]}


@dataclass(frozen=True)
class Client:
    """A login: user name, password, the one client id it may use (None: any), its roles."""

    username: str
    password: str = field(repr=False)
    clientid: str | None
    roles: tuple[str, ...]


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 (64 bytes), salt and hash base64-encoded."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return {"password": base64.b64encode(digest).decode("ascii"), "salt": base64.b64encode(salt).decode("ascii"),
            "iterations": iterations}


def render(clients: Sequence[Client], roles: Sequence[Role]) -> dict[str, Any]:
    """The plugin's JSON file. Defaults deny sending and subscribing: a login does only what its roles allow."""
    out_clients = []
    for c in clients:
        entry: dict[str, Any] = {"username": c.username, "roles": [{"rolename": r} for r in c.roles],
                                 **hash_password(c.password)}
        if c.clientid is not None:
            entry["clientid"] = c.clientid
        out_clients.append(entry)
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": out_clients,
        "groups": [],
        "roles": [r.to_json() for r in roles],
    }


def write_file(path: Path, clients: Sequence[Client], roles: Sequence[Role]) -> Path:
    """Write the plugin's file (mode 0600: it holds password hashes); Mosquitto rewrites it on changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(render(clients, roles), fh, indent=1)
    return path


def find_plugin() -> Path | None:
    """Where Mosquitto's dynamic-security plugin is installed, or None."""
    for folder in _PLUGIN_DIRS:
        for name in PLUGIN_NAMES:
            path = Path(folder) / name
            if path.is_file():
                return path
    return None


# --- control commands (published by a client whose role allows $CONTROL/dynamic-security/#) ---


def delete_client(username: str) -> dict[str, Any]:
    """Remove a login: refused from now on, and disconnected if connected."""
    return {"command": "deleteClient", "username": username}


def create_client(client: Client) -> dict[str, Any]:
    """Add a login with its password, bound client id and roles."""
    cmd: dict[str, Any] = {"command": "createClient", "username": client.username, "password": client.password,
                           "roles": [{"rolename": r} for r in client.roles]}
    if client.clientid is not None:
        cmd["clientid"] = client.clientid
    return cmd


def command_payload(commands: Sequence[dict[str, Any]]) -> bytes:
    """The bytes to publish on ``CONTROL_TOPIC``."""
    return json.dumps({"commands": list(commands)}).encode("utf-8")


def response_errors(payload: bytes) -> list[str]:
    """The errors in a response on ``RESPONSE_TOPIC`` (``command: error``); empty when every command held."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return ["unreadable response"]
    responses = data.get("responses") if isinstance(data, dict) else None
    if not isinstance(responses, list):
        return ["response has no 'responses' list"]
    return [f"{r.get('command')}: {r['error']}" for r in responses if isinstance(r, dict) and r.get("error")]
