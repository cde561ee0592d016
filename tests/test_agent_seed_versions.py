"""Seed versions on running agents: retirements refuse old versions forever, forged ones are refused,
and the update gate keeps the old version when a new one disagrees with it (real broker, zoo models)."""

from __future__ import annotations

import dataclasses
import time

import cli_lifecycle_kit as kit

from hdus_edge.device.agent import DeviceAgent, settings_for
from hdus_edge.files import write_json
from hdus_edge.protocol import codec
from hdus_edge.protocol.messages import Hello, SeedEnvelope, SeedRetire, sha256_hex
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.swap import collect_swap, verify_swap_evidence


def start(state, url, **settings):
    base = dataclasses.replace(settings_for(state), probe_in_subprocess=False, **settings)
    return DeviceAgent.from_state_dir(state, broker_url=url, settings=base).start()


def client(url):
    transport = MqttTransport(url, f"test-{time.monotonic_ns()}", handler=lambda *a: None, clean_session=True)
    transport.connect(timeout=10)
    return transport


def export(state, seed_bytes, version, retire_request=None, retired=()):
    """What 'forget-samples' (with retire_request) or 'train --add' leaves in models/."""
    (state.models / "seed.onnx").write_bytes(seed_bytes)
    if retire_request is not None:
        write_json(state.retire_file, {"format": 1, "request_id": retire_request, "version": version,
                                       "retired_sha256": list(retired), "reason": "test", "issued_at": time.time()})
    write_json(state.seed_info_file, {"version": version, "sha256": sha256_hex(seed_bytes)})


def reasons(agent):
    return dict(agent.counters.reasons)


def test_a_retired_version_is_refused_even_by_a_device_that_never_held_it(tmp_path, mosquitto_broker):
    # Prepare: d3 runs and wants d1's seed; d1 and d2 exist only as keys (their hellos are published).
    url = mosquitto_broker.url
    _, states = kit.make_fleet(tmp_path, broker=url, ids=("d1", "d2", "d3"), name="rv")
    topics = Topics("rv")
    ref = states["d1"].fleet().data.reference_sha256
    old = kit.zoo_onnx("seed-cnn", "d1", "seed", 1, ref)
    new = kit.zoo_onnx("seed-cnn", "d1", "seed", 2, ref)
    pub = client(url)
    for i in ("d1", "d2"):
        st = states[i]
        hello = Hello(i, st.key().public_key.raw, st.certificate(), "generic-x86_64", "mobilenet-s", "seed-cnn")
        pub.publish(topics.hello(i), codec.encode(hello, st.key(), i), retain=True, wait=True)
    kit.install_models(states["d3"])
    agent = start(states["d3"], url)
    try:
        retire = SeedRetire("d1", "r" * 32, 2, sha256_hex(new), (sha256_hex(old),), 0, time.time(), "test")
        # Execute 1: d2 signs a retirement in d1's name.
        pub.publish(topics.retire("d1"), codec.encode(retire, states["d2"].key(), "d2"), retain=False, wait=True)
        assert agent.wait_for(lambda a: a.counters.rejected >= 1, 10)
        # Assert 1: refused; nothing recorded.
        assert agent.retired.get("d1") is None and "SenderMismatchError" in reasons(agent)
        # Execute 2: d1's real retirement, then an old version addressed to d3 (a replayed or stale copy).
        pub.publish(topics.retire("d1"), codec.encode(retire, states["d1"].key(), "d1"), retain=True, wait=True)
        assert agent.wait_for(lambda a: a.retired.get("d1") is not None, 10)
        stale = SeedEnvelope.build(owner="d1", to="d3", version=1, onnx=old, arch="seed-cnn", input_shape=(-1, 1, 8, 8),
                                   num_classes=10, reference_sha256=ref, epoch=0)
        pub.publish(topics.seed("d3", "d1"), codec.encode(stale, states["d1"].key(), "d1"), retain=True, wait=True)
        # Assert 2: refused as retired, audited, never installed; also after a restart.
        assert agent.wait_for(lambda a: "retired" in reasons(a), 10), reasons(agent)
        assert agent.members() == () and agent.store.seed_info("d1") is None
        agent.stop()
        agent = start(states["d3"], url)
        assert agent.wait_for(lambda a: reasons(a).get("retired", 0) >= 1, 10), reasons(agent)
        assert agent.members() == ()
        audit = [e for e in agent.store.audit_events() if e["event"] == "reject" and e.get("reason") == "retired"]
        assert len(audit) >= 2
    finally:
        agent.stop()
        pub.close()


