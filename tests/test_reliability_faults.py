"""Faults, fast versions of the runner's cases: broker crashed during an unlearn (Mosquitto with and
without persistence, amqtt), broker restarted during the seed exchange, links cut during QoS 1
flows, a device away past the broker's queue limit, and a few SIGKILLs. (Duplicates and reordering
run on both brokers through the CLI in tests/test_reliability_runner.py.) Nothing acknowledged is
lost; nothing forgotten comes back."""

from __future__ import annotations

import pytest

from hdus_edge.reliability.cases_crash import sigkill_campaign
from hdus_edge.reliability.cases_faults import (
    broker_crash_during_seeds,
    broker_crash_during_unlearn,
    link_cut_during_flows,
    offline_past_queue_limit,
)


@pytest.mark.parametrize("kind", ["mosquitto-persistent", "mosquitto-memory", "amqtt"])
def test_broker_crash_during_an_unlearn_loses_no_order(tmp_path, kind):
    # Two holders are offline when the order is published; the broker crashes once the others applied it.
    figures = broker_crash_during_unlearn(tmp_path, kind, n=5, seed=1, timeout=60)
    assert figures["offline_at_order"] == 2 and figures["applied_before_crash"] == 2
    # Every holder forgets (retained order, or the tombstone digests when the broker kept nothing).
    assert figures["losses"] == 0, figures
    assert figures["forgotten_came_back"] == 0 and figures["store_violations"] == 0
    assert figures["time_to_recover_s"] is not None


def test_clean_broker_restart_with_persistence_during_seed_exchange(tmp_path):
    # Mosquitto saves on a clean stop: the exchange resumes where it was. (A crash, or a broker that
    # keeps nothing, is tests/test_reliability_found_bugs.py.)
    figures = broker_crash_during_seeds(tmp_path, "mosquitto-persistent", n=4, seed=2, clean=True, timeout=60)
    assert figures["losses"] == 0, figures
    assert figures["time_to_recover_s"] is not None


def test_link_cut_during_qos1_flows(tmp_path, broker_url):
    figures = link_cut_during_flows(tmp_path, broker_url, n=4, cuts=3, seed=3, timeout=60)
    assert figures["cuts"] >= 3 and figures["reconnects"] >= 1
    assert figures["losses"] == 0, figures
    assert figures["forgotten_came_back"] == 0


def test_device_away_past_the_queue_limit_applies_the_order_from_digests(tmp_path, mosquitto_factory, embedded_broker):
    # Mosquitto queues at most 10 messages for the absent device; 40 arrive, then the order, and the
    # retained order is cleared: only the neighbours' tombstone digests can tell it.
    small_queue = mosquitto_factory(max_queued_messages=10)
    for url in (small_queue.url, embedded_broker):
        figures = offline_past_queue_limit(tmp_path / url.rsplit(":", 1)[1], url, flood=40, timeout=60)
        assert figures["others_applied"], figures
        assert figures["applied_on_return"] and figures["receipt_sent"], figures
        assert figures["losses"] == 0
    # The queue really overflowed: Mosquitto dropped what came after the first 10 (the order too).
    assert "Outgoing messages are being dropped for client away.dev-000" in small_queue.log_text()


def test_a_few_sigkills_while_writing_seeds_and_unlearning(tmp_path, mosquitto_broker):
    # The runner does 200+; here a handful, with two unlearn orders killed mid-flight.
    figures = sigkill_campaign(tmp_path, mosquitto_broker.url, kills=10, peers=2, ghosts=2, seed=4,
                               kill_window_s=(0.05, 0.8))
    summary = figures.summary()
    assert summary["kills"] == 10 and summary["kills_during_unlearn"] == 2
    assert summary["invariant_violations"] == 0, summary["violation_examples"]
    assert summary["orphan_temp_files"] == 0, summary["orphan_examples"]
    assert summary["missing_receipts_at_end"] == 0 and summary["forgotten_seeds_still_held_at_end"] == 0
