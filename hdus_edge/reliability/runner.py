"""``run_reliability``: every long case of the reliability suite, one dict of figures.

Two profiles. ``quick`` (``hdus-edge bench reliability --quick``, under 15 minutes on a 2-core
machine) runs every case at reduced size: 300 ONNX mutations, 200 SIGKILLs, load at 50x4, 50x8
and 100x8, a 2-minute soak. The full profile runs 1,000 mutations, 300 SIGKILLs, load at 50 and
100 devices x 4 and 8 neighbours, and a 10-minute soak. Every load fleet then takes the simultaneous
unlearn orders (10); load fleets run one process per agent (``cases_load``), the soak in this one.
Both run issue 14's insider cases: a forgotten device restarts; ~1 MB envelopes
from made-up senders (100 quick, 300 full) and a 10,000-message flood at agent processes (targets:
<= 20 MB more RSS, <= 1 s more receipt latency than a baseline order in the same run, counted in
``goals_missed``); a compute-heavy seed; 5,000 garbage messages at the audit log.
Every loss, violation, crash and false accept is a named count; ``totals`` adds them up (all must
be 0) and ``failed_checks`` lists which are not.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.reliability.brokers import BROKER_KINDS, Broker
from hdus_edge.reliability.cases_broker_trust import (
    forgotten_revoked,
    session_takeover,
    tls_only,
)
from hdus_edge.reliability.cases_crash import sigkill_campaign
from hdus_edge.reliability.cases_faults import (
    broker_crash_during_seeds,
    broker_crash_during_unlearn,
    duplicates_and_reordering,
    link_cut_during_flows,
    offline_past_queue_limit,
)
from hdus_edge.reliability.cases_hostile import (
    authority_matrix,
    envelope_campaign,
    onnx_campaign,
)
from hdus_edge.reliability.cases_insider import (
    audit_flood,
    forgotten_restart,
    heavy_seed,
    insider_flood,
    parking_flood,
)
from hdus_edge.reliability.cases_load import (
    propagation_load,
    simultaneous_unlearns,
    soak,
    stop_fleet,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Profile:
    """Sizes of one run (defaults: the full profile)."""

    name: str = "full"
    mutations: int = 1000
    envelope_flips_per_region: int = 16
    kills: int = 300
    load: tuple[tuple[int, int], ...] = ((50, 4), (50, 8), (100, 4), (100, 8))  # (devices, neighbours)
    # The load fleets that then take the simultaneous unlearns (empty: every one of ``load``).
    unlearn_fleets: tuple[tuple[int, int], ...] = ()
    simultaneous_unlearns: int = 10
    soak_s: float = 600.0
    seed: int = 0
    only: tuple[str, ...] = ()  # run just these cases (names of CASES); empty: all
    parking_flood_messages: int = 300  # ~1 MB envelopes from made-up senders (issue 14, attack 4)
    flood_messages: int = 10_000  # the goal's flood from one authenticated device


CASES = ("hostile_onnx", "envelopes", "authority", "broker_crash_seeds", "broker_crash_unlearn", "link_cut",
         "offline_past_queue", "duplicates", "sigkill", "insider_restart", "parking_flood", "heavy_seed",
         "audit_flood", "insider_flood", "load", "soak", "session_takeover", "forgotten_revoked", "tls_only")
# Quick keeps every case and the 200 kills; the 100-device fleets (about a quarter of the time on
# two cores) are the full profile's, so --quick stays under 15 minutes on a shared machine.
QUICK = Profile(name="quick", mutations=300, envelope_flips_per_region=8, kills=200,
                load=((50, 4), (50, 8)), soak_s=120.0, parking_flood_messages=100)
FULL = Profile()

# Every figure whose value must be 0, by (section, key). ``totals`` sums them per kind.
_MUST_BE_ZERO = {
    "false_accepts": [("hostile_onnx", "false_accepts"), ("envelopes", "false_accepts")],
    "parent_crashes": [("hostile_onnx", "parent_crashes")],
    "unhandled": [("hostile_onnx", "unhandled_no_reject_logged")],
    "takeovers": [("session_takeover", "accepted"), ("session_takeover", "victims_kicked"),
                  ("session_takeover", "victim_messages_lost")],
    "revocation_failures": [("forgotten_revoked", "forgotten_logins_accepted"),
                            ("forgotten_revoked", "order_cleared_by_target"),
                            ("forgotten_revoked", "forgotten_seeds_retained")],
    "plaintext_open": [("tls_only", "plaintext_listener_open"), ("tls_only", "tls_without_client_cert_accepted"),
                       ("tls_only", "non_loopback_plaintext_allowed")],
    "violations": [("heavy_seed", "heavy_installed"), ("heavy_seed", "order_waited_for_seed_work"),
                   ("authority", "violations"), ("duplicates", "invariant_violations"),
                   ("sigkill", "invariant_violations"), ("sigkill", "orphan_temp_files"),
                   ("soak", "invariant_violations"), ("unlearn_load", "store_violations")],
    "losses": [("unlearn_load", "not_applied"), ("unlearn_load", "missing_receipts"),
               ("broker_crash_seeds", "losses"), ("broker_crash_unlearn", "losses"), ("link_cut", "losses"),
               ("offline_past_queue", "losses"), ("sigkill", "missing_receipts_at_end"),
               ("sigkill", "forgotten_seeds_still_held_at_end")],
    "forgotten_came_back": [("insider_restart", "restarts_not_refused"), ("insider_restart", "retained_after_restart"),
                            ("insider_restart", "missed_order_not_applied"),
                            ("insider_restart", "missed_order_retained_after"),
                            ("broker_crash_unlearn", "forgotten_came_back"), ("link_cut", "forgotten_came_back"),
                            ("unlearn_load", "forgotten_came_back"), ("forgotten_revoked", "forgotten_came_back")],
    "messages_dropped": [("load", "messages_dropped")],
    "inference_errors": [("unlearn_load", "inference_errors")],
    # Issue 14's goals: one insider's flood raises no other agent's RSS by over 20 MB and delays
    # no unlearn receipt by over 1 s; every receipt still comes.
    "goals_missed": [("parking_flood", "over_target"), ("insider_flood", "rss_over_target"),
                     ("insider_flood", "delay_over_target"), ("insider_flood", "receipts_missing")],
}


def _rows(section: Any) -> list[dict[str, Any]]:
    return section if isinstance(section, list) else [section]


def run_reliability(profile: Profile = QUICK, progress: Progress | None = None,
                    workdir: Path | None = None) -> dict[str, Any]:
    """Run every case of ``profile``; return ``{"profile", "seconds", sections..., "totals", "failed_checks"}``."""
    say = progress or (lambda _: None)
    began = time.monotonic()
    result: dict[str, Any] = {"profile": profile.name}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> None:
        if profile.only and name not in profile.only:
            return
        say(name)
        t0 = time.monotonic()
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001  # one broken case must not hide the others' figures
            logger.exception("case %s failed", name)
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        timings[name] = time.monotonic() - t0

    with tempfile.TemporaryDirectory(prefix="hdus-reliability-") as tmp:
        root = Path(workdir or tmp)
        seed = profile.seed

        def on_mosquitto(sub: str, fn: Callable[[Broker], Any], kind: str = "mosquitto-memory", **options: object) -> Any:
            with Broker(kind, root / sub / "broker", **options) as broker:
                return fn(broker)

        timed("hostile_onnx", lambda: on_mosquitto("onnx", lambda b: onnx_campaign(
            root / "onnx", b.url, mutation_count=profile.mutations, seed=seed, progress=say)))
        timed("envelopes", lambda: on_mosquitto("env", lambda b: envelope_campaign(
            root / "env", b.url, flips_per_region=profile.envelope_flips_per_region, seed=seed)))
        timed("authority", lambda: _both_brokers(root / "auth", lambda url, sub: authority_matrix(sub, url)))
        # 60 s: amqtt 0.12 sometimes breaks a session in the reconnect storm after its restart; the
        # client notices by keepalive (30 s) and reconnects, which shows in time_to_recover_s.
        timed("broker_crash_seeds", lambda: [broker_crash_during_seeds(root / "bseeds" / k, k, seed=seed, timeout=60)
                                             for k in BROKER_KINDS])
        timed("broker_crash_unlearn", lambda: [broker_crash_during_unlearn(root / "bunl" / k, k, seed=seed, timeout=60)
                                               for k in BROKER_KINDS])
        timed("link_cut", lambda: _both_brokers(root / "cut", lambda url, sub: link_cut_during_flows(
            sub, url, cuts=5, seed=seed)))
        timed("offline_past_queue", lambda: [
            on_mosquitto("away-m", lambda b: offline_past_queue_limit(root / "away-m", b.url, flood=40),
                         max_queued_messages=10),
            _amqtt(lambda url: offline_past_queue_limit(root / "away-a", url, flood=40))])
        timed("duplicates", lambda: _both_brokers(root / "dups", lambda url, sub: duplicates_and_reordering(sub, url)))
        timed("session_takeover", lambda: session_takeover(root / "takeover"))
        timed("forgotten_revoked", lambda: forgotten_revoked(root / "revoked"))
        timed("tls_only", lambda: tls_only(root / "tls"))
        timed("sigkill", lambda: on_mosquitto("kill", lambda b: sigkill_campaign(
            root / "kill", b.url, kills=profile.kills, seed=seed, progress=say).summary()))
        # Issue 14: a forgotten device restarts; one insider floods, sends a heavy seed, fills the log.
        timed("insider_restart", lambda: on_mosquitto("forgot", lambda b: forgotten_restart(root / "forgot", b.url)))
        timed("parking_flood", lambda: on_mosquitto("park", lambda b: parking_flood(
            root / "park", b.url, messages=profile.parking_flood_messages)))
        timed("heavy_seed", lambda: on_mosquitto("heavy", lambda b: heavy_seed(root / "heavy", b.url)))
        timed("audit_flood", lambda: on_mosquitto("auditf", lambda b: audit_flood(root / "auditf", b.url)))
        timed("insider_flood", lambda: insider_flood(root / "flood", messages=profile.flood_messages))
        load_rows: list[dict[str, Any]] = []
        unlearn_rows: list[dict[str, Any]] = []

        def load_case() -> list[dict[str, Any]]:
            for n, d in profile.load:
                say(f"load {n} devices x {d} neighbours")
                with Broker("mosquitto-memory", root / f"load{n}x{d}" / "broker") as broker:
                    figures, fleet = propagation_load(root / f"load{n}x{d}", broker, n, d, seed=seed)
                    try:
                        if (n, d) in (profile.unlearn_fleets or profile.load):
                            say(f"{profile.simultaneous_unlearns} simultaneous unlearns, {n} devices")
                            u = simultaneous_unlearns(fleet, profile.simultaneous_unlearns, seed=seed)
                            unlearn_rows.append({"devices": n, "neighbours": d, **u})
                    finally:
                        figures["stop_all_s"] = stop_fleet(fleet)
                    figures["mosquitto_rss_mb_end"] = (broker.rss_bytes() or 0) / 2**20
                load_rows.append(figures)
            return load_rows

        # The soak first: its memory, descriptor and thread figures need a process that is not still
        # releasing a 100-device fleet.
        timed("soak", lambda: soak(root / "soak", profile.soak_s, seed=seed, progress=say))
        timed("load", load_case)
        if "load" in result:
            result["unlearn_load"] = unlearn_rows
    result["seconds"] = time.monotonic() - began
    result["case_seconds"] = timings
    return summarize(result)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Add ``totals`` (each kind of must-be-zero count, summed) and ``failed_checks`` to ``result``."""
    totals: dict[str, int] = {}
    failed: list[str] = []
    for kind, places in _MUST_BE_ZERO.items():
        total = 0
        for section, key in places:
            for row in _rows(result.get(section, {})):
                if "error" in row:
                    failed.append(f"{section}: {row['error']}")
                    continue
                value = row.get(key) or 0
                total += int(value)
                if value:
                    failed.append(f"{section}.{key} = {value}" + (f" ({row['broker']})" if "broker" in row else ""))
        totals[kind] = total
    result["totals"] = totals
    result["failed_checks"] = sorted(set(failed))
    return result


