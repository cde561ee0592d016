"""The agent as a systemd service: a hardened unit rendered from the device's profile (``hdus-edge service``).

``render_unit`` is pure; ``install`` / ``uninstall`` write or remove the unit file (and nothing else:
``systemctl daemon-reload`` and ``enable --now`` stay the operator's step, printed as a hint, so the
command works in an image build or a container without a running systemd). The unit:

- runs ``python -m hdus_edge agent --state-dir DIR [--http ADDR]`` with the interpreter that installed
  it (the environment hdus-edge lives in: put it where the service user can read it, e.g. a venv under
  /opt, since ``ProtectHome=read-only`` and home directories' modes apply), ``Type=notify`` (the agent
  sends ``READY=1`` once it and its API are up), ``Restart=on-failure``;
- as an unprivileged user (a system unit refuses to run as root), with ``NoNewPrivileges``,
  ``ProtectSystem=strict`` and ``ReadWritePaths=`` the state dir only, no capabilities, private
  /tmp and devices, kernel and control-group settings read-only, IP and Unix sockets only;
- ``MemoryMax=`` the profile's ``limits.memory_budget_mb`` and the API address from its ``api.http``.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hdus_edge.errors import ConfigError
from hdus_edge.files import atomic_write
from hdus_edge.state import StateDir

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
_UNSAFE_PATH = re.compile(r"[\s\"'\\$;]")


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit says."""

    device_id: str
    fleet: str
    state_dir: Path  # absolute
    python: str  # absolute path of the interpreter
    http: str  # HOST:PORT, or "" for no API
    memory_max_mb: int
    user: str | None  # the system unit's User=; None for a user unit
    user_unit: bool


def unit_name(device_id: str) -> str:
    """``hdus-edge-<device>.service`` (device ids are already [A-Za-z0-9._-])."""
    return f"hdus-edge-{device_id}.service"


def unit_dir(user_unit: bool) -> Path:
    """Where systemd looks for units: /etc/systemd/system, or the user's ~/.config/systemd/user."""
    if not user_unit:
        return SYSTEM_UNIT_DIR
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _systemd_path(path: str, what: str) -> str:
    """A path as a unit file may hold it: absolute, no quoting needed, ``%`` escaped."""
    if not path.startswith("/") or _UNSAFE_PATH.search(path):
        raise ConfigError(f"{what} {path!r} cannot go into a systemd unit as it is",
                          hint="use an absolute path without spaces, quotes, '$', ';' or backslashes")
    return path.replace("%", "%%")


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text."""
    state = _systemd_path(str(spec.state_dir), "the state dir")
    python = _systemd_path(spec.python, "the Python interpreter")
    command = f"{python} -m hdus_edge agent --state-dir {state}"
    if spec.http:
        command += f" --http {spec.http}"
    lines = [
        "# Written by 'hdus-edge service install'; 'hdus-edge service uninstall' removes it.",
        "[Unit]",
        f"Description=hdus-edge agent of device {spec.device_id} (fleet {spec.fleet})",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
        f"WorkingDirectory={state}",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if spec.user is not None:
        lines.append(f"User={spec.user}")
    lines += [
        "UMask=0077",
        f"MemoryMax={spec.memory_max_mb}M",
        "TasksMax=256",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={state}",
        "ProtectHome=read-only",
    ]
    # A private /tmp would hide a state dir that lives under /tmp or /var/tmp.
    if not any(spec.state_dir.is_relative_to(t) for t in (Path("/tmp"), Path("/var/tmp"))):
        lines.append("PrivateTmp=yes")
    lines += [
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.user_unit else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def spec_for(state: StateDir, *, user_unit: bool, run_as: str | None = None, http: str | None = None,
             python: str | None = None) -> UnitSpec:
    """The unit of the device at ``state``: the profile's memory budget and API address.

    A system unit runs as ``run_as``, else as the state dir's owner; never as root (``ConfigError``).
    ``http`` overrides the profile's ``api.http`` ("" serves no API).
    """
    from hdus_edge.config import parse_http_address

    device = state.device()
    profile = state.profile()
    address = profile.api.http if http is None else http
    if address:
        host, port = parse_http_address(address)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    user = None
    if not user_unit:
        user = run_as or pwd.getpwuid(state.root.stat().st_uid).pw_name
        if user == "root" or user == "0":
            raise ConfigError("the agent's service must not run as root",
                              hint="give --run-as USER (e.g. 'useradd --system hdus') and chown the state dir to it")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
            raise ConfigError(f"{user!r} is not a valid user name for a unit")
    return UnitSpec(device.device.id, state.fleet().fleet.name, state.root.resolve(), python or sys.executable,
                    address, profile.limits.memory_budget_mb, user, user_unit)


def install(spec: UnitSpec, directory: Path | None = None) -> Path:
    """Write the unit file (atomically, 0644); returns its path."""
    target_dir = directory or unit_dir(spec.user_unit)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / unit_name(spec.device_id)
    atomic_write(path, render_unit(spec).encode(), mode=0o644)
    return path


def uninstall(device_id: str, *, user_unit: bool, directory: Path | None = None) -> Path | None:
    """Remove the device's unit file; the path removed, or None when there was none."""
    path = (directory or unit_dir(user_unit)) / unit_name(device_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
