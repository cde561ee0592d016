"""The authority matrix at the agent level, over a real broker (amqtt and Mosquitto).

Device ``r`` runs a real agent and holds the seeds of its neighbours ``a`` and ``b``; ``c`` is another
certified device. For each order, the *subject* is the device it is about:

=================  ===================  =====================  ==========================
signer             unlearn self         unlearn other          neighbour change
                   (forget r)           (forget a)             (a's list drops r)
=================  ===================  =====================  ==========================
the subject        accepted (r signs)   accepted (a signs)     accepted (a signs)
admin              accepted             accepted               rejected (lists are the device's word)
another device c   rejected             rejected               rejected
unknown key        rejected             rejected               rejected
=================  ===================  =====================  ==========================

"unknown key" signs with a key nobody certified, under the subject's id (or the admin's); an id
nobody certified is parked until a hello that never comes, and changes nothing either.
"""

from __future__ import annotations

import pytest

from hdus_edge.crypto import SigningKey
from hdus_edge.reliability.harness import SingleAgentLab, deliver, snapshot, wait_until
from hdus_edge.transport.mqtt import MqttTransport


def _watch(lab, message_collector, topic: str):
    """A collector on ``topic`` (what r publishes there), connected now."""
    collector = message_collector()
    t = MqttTransport(lab.broker_url, f"watch-{lab.r}", handler=collector, clean_session=True)
    t.subscribe([topic])
    t.connect()
    collector.settle(0.3)
    return t, collector


def test_rejected_cells_change_nothing_and_the_subject_may_change_its_list(tmp_path, broker_url, message_collector):
    with SingleAgentLab(tmp_path, broker_url) as lab:
        p, t, r, a, c = lab.puppet, lab.puppet.topics, lab.r, lab.a, lab.c
        stranger = SigningKey.generate()
        # r published its seed to a (a's list names r): a neighbour change that drops r clears it.
        watcher, seen = _watch(lab, message_collector, t.seed(a, r))
        try:
            assert [m for m in seen.messages if m[1]], "r should have published its seed to a"
            before = snapshot(lab.agent)
            cells = {
                ("other", "unlearn self"): (t.unlearn(r), p.order(r, issuer=c)),
                ("other as subject", "unlearn self"): (t.unlearn(r), p.order(r, issuer=r, signer=c)),
                ("unknown", "unlearn self"): (t.unlearn(r), p.order(r, issuer=r, key=stranger)),
                ("unknown as admin", "unlearn self"): (t.unlearn(r), p.order(r, key=stranger)),
                ("other", "unlearn other"): (t.unlearn(a), p.order(a, issuer=c)),
                ("subject of another", "unlearn other"): (t.unlearn(a), p.order(a, issuer=lab.b)),
                ("unknown", "unlearn other"): (t.unlearn(a), p.order(a, issuer=a, key=stranger)),
                ("unknown as admin", "unlearn other"): (t.unlearn(a), p.order(a, key=stranger)),
                ("admin", "neighbour change"): (t.membership(a), p.membership(a, [], signer="admin")),
                ("other", "neighbour change"): (t.membership(a), p.membership(a, [], signer=c)),
                ("unknown", "neighbour change"): (t.membership(a), p.membership(a, [], key=stranger)),
            }
            # Execute / Assert: each rejected, nothing changed, nothing cleared.
            for cell, (topic, payload) in cells.items():
                assert deliver(p, lab.agent, topic, payload) == "rejected", cell
                assert before.differences(snapshot(lab.agent)) == [], cell
            # An id nobody certified is parked (no hello will come): still no change.
            from hdus_edge.protocol import codec
            from hdus_edge.protocol.messages import UnlearnOrder

            ghost = codec.encode(UnlearnOrder(r, "dev-999", "ab" * 16, 1.0, "x", 0), stranger, "dev-999")
            assert deliver(p, lab.agent, t.unlearn(r), ghost, timeout=1.0) == "silent"
            assert before.differences(snapshot(lab.agent)) == []
            assert [m for m in seen.messages if not m[1]] == []  # r never cleared its seed for a
            # The subject itself: a drops r from its list; r takes its seed for a off the broker.
            p.publish(t.membership(a), p.membership(a, []), retain=True)
            assert wait_until(lambda: any(not m[1] for m in seen.messages), 10), "r did not act on a's new list"
            assert lab.agent.members() == before.members  # r still wants a's seed: lists are one-way
        finally:
            watcher.close()


@pytest.mark.parametrize("forget_a_by, forget_r_by", [("subject", "admin"), ("admin", "subject")])
def test_accepted_cells_forget_exactly_their_subject(tmp_path, broker_url, forget_a_by, forget_r_by):
    with SingleAgentLab(tmp_path, broker_url) as lab:
        p, t, r, a, b = lab.puppet, lab.puppet.topics, lab.r, lab.a, lab.b
        # Unlearn other: a is forgotten by r, by a's own order or the admin's.
        order = p.order(a, issuer=a) if forget_a_by == "subject" else p.order(a)
        assert deliver(p, lab.agent, t.unlearn(a), order) == "unlearned"
        assert lab.agent.members() == (b,) and lab.agent.store.is_tombstoned(a, 0)
        assert lab.agent.status()["forgotten"] is False
        # Unlearn self: r is told it is forgotten, by its own order or the admin's.
        rid = "5e1f" * 8
        order = p.order(r, issuer=r, request_id=rid) if forget_r_by == "subject" else p.order(r, request_id=rid)
        p.publish(t.unlearn(r), order)
        assert wait_until(lambda: lab.agent.status()["forgotten"] is True, 10)
        assert lab.agent.store.is_request_seen(rid)
        assert lab.agent.members() == (b,)  # forgetting r is about r's seed elsewhere, not r's ensemble
