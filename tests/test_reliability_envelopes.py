"""Hostile envelopes through a real broker to a real agent: every field missing, of the wrong type or
oversized (re-signed by the rightful sender), bit flips in the framing, header, body and signature
(not re-signed), and hypothesis-drawn mutations. Each one is rejected and changes nothing: false
accepts = 0. (Codec-level round trips and flips live in tests/test_protocol_codec.py; these go the
agent's whole path: topic, decode, verify, policy, store, ensemble.)"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdus_edge.reliability.cases_hostile import envelope_bases
from hdus_edge.reliability.envelope_mutants import (
    field_mutants,
    flip_mutants,
    resign,
    split,
    truncation_mutants,
)
from hdus_edge.reliability.harness import (
    LAB_SETTINGS,
    SingleAgentLab,
    deliver,
    snapshot,
)
from hdus_edge.transport.broker import EmbeddedBroker
from hdus_edge.transport.mosquitto import MosquittoProcess

SMALL_CAP = replace(LAB_SETTINGS, max_seed_bytes=1 << 20)


@pytest.fixture(scope="module", params=["amqtt", "mosquitto"])
def lab(request, tmp_path_factory):
    """One agent for the whole module (per broker): rejected messages must leave it as it was."""
    root = tmp_path_factory.mktemp(f"envelopes-{request.param}")
    if request.param == "amqtt":
        broker = EmbeddedBroker().start()
        url, stop = broker.url, broker.stop
    else:
        proc = MosquittoProcess(root / "mosquitto").start()
        url, stop = proc.url, proc.stop
    try:
        # A 1 MiB seed cap (the Pi Zero profile's) keeps the over-the-cap message small.
        with SingleAgentLab(root / "lab", url, settings=SMALL_CAP) as lab:
            lab.baseline = snapshot(lab.agent)
            yield lab
    finally:
        stop()


def _deliver_all(lab, topic: str, mutants, timeout: float = 10.0) -> dict[str, str]:
    """Deliver each mutant; return {mutant name: outcome} for those not rejected (false accepts)."""
    wrong = {}
    for m in mutants:
        outcome = deliver(lab.puppet, lab.agent, topic, m.data, timeout=timeout)
        if outcome != "rejected":
            wrong[m.name] = outcome
    return wrong


def test_field_mutants_of_every_kind_are_rejected(lab):
    # Prepare: re-signed field mutants of a seed, an order, a neighbour list, a hello and a digest.
    total = 0
    for kind, (topic, base, signer) in envelope_bases(lab).items():
        mutants = field_mutants(base, lab.puppet.key(signer), kind)
        total += len(mutants)
        # Execute / Assert: every one rejected (never accepted, never silently dropped).
        assert _deliver_all(lab, topic, mutants) == {}, kind
    assert total >= 250
    assert lab.baseline.differences(snapshot(lab.agent)) == []


def test_bit_flips_and_truncations_are_rejected(lab):
    # Prepare: flips in every region except the sender id, and cuts, of each kind (not re-signed).
    rng = random.Random(1)
    for kind, (topic, base, _) in envelope_bases(lab).items():
        mutants = flip_mutants(base, rng, per_region=4) + truncation_mutants(base, rng, count=4)
        # Execute / Assert
        assert _deliver_all(lab, topic, mutants) == {}, kind
    assert lab.baseline.differences(snapshot(lab.agent)) == []


def test_flipped_sender_ids_are_rejected_or_parked_never_accepted(lab):
    # A flipped sender can name a device nobody certified: parked until its hello, which never comes.
    rng = random.Random(2)
    for kind, (topic, base, _) in envelope_bases(lab).items():
        for m in flip_mutants(base, rng, per_region=3, regions=("sender",)):
            assert deliver(lab.puppet, lab.agent, topic, m.data, timeout=0.3) in ("rejected", "silent"), m
    assert lab.baseline.differences(snapshot(lab.agent)) == []


def test_an_envelope_over_the_size_cap_is_rejected_unparsed(lab):
    topic, base, signer = envelope_bases(lab)["seed"]
    header = json.loads(split(base).header)
    huge = resign(base, header, lab.puppet.key(signer), body=bytes(lab.agent.settings.max_seed_bytes + 128 * 1024))
    assert deliver(lab.puppet, lab.agent, topic, huge) == "rejected"
    assert lab.baseline.differences(snapshot(lab.agent)) == []


# --- hypothesis: mutations drawn at random, through the agent --------------------------------------

KINDS = ("seed", "order", "membership", "hello", "digest")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _same_json_type(a: object, b: object) -> bool:
    # int for a float field is re-encoded as a float, so the decoder's canonical check refuses it.
    return type(a) is type(b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_hypothesis_mutations_through_the_agent_are_rejected(lab, kind, data):
    topic, base, signer = envelope_bases(lab)[kind]
    if data.draw(st.booleans(), label="re-sign a retyped field"):
        header = json.loads(split(base).header)
        name = data.draw(st.sampled_from(sorted(header)), label="field")
        value = data.draw(json_values.filter(lambda v: not _same_json_type(v, header[name])), label="value")
        mutant = resign(base, {**header, name: value}, lab.puppet.key(signer))
    else:
        regions = split(base).regions()
        start = regions["header-length"][0]  # everything after the sender id
        pos = data.draw(st.integers(start, len(base) - 1), label="position")
        bit = data.draw(st.integers(0, 7), label="bit")
        buf = bytearray(base)
        buf[pos] ^= 1 << bit
        mutant = bytes(buf)
    assert deliver(lab.puppet, lab.agent, topic, mutant, timeout=10) == "rejected"
    assert lab.agent.members() == lab.baseline.members


def test_the_unmutated_bases_would_have_been_acted_on(tmp_path, embedded_broker):
    # Control: the same base messages, unmutated, do change an agent (so the tests above mean something).
    with SingleAgentLab(tmp_path, embedded_broker) as lab:
        bases = envelope_bases(lab)
        topic, seed, _ = bases["seed"]
        assert deliver(lab.puppet, lab.agent, topic, seed) == "accepted"
        topic, order, _ = bases["order"]
        assert deliver(lab.puppet, lab.agent, topic, order) == "unlearned"
        assert lab.agent.members() == (lab.b,)
