"""Five real agents, each with its own state dir and MQTT connection, on amqtt and on Mosquitto.

Seeds are exchanged, forgetting is exact (proved against a fleet retrained from scratch without the
device) and attested by receipts, offline devices catch up, and forged, replayed or misaddressed
messages change nothing.
"""

from __future__ import annotations

import time

import fleet_kit as fk
import numpy as np
import pytest

from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.messages import SeedEnvelope, UnlearnOrder
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.request import collect_receipts, request_unlearn, verify_evidence


@pytest.fixture
def fleet(tmp_path, broker_url):
    """Five provisioned devices with running agents (complete graph), converged."""
    admin, states = fk.provision(tmp_path, broker_url)
    agents = {i: fk.start_agent(states[i], broker_url) for i in fk.IDS}
    try:
        fk.wait_members(agents, fk.complete_members(fk.IDS))
        yield admin, states, agents, broker_url
    finally:
        for a in agents.values():
            try:
                a.stop()
            except Exception:
                pass


def _unlearn(admin, broker, target, wait_s=20.0):
    fleet_cfg = admin.fleet()
    return request_unlearn(
        broker_url=broker, fleet=fleet_cfg.fleet.name, admin_key=admin.key().public_key, signer=admin.key(),
        issuer="admin", target=target, epoch=0, wait_s=wait_s,
    )


def test_ensembles_match_the_in_process_fleet(fleet):
    # Prepare
    _, _, agents, _ = fleet
    tf = fk.trained_models()
    x = tf.data.test.x
    # Execute / Assert: every device's ONNX ensemble over MQTT equals the torch fleet's.
    for i, agent in agents.items():
        assert agent.members() == tuple(j for j in fk.IDS if j != i)
        assert fk.max_diff(agent.predict(x), tf.fleet.ensemble_output(i, x)) <= 1e-6
        assert np.array_equal(agent.predict(x).argmax(1), tf.fleet.ensemble_output(i, x).argmax(1))


def test_unlearn_collects_receipts_and_equals_never_joined(fleet, tmp_path, message_collector):
    admin, states, agents, broker = fleet
    x = fk.trained_models().data.test.x
    before = {i: agents[i].predict(x) for i in fk.IDS}
    # Execute
    outcome = _unlearn(admin, broker, "d2")
    # Assert: every holder answered with a signed receipt naming the seed it deleted.
    assert outcome.complete and outcome.holders == ("d0", "d1", "d3", "d4")
    held_sha = {r.receipt.device_id: r.receipt.removed_sha256 for r in outcome.receipts}
    from hdus_edge.protocol.messages import sha256_hex

    assert all(held_sha[h] == sha256_hex(fk.trained_models().seed_onnx["d2"]) for h in outcome.holders)
    assert verify_evidence(outcome.evidence(), admin.key().public_key, admin.fleet().fleet.name) == []
    remaining = [i for i in fk.IDS if i != "d2"]
    fk.wait_members(agents, fk.complete_members(remaining))
    # A fleet that never had d2, trained from scratch (same seeds, the others' own data), on its own
    # fleet name on the same broker. (a) Its models are the very bytes the others hold.
    retrained = fk.retrained_without("d2")
    for i in remaining:
        assert retrained.main_onnx[i] == fk.trained_models().main_onnx[i], i
        assert retrained.seed_onnx[i] == fk.trained_models().seed_onnx[i], i
    # (b) Its running agents' ensembles, once both fleets predict with settled fused graphs.
    _, never_states = fk.provision(tmp_path / "never", broker, ids=tuple(remaining), fleet_name="never",
                                   models=retrained)
    never = {i: fk.start_agent(never_states[i], broker) for i in remaining}
    try:
        fk.wait_members(never, fk.complete_members(remaining))
        for i in remaining:
            assert agents[i].runtime.wait_fused(30) and never[i].runtime.wait_fused(30), i
            assert fk.max_diff(agents[i].predict(x), before[i]) > 1e-4  # d2's seed mattered
            assert fk.max_diff(agents[i].predict(x), never[i].predict(x)) <= 1e-6
            assert np.array_equal(agents[i].predict(x).argmax(1), never[i].predict(x).argmax(1))
    finally:
        for a in never.values():
            a.stop()
    # The broker keeps no copy of d2's seed.
    collector = message_collector()
    t = MqttTransport(broker, "auditor", handler=collector)
    t.subscribe([f"{Topics('t').root}/seeds/+/d2"])
    t.connect()
    try:
        assert [m for m in collector.settle(0.5) if m[1]] == []
    finally:
        t.close()
    # No byte of d2's seed is left in any holder's store.
    seed = fk.trained_models().seed_onnx["d2"]
    for i in remaining:
        for path in states[i].store_dir.rglob("*"):
            if path.is_file():
                assert seed not in path.read_bytes(), path


