"""Forgetting samples on one device of a running fleet (real agents over Mosquitto), proved by retraining.

Device d1 forgets three of its samples: it retrains, re-distils and exports seed v2; its agent
publishes the signed retirement and the new seed; d2 and d3 swap and answer with signed receipts.
Then a second fleet is trained from scratch with d1's reduced data, and every device's ensemble
must give the same outputs (<= 1e-6). Planted leaks (an old seed version still held, a replay of
it) must be caught.
"""

from __future__ import annotations

import dataclasses

import cli_lifecycle_kit as kit
import numpy as np

from hdus_edge.data import load_digits, load_npz, save_npz
from hdus_edge.device.agent import DeviceAgent, settings_for
from hdus_edge.learning.exactness import compare_devices
from hdus_edge.learning.samples import (
    data_of_record_path,
    forget_samples_step,
    read_manifest,
)
from hdus_edge.learning.steps import distill_step, export_step, train_step
from hdus_edge.protocol import codec
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.protocol.topics import Topics
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.swap import (
    collect_swap,
    save_swap_evidence,
    verify_swap_evidence,
)

C = kit.CREATED
IDS = ("d1", "d2", "d3")


def build_fleet(tmp, name, broker, data_for):
    """Provision, train, distil and export IDS (same ids, profiles and reference in every fleet)."""
    admin, states = kit.make_fleet(tmp / name, broker=broker, ids=IDS, name=name)
    for i, st in states.items():
        # Enough training that a seed version's outputs differ measurably from its predecessor's.
        train_step(st, data_for[i], epochs=3)
        distill_step(st, epochs=10)
        export_step(st, created_at=C)
    return admin, states


def start(states, broker):
    agents = {}
    for i, st in states.items():
        settings = dataclasses.replace(settings_for(st), probe_in_subprocess=False)
        agents[i] = DeviceAgent.from_state_dir(st, broker_url=broker, settings=settings).start()
    return agents


def converge(agents, check, timeout=60.0):
    for i, agent in agents.items():
        assert agent.wait_for(lambda a, i=i: check(i, a), timeout), (i, agent.status()["seeds"])


def max_ensemble_diff(a_agents, b_agents, x):
    """The check: the largest output difference between two fleets' devices, device by device."""
    return max(float(np.abs(a_agents[i].predict(x) - b_agents[i].predict(x)).max()) for i in a_agents)


def test_forgetting_samples_in_a_running_fleet_equals_a_fleet_trained_without_them(tmp_path, mosquitto_broker,
                                                                                  message_collector):
    # Prepare: fleet A, running, every device holding both neighbours' v1 seeds.
    url = mosquitto_broker.url
    data_for = {i: kit.digits_folder(tmp_path / f"data-{i}", n=64, offset=64 * k) for k, i in enumerate(IDS)}
    admin_a, a = build_fleet(tmp_path, "fa", url, data_for)
    old_seed = (a["d1"].models / "seed.onnx").read_bytes()
    x = load_digits().x[-200:]
    agents_a = start(a, url)
    agents_b: dict[str, DeviceAgent] = {}
    try:
        converge(agents_a, lambda i, ag: len(ag.members()) == 2)
        ids = list(read_manifest(a["d1"]).ids[:3])
        # Execute: d1 forgets three samples while its agent runs; the requester collects the receipts.
        report = forget_samples_step(a["d1"], ids, created_at=C)
        outcome = collect_swap(broker_url=url, fleet="fa", admin_key=admin_a.key().public_key, owner="d1",
                               request_id=report.request_id, wait_s=60)
        evidence = save_swap_evidence(outcome, tmp_path / "evidence")
        # Assert: every holder swapped to v2 and said so in a signed receipt that verifies offline.
        assert outcome.complete and outcome.holders == ("d2", "d3"), outcome.evidence()
        assert verify_swap_evidence(evidence, admin_a.key().public_key, "fa") == []
        removed = {r.receipt.device_id: r.receipt.removed_sha256 for r in outcome.receipts}
        assert set(removed.values()) == {sha256_hex(old_seed)}
        for i in ("d2", "d3"):
            held = agents_a[i].store.seed_info("d1")
            assert held.version == 2 and held.sha256 == report.seed_sha256
            assert sha256_hex(old_seed) not in {sha256_hex(p.read_bytes()) for p in (a[i].store_dir / "seeds").iterdir()}
            assert agents_a[i].retired.refuses("d1", 0, 1) is not None
        # The broker's retained copies of d1's seed are all the new version.
        seen = message_collector()
        observer = MqttTransport(url, "observer", handler=seen, clean_session=True)
        observer.subscribe([f"{Topics('fa').root}/seeds/+/d1"])
        observer.connect(timeout=10)
        try:
            retained = [codec.decode(payload, max_bytes=16 << 20).msg for _, payload, _ in seen.settle(0.5) if payload]
        finally:
            observer.close()
        assert len(retained) == 2 and {env.sha256 for env in retained} == {report.seed_sha256}
        # A fleet trained from scratch, d1 on its reduced data only.
        reduced = save_npz(load_npz(data_of_record_path(a["d1"])), tmp_path / "reduced.npz")
        _, b = build_fleet(tmp_path, "fb", url, data_for | {"d1": reduced})
        assert compare_devices(a["d1"], b["d1"]).identical
        agents_b = start(b, url)
        converge(agents_b, lambda i, ag: len(ag.members()) == 2)
        # d1's own ensemble runs its new main model (the agent followed the export).
        assert agents_a["d1"].wait_for(lambda ag: float(np.abs(ag.predict(x) - agents_b["d1"].predict(x)).max()) <= 1e-6, 30)
        # The check itself: every device's ensemble equals the scratch fleet's.
        assert max_ensemble_diff(agents_a, agents_b, x) <= 1e-6
        # Planted leak 1: an old seed version still held somewhere is caught by that check.
        agents_a["d3"].runtime.add_seed("d1", old_seed)
        assert max_ensemble_diff(agents_a, agents_b, x) > 1e-6
        agents_a["d3"].runtime.add_seed("d1", agents_a["d3"].store.get_seed("d1"))
        assert max_ensemble_diff(agents_a, agents_b, x) <= 1e-6
    finally:
        for ag in [*agents_a.values(), *agents_b.values()]:
            ag.stop()
