"""How many fsyncs one unlearn order costs one agent, end to end (issue 17, part 4), on a real broker.

Counted with ``order_syncs_kit`` (every ``os.fsync``/``os.fdatasync`` plus the outbox's SQLite commits)
from the order's delivery until the agent is idle again (acks in, digest tick done). Before the change
(main at b15820c): holder 22 (14 fsyncs + 8 outbox commits), non-holder 19 (13 + 6), replay 0.
"""

from __future__ import annotations

from dataclasses import replace

from order_syncs_kit import counting_syncs, deliver_and_settle

from hdus_edge.reliability.harness import LAB_SETTINGS, SingleAgentLab, wait_until

# Periodic digests out of the way: only what the order causes is counted.
QUIET = replace(LAB_SETTINGS, digest_interval_s=600.0)


def test_a_holder_applies_an_order_with_two_fsyncs_a_non_holder_records_only_the_tombstone(
        tmp_path, mosquitto_broker, monkeypatch):
    with SingleAgentLab(tmp_path, mosquitto_broker.url, settings=QUIET) as lab:
        p, agent = lab.puppet, lab.agent
        assert agent is not None
        holder_order = p.order(lab.a)  # r holds a's seed and lists a as a neighbour
        outsider_order = p.order(lab.c)  # r neither holds c's seed nor lists it
        counts = {}
        for name, target, order in (("holder", lab.a, holder_order), ("non_holder", lab.c, outsider_order),
                                     ("replay", lab.a, holder_order)):
            receipts = agent.counters.receipts_sent
            generation = agent.runtime.generation
            with counting_syncs(monkeypatch) as count:
                deliver_and_settle(agent, p.topics.unlearn(target), order)
            counts[name] = (count.total, dict(count.by_kind), agent.counters.receipts_sent - receipts,
                            agent.runtime.generation > generation)  # rebuilt (a background fuse counts too)
        status = agent.status()
        orders = agent.store.orders()
        tombstones = [t.target for t in agent.store.tombstones()]
        assert wait_until(lambda: not agent.store.pending_receipts(), 30)
    print("fsyncs per order (total, by kind, receipts, rebuilds):", counts)
    # Holder: the one index commit (temp file + directory); one receipt; one rebuild.
    assert counts["holder"][0] <= 2 and counts["holder"][2:] == (1, True), counts
    # Non-holder: the tombstone commit only; no receipt, no rebuild.
    assert counts["non_holder"][0] <= 2 and counts["non_holder"][2:] == (0, False), counts
    assert counts["replay"][0] == 0 and counts["replay"][2:] == (0, False), counts
    # Both orders are kept for the digest, both targets refused from now on.
    assert sorted(orders.values()) == sorted([holder_order, outsider_order])
    assert tombstones == sorted([lab.a, lab.c])
    applies = status["unlearn_applies"]
    assert applies["holder"]["count"] == 1 and applies["non_holder"]["count"] == 1
    assert applies["holder"]["recent_fsyncs"] == [counts["holder"][1].get("fsync", 0)]
    assert applies["non_holder"]["recent_fsyncs"] == [2]
    # The last apply, step by step (a non-holder's is its store step only).
    last = applies["last"]
    assert last["role"] == "non_holder" and last["target"] == lab.c and last["fsyncs"] == 2
    assert last["store_ms"] == last["total_ms"] > 0 and last["ensemble_ms"] == last["receipt_ms"] == 0
