"""Forgetting from the command line: ``leave`` (a device), ``unlearn`` (the admin), ``receipts`` (no torch).

Thin over ``hdus_edge.unlearn.request``: these pick the signer, the broker and the epoch from a state dir
or an admin dir, refuse targets the fleet never provisioned, and keep every request's evidence as
``<dir>/evidence/<request_id>.json``. ``receipts_report`` merges the receipts the broker still holds
(verified against the fleet admin's key) with those in saved evidence (verified offline);
``audit_evidence`` is what ``hdus-edge verify`` shows an auditor holding only the admin's public key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.device.login import command_login
from hdus_edge.errors import ConfigError, StateDirError
from hdus_edge.files import write_json
from hdus_edge.protocol.crypto import VerifyKey
from hdus_edge.protocol.fields import check_request_id
from hdus_edge.state import AdminDir, StateDir, read_json, user_device_id
from hdus_edge.transport.mqtt import TlsFiles
from hdus_edge.transport.url import BrokerURL
from hdus_edge.unlearn.request import (
    UnlearnOutcome,
    check_evidence,
    collect_receipts,
    read_evidence,
    request_unlearn,
    save_evidence,
)

logger = logging.getLogger(__name__)


def leave(state: StateDir, *, broker_url: str | None = None, wait_s: float = 30.0,
          reason: str = "device asked to be forgotten") -> tuple[UnlearnOutcome, Path]:
    """The device asks to be forgotten: an order signed with its own key; evidence in its state dir."""
    device = state.device()
    fleet = state.fleet()
    cert = state.certificate()
    url, client_id, tls = command_login(state, broker_url)
    outcome = request_unlearn(
        broker_url=url, fleet=fleet.fleet.name,
        admin_key=state.admin_key(), signer=state.key(), issuer=device.device.id, target=device.device.id,
        epoch=cert.epoch, reason=reason, wait_s=wait_s, own_certificate=cert,
        tls=tls, client_id=client_id,
    )
    path = save_evidence(outcome, state.evidence_dir / f"{outcome.order.request_id}.json")
    return outcome, path


def unlearn(admin: AdminDir, target: str, *, broker_url: str | None = None, wait_s: float = 30.0,
            reason: str = "ordered by the fleet admin") -> tuple[UnlearnOutcome, Path]:
    """The admin orders ``target`` forgotten (it must be in ``devices.json``); evidence in the admin dir."""
    fleet = admin.fleet()
    user_device_id(target, "target device id")
    registry = admin.registry()
    if target not in registry:
        known = ", ".join(sorted(registry)) or "none yet"
        raise ConfigError(f"device {target!r} is not provisioned in fleet '{fleet.fleet.name}'",
                          hint=f"provisioned devices: {known}")
    key = admin.key()
    url = broker_url or admin.broker_url()
    outcome = request_unlearn(
        broker_url=url, fleet=fleet.fleet.name, admin_key=key.public_key, signer=key,
        issuer="admin", target=target, epoch=int(registry[target].get("epoch", 0)), reason=reason, wait_s=wait_s,
        tls=TlsFiles.for_url(url, admin.tls_dir),
        expected=expected_holders(registry),
    )
    path = save_evidence(outcome, admin.evidence_dir / f"{outcome.order.request_id}.json")
    registry = admin.registry()
    registry[target] = {**registry[target], "unlearned": outcome.order.request_id}
    write_json(admin.registry_file, registry)
    return outcome, path


def expected_holders(registry: dict[str, dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Every provisioned device not forgotten, with its provisioned neighbours (the registry's view).

    Forgotten: ordered forgotten (``unlearned``) or revoked at the broker (``forgotten``); a device
    re-admitted since has a fresh entry with neither.
    """
    return {device_id: tuple(entry.get("neighbors", ())) for device_id, entry in registry.items()
            if not entry.get("unlearned") and not entry.get("forgotten")}


@dataclass(frozen=True)
class ReceiptSource:
    """Where ``receipts`` looks: the fleet, its admin key, a broker and folders of evidence files."""

    fleet: str
    admin_key: VerifyKey
    broker_url: str | BrokerURL
    evidence_dirs: tuple[Path, ...]
    tls_dir: Path | None = None
    client_id: str | None = None


def source_of(state: StateDir | None, admin: AdminDir | None, broker_url: str | None) -> ReceiptSource:
    """The receipt source of a device (its state dir) or of the admin (the admin dir)."""
    if admin is not None:
        fleet = admin.fleet()
        return ReceiptSource(fleet.fleet.name, admin.key().public_key, broker_url or admin.broker_url(), (admin.evidence_dir,),
                             admin.tls_dir)
    if state is None:
        raise ConfigError("receipts needs --state-dir or --admin-dir", hint="or set HDUS_STATE_DIR / HDUS_ADMIN_DIR")
    url, client_id, _ = command_login(state, broker_url)
    return ReceiptSource(state.fleet().fleet.name, state.admin_key(), url, (state.evidence_dir,),
                         state.tls_dir, client_id)