def _amqtt(fn: Callable[[str], Any]) -> Any:
    from hdus_edge.transport.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        return fn(broker.url)


def _both_brokers(root: Path, fn: Callable[[str, Path], dict[str, Any]]) -> list[dict[str, Any]]:
    """``fn(url, workdir)`` on a fresh amqtt broker and a fresh Mosquitto; rows tagged with the broker."""
    rows = [{"broker": "amqtt", **_amqtt(lambda url: fn(url, root / "amqtt"))}]
    with Broker("mosquitto-memory", root / "mosquitto" / "broker") as broker:
        rows.append({"broker": "mosquitto", **fn(broker.url, root / "mosquitto")})
    return rows



# --- the table ---------------------------------------------------------------------------------------

_TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hostile_onnx", "hostile ONNX at an agent process (probe in a child)",
     ("payloads", "rejected", "accepted_valid_mutations", "false_accepts", "unhandled_no_reject_logged",
      "parent_crashes", "time_to_reject_p50_ms", "time_to_reject_p95_ms", "time_to_reject_max_ms")),
    ("envelopes", "hostile envelopes (fields, types, sizes, bit flips)",
     ("mutants", "rejected", "parked_unknown_sender", "false_accepts", "state_changed")),
    ("authority", "authority matrix (signer x order)", ("cells", "violations", "uncertified_signer_parked")),
    ("broker_crash_seeds", "broker crashed during the seed exchange",
     ("time_to_recover_s", "duplicates_seen", "losses")),
    ("broker_crash_unlearn", "broker crashed during an unlearn (half the holders away)",
     ("time_to_recover_s", "order_to_all_forgotten_s", "duplicates_seen", "losses", "forgotten_came_back",
      "receipts_not_collectable")),
    ("link_cut", "links cut during QoS 1 flows (proxy)", ("cuts", "reconnects", "duplicates_seen", "losses",
                                                         "forgotten_came_back")),
    ("offline_past_queue", "away past the queue limit, order only in digests",
     ("flooded_messages", "return_to_forgotten_s", "losses")),
    ("duplicates", "duplicates and reordering", ("invariant_violations",)),
    ("sigkill", "agent SIGKILLed while writing seeds and unlearning",
     ("kills", "kills_before_ready", "kills_during_unlearn", "invariant_violations", "orphan_temp_files",
      "missing_receipts_at_end", "forgotten_seeds_still_held_at_end", "restart_to_ready_p50_s",
      "restart_to_ready_p95_s")),
    ("insider_restart", "a forgotten device restarts its agent",
     ("restarts", "restarts_refused", "restarts_not_refused", "retained_after_restart", "missed_order_not_applied",
      "missed_order_retained_after")),
    ("parking_flood", "~1 MB envelopes from made-up senders (agent processes)",
     ("messages", "message_kb", "rss_mb_before", "rss_mb_after", "rss_growth_mb_max", "parked_now_max",
      "parked_mb_now_max", "parked_dropped_min", "over_target")),
    ("heavy_seed", "compute-heavy seed from a certified neighbour",
     ("refused", "reason", "time_to_reject_ms", "heavy_installed", "order_applied_ms_while_probing",
      "seed_work_ms", "order_waited_for_seed_work")),
    ("audit_flood", "garbage flood at the audit log",
     ("messages", "rejected", "audit_growth_kb", "audit_bytes_per_message", "suppressed_counted",
      "unbounded_before_kb")),
    ("insider_flood", "10,000 messages from one authenticated device (agent processes)",
     ("messages", "message_kb", "flood_s", "delivered_min", "rss_growth_mb_max", "receipt_latency_s_baseline",
      "receipt_latency_s_during_flood", "receipt_delay_s", "receipts_missing", "rss_over_target",
      "delay_over_target")),
    ("load", "seed propagation under load (one Mosquitto)",
     ("processes", "propagation_p50_s", "propagation_p95_s", "propagation_p99_s", "time_to_converge_s",
      "messages_dropped", "rss_per_agent_mb", "agents_rss_mb", "process_rss_mb", "rss_growth_mb", "mosquitto_rss_mb")),
    ("unlearn_load", "simultaneous unlearns while predicting",
     ("processes", "orders", "holders", "not_applied", "time_to_all_applied_s", "missing_receipts",
      "time_to_all_receipts_s", "inference_errors",
      "inference_p95_ms_before", "inference_p95_ms_during", "forgotten_came_back", "store_violations")),
    ("session_takeover", "session takeover: a device's password with another's client id (generated config)",
     ("attempts", "accepted", "victims_kicked", "victim_messages_lost", "accepted_without_binding",
      "kicked_without_binding")),
    ("forgotten_revoked", "forgotten device: login, order, retained seeds, a holder that missed the order",
     ("forgotten_logins_accepted", "order_cleared_by_target", "forgotten_seeds_retained", "forgotten_came_back",
      "revoke_s", "away_return_to_forgotten_s")),
    ("tls_only", "TLS by default (generated config)",
     ("listeners", "plaintext_listener_open", "tls_without_client_cert_accepted", "tls_with_client_cert_accepted",
      "non_loopback_plaintext_allowed")),
    ("soak", "soak (cuts, broker restarts, unlearns, new seeds)",
     ("duration_s", "link_cuts", "broker_restarts", "unlearns", "seed_versions", "memory_growth_mb_per_hour",
      "rss_mb_start", "rss_mb_end", "open_fds_end_minus_start", "threads_end_minus_start", "invariant_violations")),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(case, variant, "figure=value, ...") rows of a ``run_reliability`` result, for the CLI table."""
    rows = []
    for section, title, keys in _TABLE:
        if section not in result:  # not run (``--only``): no empty row
            continue
        for row in _rows(result[section]):
            if "error" in row:
                rows.append((title, "", f"error: {row['error']}"))
                continue
            variant = " ".join(_fmt(row[k]) + (" devices" if k == "devices" else " nbrs" if k == "neighbours" else "")
                               for k in ("broker", "devices", "neighbours") if k in row)
            rows.append((title, variant, ", ".join(f"{k}={_fmt(row.get(k))}" for k in keys if k in row)))
    return rows
