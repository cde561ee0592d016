"""Read the admin's side of the fleet view from disk: ``devices.json``, evidence files, agents' status files.

Read again for every snapshot (the files are small and written atomically, so a reader sees the old
file or the new one). A file that cannot be read becomes a line in ``AdminView.problems`` and the page
still renders: the dashboard never dies of a corrupt file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hdus_edge.dashboard.fleet_view import AdminView
from hdus_edge.errors import HdusError
from hdus_edge.protocol.crypto import VerifyKey
from hdus_edge.protocol.fields import is_device_id
from hdus_edge.state import AdminDir, StateDir, read_json

logger = logging.getLogger(__name__)

MAX_EVIDENCE_FILES = 500  # the newest ones; an admin dir of years of requests still renders fast


def read_admin_view(admin: AdminDir, fleet: str, admin_key: VerifyKey, state_dirs: Sequence[Path] = ()) -> AdminView:
    """The registry, the newest evidence files and the given devices' ``status.json``, as an ``AdminView``."""
    problems: list[str] = []
    try:
        registry: dict[str, Any] = admin.registry()
    except HdusError as exc:
        problems.append(exc.message)
        registry = {}
    for bad in sorted(str(k) for k in registry if not is_device_id(k)):
        problems.append(f"device registry {admin.registry_file} names an invalid device id {bad[:80]!r}")
    registry = {k: v for k, v in registry.items() if is_device_id(k)}
    evidence = []
    folder = admin.evidence_dir
    paths = sorted(folder.glob("*.json"), key=_mtime)[-MAX_EVIDENCE_FILES:] if folder.is_dir() else []
    for path in paths:
        try:
            data = read_json(path, "evidence")
        except HdusError as exc:
            problems.append(exc.message)
            continue
        if isinstance(data, dict):
            evidence.append({**data, "file": str(path)})
        else:
            problems.append(f"evidence {path} is not a JSON object")
    status: dict[str, Any] = {}
    for root in state_dirs:
        state = StateDir(Path(root))
        try:
            data = state.read_status()
        except HdusError as exc:
            problems.append(exc.message)
            continue
        if data is not None and isinstance(data.get("device_id"), str):
            status[data["device_id"]] = data
    return AdminView(fleet, admin_key, registry, tuple(evidence), status, tuple(problems))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