def receipts_report(source: ReceiptSource, request_id: str, *, wait_s: float = 2.0, use_broker: bool = True) -> dict[str, Any]:
    """Every receipt known for ``request_id``: from the broker (retained) and from saved evidence.

    Each receipt row says where it was found and that its signature verified (rows that do not
    verify are listed under ``problems``, never as receipts).
    """
    try:
        check_request_id(request_id)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid request id {request_id!r}: {exc}") from None
    evidence, ev_path = _find_evidence(source, request_id)
    rows: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    released: list[str] = []
    if evidence is not None:
        check = check_evidence(evidence, source.admin_key, source.fleet)
        problems += check.problems
        released = list(check.released)
        bad = {p.split("'")[1] for p in problems if p.startswith("receipt of '")}
        for r in evidence.get("receipts", []):
            if r["device_id"] not in bad:
                rows[r["device_id"]] = {"device_id": r["device_id"], "removed_sha256": r["removed_sha256"],
                                        "held": r["removed_sha256"] is not None, "members_after": r["members_after"],
                                        "at": r["at"], "sources": ["evidence"]}
    target = evidence.get("target") if evidence else None
    if use_broker:
        for device_id, rec in collect_receipts(broker_url=source.broker_url, fleet=source.fleet,
                                               admin_key=source.admin_key, request_id=request_id, wait_s=wait_s,
                                               tls=TlsFiles.for_url(source.broker_url, source.tls_dir) if source.tls_dir else None,
                                               client_id=source.client_id).items():
            row = rows.setdefault(device_id, {**_row(rec.to_json()), "sources": []})
            row["sources"].append("broker")
            target = target or rec.receipt.target  # every receipt names what it answers
    holders = list(evidence.get("holders", [])) if evidence else []
    return {
        "request_id": request_id,
        "target": target,
        "issuer": evidence.get("issuer") if evidence else None,
        "evidence_file": str(ev_path) if ev_path else None,
        "holders": holders,
        "receipts": [rows[d] for d in sorted(rows)],
        "released": released,  # forgotten themselves meanwhile: no receipt owed
        "missing": [h for h in holders if h not in rows and h not in released],
        "problems": problems,
        "verified": not problems,
    }


def list_requests(source: ReceiptSource) -> list[dict[str, Any]]:
    """The requests with saved evidence (newest last)."""
    from hdus_edge.device.view import evidence_summaries

    out: list[dict[str, Any]] = []
    for folder in source.evidence_dirs:
        out += evidence_summaries(folder)
    return sorted(out, key=lambda e: e["issued_at"])


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("device_id", "removed_sha256", "held", "members_after", "at")}


def _find_evidence(source: ReceiptSource, request_id: str) -> tuple[dict[str, Any] | None, Path | None]:
    for folder in source.evidence_dirs:
        path = folder / f"{request_id}.json"
        if path.exists():
            data = read_json(path, "evidence")
            if not isinstance(data, dict):
                raise StateDirError(f"evidence {path} is corrupt: not an object")
            return data, path
    return None, None


def audit_evidence(path: Path, admin_key: VerifyKey, fleet: str | None = None) -> dict[str, Any]:
    """What a saved evidence file proves, offline, trusting only the fleet admin's public key.

    Every field reported comes from signed content that verified (the order, and each receipt:
    who, when, which seed hash it deleted, its ensemble's members after); summary fields of the file
    are only compared with it. ``verified``: no problem; ``complete``: every holder the requester
    listed sent a verified receipt or was itself forgotten meanwhile by a verified order carried in
    the file (the holder list is the requester's view, not signed by devices).
    """
    evidence = read_evidence(path)
    check = check_evidence(evidence, admin_key, fleet)
    order = check.order
    holders = [h for h in evidence.get("holders", []) if isinstance(h, str)]
    got = {r.device_id for r in check.receipts} | set(check.released)
    return {
        "file": str(path),
        "fleet": fleet or evidence.get("fleet"),
        "verified": check.verified,
        "complete": check.verified and all(h in got for h in holders),
        "request_id": order.request_id if order else None,
        "target": order.target if order else None,
        "issuer": order.issuer if order else None,
        "issued_at": order.issued_at if order else None,
        "reason": order.reason if order else None,
        "holders": holders,
        "missing": [h for h in holders if h not in got],
        "receipts": [{"device_id": r.device_id, "at": r.at, "removed_sha256": r.removed_sha256,
                      "held": r.removed_sha256 is not None, "members_after": list(r.members_after)}
                     for r in check.receipts],
        "released": list(check.released),  # forgotten themselves meanwhile, by a signed order in the file
        "problems": check.problems,
    }
