"""The runner (``hdus-edge bench reliability``): named must-be-zero counts, the CLI's one JSON object,
and the load and soak cases at toy size (their figures are measured by the runner, not asserted here
beyond "no loss, no violation")."""

from __future__ import annotations

import json
import subprocess
import sys

from hdus_edge.reliability.brokers import Broker
from hdus_edge.reliability.cases_load import (
    propagation_load,
    simultaneous_unlearns,
    soak,
)
from hdus_edge.reliability.runner import CASES, summarize, table_rows


def test_summarize_names_every_count_that_is_not_zero():
    # Prepare: a result with one false accept, one loss on one broker and one failed case.
    result = {
        "envelopes": {"false_accepts": 1, "mutants": 10},
        "link_cut": [{"broker": "amqtt", "losses": 0}, {"broker": "mosquitto", "losses": 2}],
        "soak": {"error": "RuntimeError: boom"},
    }
    # Execute
    out = summarize(result)
    # Assert
    assert out["totals"]["false_accepts"] == 1 and out["totals"]["losses"] == 2
    assert out["failed_checks"] == ["envelopes.false_accepts = 1", "link_cut.losses = 2 (mosquitto)",
                                    "soak: RuntimeError: boom"]
    rows = table_rows(out)
    assert ("links cut during QoS 1 flows (proxy)", "mosquitto", "losses=2") in rows
    # Only the cases in the result have rows (``--only`` printed an empty row for every other one).
    assert {title for title, _, _ in rows} == {"hostile envelopes (fields, types, sizes, bit flips)",
                                               "links cut during QoS 1 flows (proxy)",
                                               "soak (cuts, broker restarts, unlearns, new seeds)"}


def test_cli_runs_the_named_cases_and_prints_one_json_object():
    done = subprocess.run(
        [sys.executable, "-m", "hdus_edge", "bench", "reliability", "--quick", "--json", "--only", "duplicates"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["profile"] == "quick" and set(result) >= {"duplicates", "totals", "failed_checks", "seconds"}
    assert [row["broker"] for row in result["duplicates"]] == ["amqtt", "mosquitto"]
    assert result["failed_checks"] == [] and set(result["totals"].values()) == {0}
    assert not set(CASES) - {"duplicates"} & set(result)


def test_cli_refuses_an_unknown_case():
    done = subprocess.run([sys.executable, "-m", "hdus_edge", "bench", "reliability", "--only", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown cases ['nope']" in done.stderr + done.stdout


def test_load_and_simultaneous_unlearns_at_toy_size(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        figures, fleet = propagation_load(tmp_path / "load", broker, 8, 3, timeout=60)
        try:
            assert figures["messages_dropped"] == 0 and figures["seeds_missing"] == 0
            assert 0 <= figures["propagation_p50_s"] <= figures["propagation_p99_s"]
            assert figures["mosquitto_rss_mb"] > 0
            unlearn = simultaneous_unlearns(fleet, 2, predictors=2, wait_s=30)
        finally:
            fleet.stop()
    assert figures["processes"] == "one per device" and figures["rss_per_agent_mb"] > 0
    assert unlearn["not_applied"] == 0 and unlearn["missing_receipts"] == 0, unlearn
    assert unlearn["inference_errors"] == 0 and unlearn["forgotten_came_back"] == 0
    assert unlearn["store_violations"] == 0 and unlearn["processes"] == "one per device"
    assert unlearn["inferences_during"] > 0


# An agent that never deletes: it marks each order seen (so it is not asked again) and does nothing
# else; planted in every agent process through the fleet's launcher.
NEVER_DELETES = """
from hdus_edge.device.agent import DeviceAgent

DeviceAgent._apply_order = lambda self, order, raw: self.store.mark_request_seen(order.request_id)

from hdus_edge.cli.entry import main

main()
"""


def test_simultaneous_unlearns_fail_when_agents_never_delete(tmp_path):
    # Prepare: the load fleet, every agent process patched to ignore what an order asks.
    script = tmp_path / "never_deletes.py"
    script.write_text(NEVER_DELETES)
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        figures, fleet = propagation_load(tmp_path / "load", broker, 6, 3, timeout=60, launcher=(str(script),))
        try:
            assert figures["seeds_missing"] == 0  # the exchange itself works
            # Execute
            unlearn = simultaneous_unlearns(fleet, 2, predictors=2, wait_s=8, receipt_wait_s=4)
        finally:
            fleet.stop()
    # Assert: the case reports every holder as not done and every receipt as missing.
    assert unlearn["not_applied"] == unlearn["holders"] > 0, unlearn
    assert unlearn["missing_receipts"] == unlearn["holders"] and unlearn["time_to_all_receipts_s"] is None


def test_load_and_simultaneous_unlearns_in_one_process_at_toy_size(tmp_path):
    with Broker("mosquitto-memory", tmp_path / "broker") as broker:
        figures, fleet = propagation_load(tmp_path / "load", broker, 6, 3, timeout=60, processes=False)
        try:
            assert figures["seeds_missing"] == 0 and figures["processes"] == "one"
            unlearn = simultaneous_unlearns(fleet, 2, predictors=2, wait_s=30)
        finally:
            fleet.stop()
    assert unlearn["not_applied"] == 0 and unlearn["missing_receipts"] == 0 and unlearn["store_violations"] == 0
    assert unlearn["processes"] == "one"


def test_soak_at_toy_size(tmp_path):
    figures = soak(tmp_path, 6.0, n=6, seed=1)
    assert figures["invariant_violations"] == 0, figures
    assert figures["link_cuts"] + figures["seed_versions"] + figures["broker_restarts"] + figures["unlearns"] >= 3
    assert figures["open_fds_min"] is not None and figures["threads_max"] is not None


def test_seed_propagation_pairs_the_broker_clock_with_the_audit_log():
    import time

    from hdus_edge.lab.processes import seed_propagation
    from hdus_edge.protocol.topics import Topics

    # Prepare: b's seed for a reached the broker 1 s (monotonic) before a's store accepted it (wall).
    t = Topics("f")
    mono_now, wall_now = time.monotonic(), time.time()
    on_broker = {t.seed("dev-a", "dev-b"): mono_now - 1.0, t.seed("dev-b", "dev-a"): mono_now - 3.0}
    accepted = {("dev-a", "dev-b"): wall_now, ("dev-c", "dev-b"): wall_now}  # c's copy: never seen on the broker
    # Execute
    lat = seed_propagation(accepted, on_broker, "f")
    # Assert: one pair, about a second (the two clocks are read a few microseconds apart).
    assert len(lat) == 1 and abs(lat[0] - 1.0) < 0.05


def test_targets_ordered_together_do_not_owe_each_other_receipts():
    # Found running the case with agent processes: dev-001, itself forgotten in the batch, stopped
    # (as a device does) and was counted as a holder that never answered.
    from hdus_edge.reliability.cases_load import order_holders

    graph = {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b", "d"}, "d": {"c"}}
    assert order_holders(graph, ["a", "b", "c", "d"], ["a", "b"]) == {"a": ["c"], "b": ["c"]}
    assert order_holders(graph, ["a", "c"], ["d"]) == {"d": ["c"]}  # only running devices
