"""``hdus-edge verify EVIDENCE.json --admin-pub KEY``: check saved evidence of forgetting offline.

Needs no broker, no state dir and no torch: only the evidence file and the fleet admin's public key.
Prints what each verified receipt attests; exits 0 when every signature verifies and every holder
answered, 1 otherwise (the reasons are printed, and ``--json`` lists them under ``problems``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.output import console, print_json


def verify(
    evidence: Annotated[Path, typer.Argument(dir_okay=False, help="Evidence file written by unlearn, leave, forget-samples or sim run.")],
    admin_pub: Annotated[str, typer.Option("--admin-pub", help="The fleet admin's public key: a file (hex or PEM) or 64 hex digits.")],
    fleet: Annotated[str | None, typer.Option(help="Fleet name (default: the one the evidence names).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Verify a saved evidence file (of an unlearn, or of forgotten samples) with only the fleet
    admin's public key.

    Example: hdus-edge verify hdus-report/evidence/REQUEST_ID.json --admin-pub hdus-report/evidence/admin.pub
    """
    from hdus_edge.errors import EvidenceRejectedError
    from hdus_edge.unlearn.commands import audit_evidence
    from hdus_edge.unlearn.request import read_evidence
    from hdus_edge.unlearn.swap import SWAP_KIND, audit_swap_evidence

    key = _admin_key(admin_pub)
    swap = read_evidence(evidence).get("kind") == SWAP_KIND
    report = audit_swap_evidence(evidence, key, fleet) if swap else audit_evidence(evidence, key, fleet)
    if json_out:
        print_json(report)
    elif swap:
        _print_swap(report)
    else:
        _print_human(report)
    if not report["verified"]:
        raise EvidenceRejectedError(f"{evidence}: {'; '.join(report['problems'])}")
    if not report["complete"]:
        raise EvidenceRejectedError(f"{evidence}: no verified receipt from {', '.join(report['missing'])}",
                                    hint="those holders did not attest the deletion; the evidence is incomplete")


def _admin_key(text: str) -> Any:
    from hdus_edge.errors import KeyFileError
    from hdus_edge.protocol.crypto import VerifyKey, load_verify_key

    if Path(text).is_file():
        return load_verify_key(Path(text))
    try:
        return VerifyKey.from_hex(text.strip())
    except ValueError:
        raise KeyFileError(f"--admin-pub {text!r} is neither a readable key file nor 64 hex digits") from None


def _print_human(report: dict[str, Any]) -> None:
    if report["request_id"]:
        when = dt.datetime.fromtimestamp(report["issued_at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        console.print(f"Request {report['request_id']} (fleet {report['fleet']}): forget {report['target']}, "
                      f"signed by {report['issuer']} at {when}: {report['reason']}", markup=False)
    table = Table(title="What each verified receipt attests")
    for col in ("device", "at (UTC)", "deleted seed sha256", "ensemble members after"):
        table.add_column(col, overflow="fold")  # an auditor compares whole hashes
    for r in report["receipts"]:
        table.add_row(r["device_id"], dt.datetime.fromtimestamp(r["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      r["removed_sha256"] or "held none", ", ".join(r["members_after"]) or "-")
    console.print(table)
    if report["released"]:
        console.print(f"forgotten themselves meanwhile (no receipt owed): {', '.join(report['released'])}", markup=False)
    if report["missing"]:
        console.print(f"missing receipts: {', '.join(report['missing'])}", markup=False)
    console.print("VERIFIED" if report["verified"] and report["complete"] else "REFUSED", markup=False)


def _print_swap(report: dict[str, Any]) -> None:
    if report["request_id"]:
        when = dt.datetime.fromtimestamp(report["issued_at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        console.print(f"Request {report['request_id']} (fleet {report['fleet']}): {report['owner']} retired "
                      f"{len(report['retired_sha256'])} seed version(s) below v{report['version']} "
                      f"(new {report['sha256']}), signed by {report['owner']} at {when}: {report['reason']}", markup=False)
    table = Table(title="What each verified swap receipt attests")
    for col in ("device", "at (UTC)", "holds version", "deleted seed sha256"):
        table.add_column(col, overflow="fold")
    for r in report["receipts"]:
        table.add_row(r["device_id"], dt.datetime.fromtimestamp(r["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      f"v{r['version']}", r["removed_sha256"] or "held none")
    console.print(table)
    if report["missing"]:
        console.print(f"missing receipts: {', '.join(report['missing'])}", markup=False)
    console.print("VERIFIED" if report["verified"] and report["complete"] else "REFUSED", markup=False)