def test_offline_device_applies_unlearn_on_return(fleet):
    admin, states, agents, broker = fleet
    agents["d4"].stop()
    outcome = _unlearn(admin, broker, "d1", wait_s=3.0)
    assert outcome.missing == ("d4",)
    # d4 comes back: the retained order is applied and its receipt sent.
    agents["d4"] = fk.start_agent(states["d4"], broker)
    assert agents["d4"].wait_for(lambda a: "d1" not in a.members(), 20)
    receipts = {}
    deadline = time.monotonic() + 20
    while "d4" not in receipts and time.monotonic() < deadline:
        receipts = collect_receipts(broker_url=broker, fleet="t", admin_key=admin.key().public_key,
                                    request_id=outcome.order.request_id, wait_s=1.0)
    assert receipts["d4"].receipt.removed_sha256 is not None
    assert agents["d4"].store.seed_info("d1") is None


def test_forgotten_seed_published_again_is_refused(fleet):
    admin, states, agents, broker = fleet
    assert _unlearn(admin, broker, "d3").complete
    fk.wait_members(agents, fk.complete_members([i for i in fk.IDS if i != "d3"]))
    rejected = agents["d0"].counters.rejected
    # d3 publishes a newer seed straight to d0's inbox.
    env = SeedEnvelope.build(owner="d3", to="d0", version=5, onnx=fk.trained_models().seed_onnx["d3"], arch="seed-cnn",
                             input_shape=(-1, 1, 8, 8), num_classes=10,
                             reference_sha256=fk.trained_models().data.reference_sha256, epoch=0)
    _inject(broker, Topics("t").seed("d0", "d3"), codec.encode(env, states["d3"].key(), "d3"))
    assert agents["d0"].wait_for(lambda a: a.counters.rejected > rejected, 10)
    assert "d3" not in agents["d0"].members()
    assert any(e.get("reason") == "tombstoned" for e in agents["d0"].store.audit_events())


def _inject(broker: str, topic: str, payload: bytes, retain: bool = False) -> None:
    t = MqttTransport(broker, f"intruder-{time.monotonic_ns()}")
    t.connect()
    try:
        assert t.publish(topic, payload, retain=retain, wait=True)
    finally:
        t.close()


def _assert_unchanged(agent, members_before, x, out_before):
    # Same members, same outputs (the background fuse may swap sessions for the fused graph: 1e-6).
    assert agent.members() == members_before
    assert fk.max_diff(agent.predict(x), out_before) <= 1e-6


def test_forged_replayed_and_misattributed_messages_change_nothing(fleet):
    admin, states, agents, broker = fleet
    x = fk.trained_models().data.test.x[:64]
    d0 = agents["d0"]
    members, out = d0.members(), d0.predict(x)
    topics = Topics("t")
    tf = fk.trained_models()

    def rejected_after(payload_topic, payload):
        before = d0.counters.rejected
        _inject(broker, payload_topic, payload)
        assert d0.wait_for(lambda a: a.counters.rejected > before, 10), payload_topic
        _assert_unchanged(d0, members, x, out)

    # 1. Forged order: "admin" signed with a key the fleet never certified.
    forged = codec.encode(UnlearnOrder("d1", "admin", "f" * 32, time.time(), "forged", 0), SigningKey.generate(), "admin")
    rejected_after(topics.unlearn("d1"), forged)
    # 2. An order for d1 signed by d2 (neither the target nor the admin).
    other = codec.encode(UnlearnOrder("d1", "d2", "e" * 32, time.time(), "not yours", 0), states["d2"].key(), "d2")
    rejected_after(topics.unlearn("d1"), other)
    # 3. Seed signed by a key the admin never certified, claiming to be d1.
    env = SeedEnvelope.build(owner="d1", to="d0", version=9, onnx=tf.seed_onnx["d1"], arch="seed-cnn",
                             input_shape=(-1, 1, 8, 8), num_classes=10, reference_sha256=tf.data.reference_sha256, epoch=0)
    rejected_after(topics.seed("d0", "d1"), codec.encode(env, SigningKey.generate(), "d1"))
    # 4. Payload whose claimed sender (owner d1) differs from the signer (d2).
    rejected_after(topics.seed("d0", "d1"), codec.encode(env, states["d2"].key(), "d2"))
    # 5. Replayed old seed: version 1 again, correctly signed by d1 (already held: a duplicate, no change).
    dup = d0.counters.duplicates
    old = SeedEnvelope.build(owner="d1", to="d0", version=1, onnx=tf.seed_onnx["d1"], arch="seed-cnn",
                             input_shape=(-1, 1, 8, 8), num_classes=10, reference_sha256=tf.data.reference_sha256, epoch=0)
    _inject(broker, topics.seed("d0", "d1"), codec.encode(old, states["d1"].key(), "d1"))
    assert d0.wait_for(lambda a: a.counters.duplicates > dup, 10)
    _assert_unchanged(d0, members, x, out)
    # 6. A valid order replayed after it was applied: applied once, never again.
    outcome = _unlearn(admin, broker, "d4")
    assert outcome.complete
    fk.wait_members(agents, fk.complete_members(["d0", "d1", "d2", "d3"]))
    members, out = d0.members(), d0.predict(x)
    dup = d0.counters.duplicates
    _inject(broker, topics.unlearn("d4"), outcome.order_raw)
    assert d0.wait_for(lambda a: a.counters.duplicates > dup, 10)
    _assert_unchanged(d0, members, x, out)
    assert d0.counters.unlearned == 1