def test_the_update_gate_keeps_the_old_version_unless_a_retirement_names_the_new_one(tmp_path, broker_url):
    # Prepare: d2 gates d1's new versions on 99% agreement with the version it holds (on amqtt the
    # new seed may overtake the retirement: the gate then holds it back until the retirement comes).
    url = broker_url
    admin, states = kit.make_fleet(tmp_path, broker=url, ids=("d1", "d2"), name="gt")
    ref = states["d1"].fleet().data.reference_sha256
    _, v1 = kit.install_models(states["d1"], seed=0)
    kit.install_models(states["d2"], seed=5)
    d1 = start(states["d1"], url)
    d2 = start(states["d2"], url, gate_min_agreement=0.99)
    try:
        assert d2.wait_for(lambda a: a.members() == ("d1",), 20)
        # Execute 1: d1 exports an unrelated model as v2 (a 'train --add' gone wrong).
        v2 = kit.zoo_onnx("seed-cnn", "d1", "seed", 123, ref)
        export(states["d1"], v2, 2)
        # Assert 1: refused by the gate and audited; v1 kept in store and ensemble.
        assert d2.wait_for(lambda a: "gate" in reasons(a), 20), reasons(d2)
        assert d2.store.seed_info("d1").sha256 == sha256_hex(v1) and d2.members() == ("d1",)
        # Execute 2: v3 retires the old versions (forget-samples): never gated.
        v3 = kit.zoo_onnx("seed-cnn", "d1", "seed", 77, ref)
        export(states["d1"], v3, 3, retire_request="a" * 32, retired=[sha256_hex(v1)])
        outcome = collect_swap(broker_url=url, fleet="gt", admin_key=admin.key().public_key, owner="d1",
                               request_id="a" * 32, wait_s=30)
        # Assert 2: swapped, with a receipt naming the deleted v1, verifiable offline.
        assert outcome.complete and outcome.holders == ("d2",), outcome.evidence()
        assert outcome.receipts[0].receipt.removed_sha256 == sha256_hex(v1)
        assert verify_swap_evidence(outcome.evidence(), admin.key().public_key, "gt") == []
        assert d2.store.seed_info("d1").sha256 == sha256_hex(v3)
        # A tampered evidence file is caught.
        forged = outcome.evidence() | {"sha256": sha256_hex(v1)}
        assert verify_swap_evidence(forged, admin.key().public_key, "gt")
        # Execute 3: the same weights re-exported as v4 agree with v3 everywhere: the gate admits them.
        gated_before = reasons(d2).get("gate", 0)
        export(states["d1"], v3, 4)
        # Assert 3
        assert d2.wait_for(lambda a: a.store.seed_info("d1").version == 4, 20)
        assert reasons(d2).get("gate", 0) == gated_before
    finally:
        d1.stop()
        d2.stop()


def test_publish_without_the_agent_sends_the_retirement_before_the_seed(tmp_path, mosquitto_broker, message_collector):
    # Prepare: d1 forgot samples while no agent ran (models/retire.json names its exported v2).
    from hdus_edge.device.publish import publish_seed

    url = mosquitto_broker.url
    _, states = kit.make_fleet(tmp_path, broker=url, ids=("d1", "d2"), name="pb")
    _, v1 = kit.install_models(states["d1"])
    v2 = kit.zoo_onnx("seed-cnn", "d1", "seed", 9, states["d1"].fleet().data.reference_sha256)
    export(states["d1"], v2, 2, retire_request="b" * 32, retired=[sha256_hex(v1)])
    kit.install_models(states["d2"], seed=3)
    d2 = start(states["d2"], url)
    seen = message_collector()
    observer = MqttTransport(url, "observer", handler=seen, clean_session=True)
    observer.subscribe([Topics("pb").retire("d1")])
    observer.connect(timeout=10)
    try:
        # Execute
        out = publish_seed(states["d1"], broker_url=url)
        # Assert: the retirement is on the broker, signed by d1, naming v2; d2 installs v2.
        _, payload, _ = seen.wait_topic(Topics("pb").retire("d1"), timeout=10)
        msg = codec.decode(payload).msg
        assert isinstance(msg, SeedRetire) and msg.version == 2 and msg.sha256 == sha256_hex(v2)
        assert tuple(out.sent_to) == ("d2",)
        assert d2.wait_for(lambda a: a.store.seed_info("d1") is not None and a.store.seed_info("d1").version == 2, 20)
        assert d2.retired.refuses("d1", 0, 1) is not None
    finally:
        observer.close()
        d2.stop()


def test_a_new_version_that_overtook_its_retirement_is_installed_when_the_retirement_arrives(tmp_path, mosquitto_broker):
    # Prepare: d2 holds d1's v1 and gates on 99% agreement; d1's agent is gone, we speak with its key.
    url = mosquitto_broker.url
    admin, states = kit.make_fleet(tmp_path, broker=url, ids=("d1", "d2"), name="ov")
    ref = states["d1"].fleet().data.reference_sha256
    _, v1 = kit.install_models(states["d1"], seed=0)
    kit.install_models(states["d2"], seed=5)
    d1 = start(states["d1"], url)
    d2 = start(states["d2"], url, gate_min_agreement=0.99)
    pub = client(url)
    topics, key = Topics("ov"), states["d1"].key()
    try:
        assert d2.wait_for(lambda a: a.members() == ("d1",), 20)
        d1.stop()
        v2 = kit.zoo_onnx("seed-cnn", "d1", "seed", 321, ref)
        env = SeedEnvelope.build(owner="d1", to="d2", version=2, onnx=v2, arch="seed-cnn", input_shape=(-1, 1, 8, 8),
                                 num_classes=10, reference_sha256=ref, epoch=0)
        # Execute 1: the new version arrives first and fails the gate.
        pub.publish(topics.seed("d2", "d1"), codec.encode(env, key, "d1"), retain=True, wait=True)
        assert d2.wait_for(lambda a: "gate" in reasons(a), 20), reasons(d2)
        assert d2.store.seed_info("d1").version == 1
        # Execute 2: then its retirement.
        retire = SeedRetire("d1", "c" * 32, 2, sha256_hex(v2), (sha256_hex(v1),), 0, time.time(), "test")
        pub.publish(topics.retire("d1"), codec.encode(retire, key, "d1"), retain=True, wait=True)
        outcome = collect_swap(broker_url=url, fleet="ov", admin_key=admin.key().public_key, owner="d1",
                               request_id="c" * 32, wait_s=20)
        # Assert: v1 deleted, the held-back v2 installed without waiting for a redelivery, receipt sent.
        assert outcome.complete and outcome.receipts[0].receipt.removed_sha256 == sha256_hex(v1)
        assert d2.store.seed_info("d1").sha256 == sha256_hex(v2) and d2.members() == ("d1",)
    finally:
        pub.close()
        d2.stop()
