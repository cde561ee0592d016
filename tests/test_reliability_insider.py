"""Issue 14's insider cases of ``bench reliability`` at toy size, on Mosquitto: each runs and its
must-be-zero counts are 0 (the memory and delay figures are for the bench, not asserted here)."""

from __future__ import annotations

from hdus_edge.reliability.brokers import Broker
from hdus_edge.reliability.cases_insider import (
    audit_flood,
    forgotten_restart,
    heavy_seed,
    insider_flood,
    parking_flood,
)


def test_forgotten_restart_case(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        result = forgotten_restart(tmp_path / "case", broker.url)
    assert result["forgotten_seen"] is True
    assert result["restarts_refused"] == 2 and result["restarts_not_refused"] == 0
    assert result["retained_after_restart"] == 0
    assert result["missed_order_not_applied"] == 0 and result["missed_order_retained_after"] == 0


def test_heavy_seed_case(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        result = heavy_seed(tmp_path / "case", broker.url)
    assert result["refused"] is True and result["reason"] == "ComputeBudgetError"
    assert result["heavy_installed"] == 0


def test_audit_flood_case(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        result = audit_flood(tmp_path / "case", broker.url, messages=400, size=200)
    assert result["rejected"] > 0
    # The burst (100) plus summaries; without the limit, each rejection wrote ~166 B.
    assert result["audit_growth_kb"] < 0.5 * result["rejected"] * 166 / 1024 + 25
    assert result["suppressed_counted"] > 0


def test_parking_flood_case_with_agent_processes(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        result = parking_flood(tmp_path / "case", broker.url, messages=12, size=64 << 10)
    assert result["parked_now_max"] <= 8  # the per-topic cap (profile default)
    assert result["parked_dropped_min"] >= 12 - 8


def test_insider_flood_case_on_the_generated_config_at_toy_size(tmp_path):
    """The goal's case (10,000 messages in the bench) at 400: every message reaches every observed
    agent, every receipt comes; the RSS and delay figures are the bench's."""
    result = insider_flood(tmp_path / "case", messages=400, size=1024)
    assert result["delivered_min"] == 400
    assert result["receipts_missing"] == 0
    assert result["rejected_min"] >= 200  # the garbage half; the other half is parked (and dropped)
