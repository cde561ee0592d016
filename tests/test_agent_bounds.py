"""Issue 14 at a real agent on Mosquitto: a forgotten device stays forgotten across restarts, parked
messages and audit lines are bounded, a heavy seed is refused by its compute budget, and an unlearn
order never waits behind seed work."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import pytest

import hdus_edge.device.agent as agent_module
from hdus_edge.device.agent import DeviceAgent
from hdus_edge.device.parking import ParkingLimits
from hdus_edge.device.store import AUDIT_NAME, AuditLimit
from hdus_edge.device.view import device_status
from hdus_edge.errors import DeviceForgottenError
from hdus_edge.reliability.cases_insider import (
    garbage,
    made_up_sender_envelope,
    retained_topics,
)
from hdus_edge.reliability.harness import LAB_SETTINGS, SingleAgentLab, wait_until
from hdus_edge.reliability.onnx_mutants import heavy_seed_model


@pytest.fixture
def url(mosquitto_broker):
    return mosquitto_broker.url


def test_a_forgotten_device_refuses_to_start_and_republishes_nothing(tmp_path, url):
    # Prepare: r runs, then the admin forgets it.
    with SingleAgentLab(tmp_path, url) as lab:
        p = lab.puppet
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        assert lab.agent.wait_for(lambda a: a.forgotten, 30)
        lab.fleet.stop()
        state = lab.fleet.states[lab.r]
        # Execute / Assert: a restart in this process is refused before it connects...
        with pytest.raises(DeviceForgottenError, match="was forgotten"):
            DeviceAgent.from_state_dir(state, broker_url=url, settings=LAB_SETTINGS)
        # ...and so is `hdus-edge agent`, with one error line and exit code 1.
        done = subprocess.run([sys.executable, "-m", "hdus_edge", "agent", "--state-dir", str(state.root),
                               "--broker", url], check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: device 'dev-000' was forgotten"), done.stderr
        # `hdus-edge status` reads it from the store, with no agent running.
        assert device_status(state)["forgotten"]["target"] == lab.r
        # The broker keeps no membership or seed of r after the restarts.
        root = p.topics.root
        assert retained_topics(url, f"{root}/membership/{lab.r}") == []
        assert retained_topics(url, f"{root}/seeds/+/{lab.r}") == []


def test_a_running_agent_that_is_forgotten_stops_publishing(tmp_path, url):
    with SingleAgentLab(tmp_path, url) as lab:
        p = lab.puppet
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        assert lab.agent.wait_for(lambda a: a.forgotten, 30)
        published: list[str] = []
        original = lab.agent.transport.publish

        def spy(topic, payload, **kw):
            published.append(topic) if payload else None
            return original(topic, payload, **kw)

        lab.agent.transport.publish = spy  # type: ignore[method-assign]
        lab.agent._announce()  # what a reconnect does
        lab.agent._publish_digest()
        assert published == []


def test_made_up_senders_park_within_the_caps_oldest_dropped_and_counted(tmp_path, url):
    # Prepare: small caps, so the test sends little.
    limits = ParkingLimits(per_sender=4, per_topic=5, total=20, total_bytes=200_000)
    with SingleAgentLab(tmp_path, url, settings=replace(LAB_SETTINGS, parking=limits)) as lab:
        agent = lab.agent
        topic = lab.puppet.topics.tombstones(lab.c)
        # Execute: 40 envelopes of 30 KB from 40 made-up senders on one device's topic.
        for k in range(40):
            lab.puppet.publish(topic, made_up_sender_envelope(k, 30_000, lab.r))
        assert wait_until(lambda: agent.counters.parked >= 40, 30)
        # Assert: 5 parked at most (per topic), bytes within the cap, the rest dropped and counted.
        status = agent.status()
        assert status["parked"]["messages"] == 5
        assert status["parked"]["bytes"] <= 200_000
        assert agent.counters.parked_dropped == 35
        drops = [e for e in agent.store.audit_events() if e["event"] == "park_drop"]
        assert drops and drops[-1]["dropped_total"] == 35
        assert agent.members() == (lab.a, lab.b)


def test_an_audit_flood_leaves_the_burst_and_one_counted_summary(tmp_path, url):
    settings = replace(LAB_SETTINGS, audit_limit=AuditLimit(rate_per_s=0.01, burst=10))
    with SingleAgentLab(tmp_path, url, settings=settings) as lab:
        agent = lab.agent
        audit = agent.store.root / AUDIT_NAME
        size_before, rejected_before = audit.stat().st_size, agent.counters.rejected
        topic = lab.puppet.topics.tombstones(lab.c)
        for k in range(500):
            lab.puppet.transport.publish(topic, garbage(k, 300), wait=False)
        lab.puppet.transport.flush(30)
        assert wait_until(lambda: agent.counters.rejected - rejected_before >= 500, 60)
        agent.store.flush_audit_summary()
        events = agent.store.audit_events()
        rejects = [e for e in events if e["event"] == "reject" and "tombstones" in e.get("topic", "")]
        summaries = [e for e in events if e["event"] == "audit_suppressed"]
        assert len(rejects) <= 10
        assert sum(s["count"] for s in summaries) >= 490
        assert audit.stat().st_size - size_before < 10 * 1024  # unlimited: ~500 x 166 B = 81 KB


@pytest.mark.parametrize("in_child", [True, False], ids=["checks-in-probe-child", "checks-in-process"])
def test_a_compute_heavy_seed_is_refused_by_its_budget_before_any_probe(tmp_path, url, monkeypatch, in_child):
    # In a child (the lean agent never loads onnx), the budget is checked there before the probe run;
    # in-process, before the runtime builds a session for it.
    sessions: list[str] = []
    real_add = agent_module.EnsembleRuntime.add_seed
    monkeypatch.setattr(agent_module.EnsembleRuntime, "add_seed",
                        lambda self, owner, *a, **kw: (sessions.append(owner), real_add(self, owner, *a, **kw))[1])
    with SingleAgentLab(tmp_path, url, settings=replace(LAB_SETTINGS, probe_in_subprocess=in_child)) as lab:
        sessions.clear()
        assert lab.send_seed(lab.a, heavy_seed_model()) == "rejected"
        assert [e for e in lab.agent.store.audit_events() if e["event"] == "reject"][-1]["reason"] == "ComputeBudgetError"
        assert sessions == []  # refused before the ensemble ever ran it
        assert lab.send_seed(lab.a, lab.seeds[lab.c]) == "accepted"  # a seed of the fleet's architecture fits
        assert sessions == [lab.a]


def test_an_unlearn_order_is_applied_while_the_seed_worker_is_busy(tmp_path, url, monkeypatch):
    # Prepare: the probe blocks until released, so "busy" is a state, not a duration.
    release = threading.Event()
    entered = threading.Event()
    armed = threading.Event()  # the lab's own start-up seeds pass

    def blocking_probe(data, *args, **kwargs):
        if armed.is_set():
            entered.set()
            assert release.wait(60)

    monkeypatch.setattr(agent_module, "probe_in_subprocess", blocking_probe)
    with SingleAgentLab(tmp_path, url, settings=replace(LAB_SETTINGS, probe_in_subprocess=True)) as lab:
        agent, p = lab.agent, lab.puppet
        armed.set()
        try:
            p.publish(p.topics.seed(lab.r, lab.a), p.seed(lab.a, lab.r, lab.next_version(lab.a), lab.seeds[lab.c]))
            assert entered.wait(30)
            # b's next seed queues behind a's probe; then the admin forgets b.
            p.publish(p.topics.seed(lab.r, lab.b), p.seed(lab.b, lab.r, lab.next_version(lab.b), lab.seeds[lab.c]))
            assert wait_until(lambda: agent.pending_seeds() == 2, 30)
            p.publish(p.topics.unlearn(lab.b), p.order(lab.b), retain=True)
            # Execute / Assert: the order is applied while the probe still blocks.
            assert wait_until(lambda: agent.counters.unlearned == 1, 30)
            assert agent.members() == (lab.a,) and agent.pending_seeds() >= 1
        finally:
            release.set()
        # b's queued seed is refused by its new tombstone; a's new seed goes in.
        assert wait_until(lambda: agent.pending_seeds() == 0 and agent.counters.accepted >= 3, 30)
        assert agent.members() == (lab.a,)
        assert agent.store.seed_info(lab.a).version == 2
        assert agent.store.seed_info(lab.b) is None


def test_a_new_epoch_certificate_lets_a_forgotten_device_start_again(tmp_path, url):
    """Readmission issues a certificate of a higher epoch: the durable record covers only the
    incarnation it forgot."""
    from hdus_edge.protocol.crypto import issue_certificate, save_certificate

    with SingleAgentLab(tmp_path, url) as lab:
        p = lab.puppet
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        assert lab.agent.wait_for(lambda a: a.forgotten, 30)
        lab.fleet.stop()
        state = lab.fleet.states[lab.r]
        with pytest.raises(DeviceForgottenError):
            DeviceAgent.from_state_dir(state, broker_url=url, settings=LAB_SETTINGS)
        admin = lab.fleet.admin
        cert = issue_certificate(admin.key(), fleet=admin.fleet().fleet.name, device_id=lab.r,
                                 public_key=state.key().public_key, epoch=1, profile="generic-x86_64")
        save_certificate(cert, state.cert_file)
        agent = DeviceAgent.from_state_dir(state, broker_url=url, settings=LAB_SETTINGS)
        agent.store.close()  # constructed (the check passed); not started


def test_an_authenticated_insider_flooding_its_own_topic_is_bounded_on_the_generated_config(tmp_path):
    """Attack 4 with real credentials: Mosquitto runs what `broker-config` writes (passwords, ACL);
    the insider c may write only its own topics, and uses them to send envelopes from made-up senders."""
    from hdus_edge.reliability.cases_insider import GeneratedBroker
    from hdus_edge.reliability.harness import Puppet
    from hdus_edge.transport.mqtt import MqttTransport

    # Prepare: the lab's fleet, then its generated broker.
    limits = ParkingLimits(per_sender=4, per_topic=5, total=20, total_bytes=200_000)
    lab = SingleAgentLab(tmp_path / "lab", "mqtt://127.0.0.1:1", name="gen", settings=replace(LAB_SETTINGS, parking=limits))
    with GeneratedBroker(lab.fleet.admin, tmp_path / "broker") as broker:
        lab.puppet = Puppet(broker.url("admin"), lab.fleet.admin, lab.fleet.states)
        lab.fleet.broker_url = broker.url(lab.r)
        with lab:
            agent = lab.agent
            insider = MqttTransport(broker.url(lab.c), f"gen.{lab.c}", clean_session=True)
            insider.connect(timeout=10)
            try:
                # Execute: 40 envelopes of 30 KB from made-up senders, on c's own digest topic.
                topic = lab.puppet.topics.tombstones(lab.c)
                for k in range(40):
                    assert insider.publish(topic, made_up_sender_envelope(k, 30_000, lab.r), wait=True, timeout=10)
                assert wait_until(lambda: agent.counters.parked >= 40, 30)
            finally:
                insider.close()
            # Assert: within the caps, the rest dropped and counted; the ensemble untouched.
            assert agent.status()["parked"]["messages"] == 5
            assert agent.counters.parked_dropped == 35
            assert agent.members() == (lab.a, lab.b)


def test_a_device_forgotten_while_its_agent_was_down_forgets_itself_on_return(tmp_path, url):
    from hdus_edge.reliability.harness import start_agents

    with SingleAgentLab(tmp_path, url) as lab:
        p = lab.puppet
        lab.fleet.stop()  # r is down (its session persists)
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        # Execute: r returns and finds the retained order.
        agent = start_agents(lab.fleet, [lab.r])[lab.r]
        assert agent.wait_for(lambda a: a.forgotten, 30)
        agent.stop()
        lab.fleet.agents.clear()
        # Assert: recorded, so the next start is refused; nothing of r stays on the broker.
        with pytest.raises(DeviceForgottenError):
            DeviceAgent.from_state_dir(lab.fleet.states[lab.r], broker_url=url, settings=LAB_SETTINGS)
        root = p.topics.root
        assert retained_topics(url, f"{root}/membership/{lab.r}") == []
        assert retained_topics(url, f"{root}/seeds/+/{lab.r}") == []
