"""A holder's receipt and clears go through the outbox in memory only (issue 17, part 4); the store's
pending receipt is their durable copy. Lost before the broker's PUBACK (a crash), they go out again at
the next start; a non-holder's tombstone alone keeps the target's seed out, across a restart too.

Each check runs once as is and once against a planted bug, which it must catch.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from hdus_edge.device.agent import DeviceAgent
from hdus_edge.errors import TombstonedError
from hdus_edge.reliability.harness import (
    LAB_SETTINGS,
    SingleAgentLab,
    start_agents,
    wait_until,
)
from hdus_edge.transport.mqtt import MqttTransport

QUIET = replace(LAB_SETTINGS, digest_interval_s=600.0)


class Retained:
    """Every retained message on ``topics`` (the latest per topic; b"" once cleared)."""

    def __init__(self, url: str, topics: list[str]) -> None:
        self.seen: dict[str, bytes] = {}
        self.changed = threading.Condition()
        self.transport = MqttTransport(url, "retained-watch", handler=self._on, clean_session=True)
        self.transport.subscribe(topics)
        self.transport.connect(timeout=10)

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.changed:
            self.seen[topic] = payload
            self.changed.notify_all()

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.seen), timeout)


def check_receipt_lost_before_its_puback_goes_out_after_a_restart(tmp_path, url) -> None:
    with SingleAgentLab(tmp_path, url, settings=QUIET) as lab:
        p, agent = lab.puppet, lab.agent
        order = p.order(lab.a)
        real_publish = agent.transport.publish

        def crash_before_puback(topic, payload, **kwargs):  # what a crash right after the commit loses
            if kwargs.get("durable", True):
                return real_publish(topic, payload, **kwargs)
            return False

        agent.transport.publish = crash_before_puback
        p.publish(p.topics.unlearn(lab.a), order, retain=True)
        assert agent.wait_for(lambda ag: ag.counters.unlearned == 1, 30)
        (pending,) = agent.store.pending_receipts()
        order_rid = pending.request_id
        agent.stop()
        inbox = p.topics.seed(lab.r, lab.a)
        watch = Retained(url, [p.topics.receipt(order_rid, lab.r), inbox])
        try:
            assert watch.wait(lambda seen: seen.get(inbox)), "the retained seed of a is on the broker before"
            restarted = start_agents(lab.fleet, [lab.r])[lab.r]
            # The receipt reaches the broker (retained), the inbox copy of a's seed is cleared, and the
            # store drops the pending receipt once the broker acknowledged them.
            assert watch.wait(lambda seen: seen.get(p.topics.receipt(order_rid, lab.r)) == pending.data
                              and seen.get(inbox) == b""), watch.seen.keys()
            assert wait_until(lambda: not restarted.store.pending_receipts(), 20)
            assert lab.a not in restarted.members()
        finally:
            watch.transport.close()


def test_a_receipt_lost_before_its_puback_goes_out_after_a_restart(tmp_path, mosquitto_broker):
    check_receipt_lost_before_its_puback_goes_out_after_a_restart(tmp_path, mosquitto_broker.url)


def test_planted_bug_no_resend_at_start_fails_the_check(tmp_path, mosquitto_broker, monkeypatch):
    monkeypatch.setattr(DeviceAgent, "_resend_receipt", lambda self, request_id, data: None)
    with pytest.raises(AssertionError):
        check_receipt_lost_before_its_puback_goes_out_after_a_restart(tmp_path, mosquitto_broker.url)


def check_a_non_holder_refuses_the_target_for_good(tmp_path, url) -> None:
    with SingleAgentLab(tmp_path, url, settings=QUIET) as lab:
        p, agent = lab.puppet, lab.agent
        order = p.order(lab.c)  # r neither lists c nor holds its seed
        p.publish(p.topics.unlearn(lab.c), order, retain=True)
        assert agent.wait_for(lambda ag: ag.counters.unlearned == 1, 30)
        assert agent.counters.receipts_sent == 0 and agent.store.pending_receipts() == []
        assert list(agent.store.orders().values()) == [order]  # in r's digest for whoever missed it
        agent.stop()
        restarted = start_agents(lab.fleet, [lab.r])[lab.r]
        with pytest.raises(TombstonedError):
            restarted.store.check_seed(lab.c, 1, 0)
        # c's seed, live, does not get in (r lists c now, so it would take it otherwise).
        restarted.set_neighbors((lab.a, lab.b, lab.c))
        p.publish(p.topics.seed(lab.r, lab.c), p.seed(lab.c, lab.r, 1, lab.seeds[lab.c]), retain=True)
        assert restarted.wait_for(lambda ag: ag.counters.reasons.get("TombstonedError", 0) >= 1, 30), restarted.counters
        assert lab.c not in restarted.members()


def test_a_non_holder_refuses_the_target_for_good(tmp_path, mosquitto_broker):
    check_a_non_holder_refuses_the_target_for_good(tmp_path, mosquitto_broker.url)


def test_planted_bug_a_non_holder_that_skips_the_tombstone_fails_the_check(tmp_path, mosquitto_broker, monkeypatch):
    from hdus_edge.device.store import SeedStore

    real = SeedStore.apply_unlearn

    def skip_without_receipt(self, target, epoch, request_id, receipt=None, *, order=None):
        if receipt is None:  # the non-holder path
            self.mark_request_seen(request_id)
            return None
        return real(self, target, epoch, request_id, receipt, order=order)

    monkeypatch.setattr(SeedStore, "apply_unlearn", skip_without_receipt)
    with pytest.raises(AssertionError):
        check_a_non_holder_refuses_the_target_for_good(tmp_path, mosquitto_broker.url)
