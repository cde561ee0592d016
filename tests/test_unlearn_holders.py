"""Holders from the registry (issue 14, deliverable 6): the requester waits for every provisioned,
non-forgotten device whose neighbour list names the target, names the ones that did not answer, and
an offline holder's receipt arrives when it returns. On Mosquitto."""

from __future__ import annotations

import json
import threading

from hdus_edge.reliability.harness import lab_fleet, start_agents, wait_until
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.commands import (
    audit_evidence,
    expected_holders,
    receipts_report,
    source_of,
    unlearn,
)
from hdus_edge.unlearn.request import decide_holders


def _never(_: str) -> bool:
    return False


def test_decide_holders_adds_provisioned_devices_whose_list_did_not_come():
    lists = {"b": frozenset({"t"}), "c": frozenset({"x"})}
    registry = {"b": ("t",), "c": ("t",), "d": ("t", "x"), "e": ("x",), "t": ("b",)}
    # c's retained list (it no longer lists t) wins over its provisioned one; d's never came.
    assert decide_holders("t", lists, registry, _never) == ("b", "d")
    # Without the registry, d is silently left out: the quiet-window bug.
    assert decide_holders("t", lists, None, _never) == ("b",)
    assert decide_holders("t", lists, registry, lambda i: i == "d") == ("b",)


def test_a_forgotten_devices_leftover_list_does_not_make_it_a_holder():
    # a was forgotten earlier: the registry no longer lists it, but its retained list still names t,
    # and its retained order had not arrived when the holders were chosen (seen with a flapping link).
    lists = {"a": frozenset({"t"}), "b": frozenset({"t"})}
    registry = {"b": ("t",), "t": ("b",)}
    assert decide_holders("t", lists, registry, _never) == ("b",)


def test_expected_holders_skip_forgotten_devices():
    registry = {"a": {"neighbors": ["b"]}, "b": {"neighbors": ["a"], "unlearned": "f" * 32}, "c": {}}
    assert expected_holders(registry) == {"a": ("b",), "c": ()}


def _converge_then_stop(fleet, device_id: str) -> None:
    """Start every agent of a complete graph, wait until each holds all seeds, then stop ``device_id``'s."""
    agents = start_agents(fleet, fleet.states)
    assert wait_until(lambda: all(len(a.members()) == len(agents) - 1 for a in agents.values()), 60)
    agents[device_id].stop()
    fleet.agents.pop(device_id)


def test_a_holder_whose_list_the_broker_lost_is_awaited_named_and_answers_on_return(tmp_path, mosquitto_broker):
    # Prepare: three devices, complete graph; dev-002 goes offline and the broker loses its list.
    url = mosquitto_broker.url
    fleet = lab_fleet(tmp_path, url, 3)
    try:
        _converge_then_stop(fleet, "dev-002")
        clear = MqttTransport(url, "clear-list", clean_session=True)
        clear.connect(timeout=10)
        assert clear.publish("hdus/v1/rel/membership/dev-002", b"", retain=True, wait=True, timeout=10)
        clear.close()
        # Execute
        outcome, _ = unlearn(fleet.admin, "dev-000", broker_url=url, wait_s=4)
        # Assert: dev-002 is a holder by the registry and named as missing.
        assert outcome.holders == ("dev-001", "dev-002")
        assert outcome.missing == ("dev-002",)
        # dev-002 returns: it applies the retained order and its receipt reaches the broker.
        start_agents(fleet, ["dev-002"])
        source = source_of(None, fleet.admin, url)
        rid = outcome.order.request_id
        assert wait_until(lambda: receipts_report(source, rid, wait_s=1.0)["missing"] == [], 60, interval=0.5)
        assert fleet.agents["dev-002"].members() == ("dev-001",)
    finally:
        fleet.stop()


def test_a_holder_forgotten_while_an_order_is_out_owes_no_receipt_and_the_evidence_carries_why(tmp_path, mosquitto_broker):
    # Found by bench scale at 100 devices: of ten orders published at once, a target that was also
    # another target's holder stopped (forgotten) before answering, and the requester waited for it
    # until its deadline and called the evidence incomplete.
    # Prepare: three devices, complete graph; dev-002 is offline, so only an order can settle it.
    url = mosquitto_broker.url
    fleet = lab_fleet(tmp_path, url, 3)
    try:
        _converge_then_stop(fleet, "dev-002")
        result: dict = {}
        first = threading.Thread(target=lambda: result.update(out=unlearn(fleet.admin, "dev-000", broker_url=url, wait_s=60)))
        out_there = threading.Event()
        watcher = MqttTransport(url, "watch-order", handler=lambda t, payload, r: payload and out_there.set(),
                                clean_session=True)
        watcher.subscribe(["hdus/v1/rel/unlearn/dev-000"])
        watcher.connect(timeout=10)
        # Execute: the order about dev-000 is out (its holders chosen); then the admin forgets dev-002.
        first.start()
        assert out_there.wait(30)
        watcher.close()
        unlearn(fleet.admin, "dev-002", broker_url=url, wait_s=2)
        first.join(90)
        outcome, path = result["out"]
        # Assert: dev-002 released with the signed order that forgot it; the evidence verifies complete.
        assert outcome.holders == ("dev-001", "dev-002") and outcome.complete and outcome.missing == ()
        assert [d for d, _ in outcome.released] == ["dev-002"]
        assert outcome.seconds < 50  # it stopped waiting once released, not at its 60 s deadline
        report = audit_evidence(path, fleet.admin.key().public_key)
        assert report["verified"] and report["complete"] and report["released"] == ["dev-002"], report
        # An attacker's edits: the release names another device, carries this request's own order, or is dropped.
        data = json.loads(path.read_text())
        own_order = data["order"]
        forged = [
            {**data, "released": [{**data["released"][0], "device_id": "dev-001"}]},
            {**data, "released": [{"device_id": "dev-002", "order": own_order}]},
            {**data, "released": []},
        ]
        for k, bad in enumerate(forged):
            bad_path = tmp_path / f"forged{k}.json"
            bad_path.write_text(json.dumps(bad))
            verdict = audit_evidence(bad_path, fleet.admin.key().public_key)
            assert not (verdict["verified"] and verdict["complete"]), (k, verdict)
    finally:
        fleet.stop()
