"""How many fsyncs one unlearn order costs one agent, end to end (issue 17, part 4), on a real broker."""

from __future__ import annotations

from dataclasses import replace

from order_syncs_kit import counting_syncs, deliver_and_settle

from hdus_edge.reliability.harness import LAB_SETTINGS, SingleAgentLab

# Periodic digests out of the way: only what the order causes is counted.
QUIET = replace(LAB_SETTINGS, digest_interval_s=600.0)


def _counts(tmp_path, broker_url, monkeypatch) -> dict[str, dict]:
    out = {}
    with SingleAgentLab(tmp_path, broker_url, settings=QUIET) as lab:
        p, agent = lab.puppet, lab.agent
        assert agent is not None
        holder_order = p.order(lab.a)  # r holds a's seed and lists a as a neighbour
        outsider_order = p.order(lab.c)  # r neither holds c's seed nor lists c
        for name, target, order in (("holder", lab.a, holder_order), ("non_holder", lab.c, outsider_order),
                                     ("replay", lab.a, holder_order)):
            with counting_syncs(monkeypatch) as count:
                deliver_and_settle(agent, p.topics.unlearn(target), order)
            out[name] = {"total": count.total, **count.by_kind}
        out["agent"] = {"receipts_sent": agent.counters.receipts_sent, "members": agent.members(),
                        "tombstones": [t.target for t in agent.store.tombstones()],
                        "orders": len(agent.store.orders())}
    return out


def test_fsyncs_per_order(tmp_path, mosquitto_broker, monkeypatch):
    counts = _counts(tmp_path, mosquitto_broker.url, monkeypatch)
    print("fsyncs per order:", counts)
    assert counts["holder"]["total"] >= 1
